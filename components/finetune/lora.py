"""LoRA for full fine-tuning's place: which modules get adapters, for any architecture the tasks load.

peft knows the attention projections of the common model types (T5 and mT5: `q`, `v`; BART: `q_proj`,
`v_proj`; BERT, RoBERTa: `query`, `value`) and is asked first. It has no entry for the BERT2BERT
`EncoderDecoderModel` the seq2seq task warm-starts (model type "encoder-decoder") nor for some encoders
(DistilBERT's `q_lin`, `v_lin`), so those are found by the names of their modules; a model with none of
them is a clear error, not adapters silently attached to nothing."""
from __future__ import annotations

from domaintune.components.core.errors import BadInput

# (query, value) projection names, the most common first
KNOWN_PAIRS = (("query", "value"), ("q_proj", "v_proj"), ("q_lin", "v_lin"), ("q", "v"))


def lora_targets(model) -> list[str]:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    kind = getattr(model.config, "model_type", "") or ""
    if kind in PEFT_TARGETS:
        return list(PEFT_TARGETS[kind])
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    pair = next((p for p in KNOWN_PAIRS if set(p) <= names), None)
    if pair is None:
        raise BadInput(f"--lora: no attention projections to adapt found in this {kind or 'model'} "
                       f"(looked for {', '.join('/'.join(p) for p in KNOWN_PAIRS)}); train it without --lora")
    return list(pair)


def apply_lora(task, model, p):
    """MODEL wrapped with LoRA adapters of P's rank, alpha and dropout on its query and value projections."""
    from peft import LoraConfig, TaskType, get_peft_model

    # The task type keeps the task's new head trainable; the task names any other module trained in full.
    config = LoraConfig(task_type=getattr(TaskType, task.lora_task_type), r=p.lora_r, lora_alpha=p.lora_alpha,
                        lora_dropout=p.lora_dropout, target_modules=lora_targets(model),
                        modules_to_save=task.lora_modules_to_save(model))
    return get_peft_model(model, config)
