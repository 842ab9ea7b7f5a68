"""Finetune: HF Trainer with dynamic padding, length-grouped batches, early stopping on validation macro-F1.

Full fine-tuning or LoRA (peft, merged into the saved model so every later stage sees a plain model).
Out: a Hugging Face model directory (model, tokenizer, `domaintune.json`) and `history.json`.

Speed choices (measured on a 2-core AVX-512-BF16 CPU; numbers in bench/BENCHMARKS.md): bf16 autocast where
native, length-grouped batches with dynamic padding (8% padding on SST-2 instead of 89% at max_length 128),
the fused AdamW (the Trainer's default), a cheaper random source for dropout on CPU (components/dropout.py),
the input word-embedding matrix kept fixed in full fine-tuning (`freeze_embeddings`), and no second
evaluation of the best model after training (its metrics are in the log).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from domaintune.components import storage
from domaintune.components.errors import BadInput, fraction, positive, require

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass
class FinetuneParams:
    """Defaults live in the pipeline signature (pipelines/training_pipeline.py), their one source."""

    epochs: float
    learning_rate: float
    batch_size: int
    weight_decay: float
    warmup_ratio: float
    early_stopping_patience: int
    seed: int
    lora: bool
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    precision: str
    freeze_embeddings: bool
    checkpoint_dir: str

    def __post_init__(self):
        positive("epochs", self.epochs, kind=float)
        positive("learning-rate", self.learning_rate, kind=float)
        positive("batch-size", self.batch_size)
        positive("early-stopping-patience", self.early_stopping_patience)
        fraction("warmup-ratio", self.warmup_ratio)
        require(self.weight_decay >= 0, f"--weight-decay must be >= 0 (got {self.weight_decay})")
        require(self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")
        if self.lora:
            positive("lora-r", self.lora_r)
            positive("lora-alpha", self.lora_alpha)
            fraction("lora-dropout", self.lora_dropout)


def pick_precision(requested: str) -> str:
    """bf16 where the hardware does it natively (CUDA Ampere+, CPUs with AVX-512 BF16 or AMX): measured
    here 1.8x the fp32 training throughput at the same accuracy (STACK.md); fp32 elsewhere."""
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    cpu = torch.cpu
    native = getattr(cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
    return "bf16" if native else "fp32"


def progress(stage: str, **fields) -> None:
    """One machine-readable line per update: the CLI draws its progress bar from these; on a cluster
    they are plain, greppable log lines."""
    print(f"domaintune:progress {json.dumps({'stage': stage, **fields})}", flush=True)


def compute_metrics(eval_pred) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    logits, labels = eval_pred
    preds = np.asarray(logits).argmax(axis=-1)
    return {"accuracy": accuracy_score(labels, preds), "macro_f1": f1_score(labels, preds, average="macro")}


def progress_callback(stage: str, offset: int = 0, total: int | None = None, **fields):
    """A Trainer callback that prints `progress` lines: about 100 per run, plus each evaluation. `offset`
    and `total` place this Trainer's steps inside a longer stage (pretrain runs a head warm-up first)."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def __init__(self):
            self.started = time.monotonic()
            self.every = 1

        def _total(self, state) -> int:
            return total if total is not None else state.max_steps

        def on_train_begin(self, args, state, control, **kwargs):
            self.every = max(1, state.max_steps // 100)
            progress(stage, step=offset, total=self._total(state), **fields)

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % self.every == 0 or state.global_step == state.max_steps:
                loss = next((h["loss"] for h in reversed(state.log_history) if "loss" in h), None)
                progress(stage, step=offset + state.global_step, total=self._total(state), loss=loss, **fields,
                         elapsed=round(time.monotonic() - self.started, 1))

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if metrics:
                progress(stage, step=offset + state.global_step, total=self._total(state), **fields,
                         eval_macro_f1=metrics.get("eval_macro_f1"), eval_accuracy=metrics.get("eval_accuracy"))

    return ProgressCallback()


def _timed_trainer_class():
    """The Trainer, plus where its time goes: evaluation and checkpoint time inside `train()` (so the
    history can give the pure training throughput beside the stage's), and the real and padded tokens
    of the training batches (padding efficiency, FLOP counts for bench/mfu.py)."""
    from transformers import Trainer

    class TimedTrainer(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.timing = {"eval_seconds": 0.0, "checkpoint_seconds": 0.0, "eval_cpu_seconds": 0.0,
                           "checkpoint_cpu_seconds": 0.0}
            # padded_squared: sum over batches of batch size x padded length^2 (attention FLOPs)
            self.train_tokens = {"real": 0, "padded": 0, "padded_squared": 0}

        def _timed(self, key, fn, *args, **kwargs):
            wall, cpu = time.monotonic(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.timing[f"{key}_seconds"] += time.monotonic() - wall
                self.timing[f"{key}_cpu_seconds"] += time.process_time() - cpu

        def evaluate(self, *args, **kwargs):
            return self._timed("eval", super().evaluate, *args, **kwargs)

        def _save_checkpoint(self, *args, **kwargs):
            return self._timed("checkpoint", super()._save_checkpoint, *args, **kwargs)

        def _load_best_model(self, *args, **kwargs):
            return self._timed("checkpoint", super()._load_best_model, *args, **kwargs)

        def training_step(self, model, inputs, *args, **kwargs):
            mask = inputs.get("attention_mask") if hasattr(inputs, "get") else None
            if mask is not None and mask.device.type == "cpu":  # never a device sync for a statistic
                self.train_tokens["real"] += int(mask.sum())
                self.train_tokens["padded"] += mask.numel()
                if mask.dim() == 2:
                    self.train_tokens["padded_squared"] += mask.shape[0] * mask.shape[1] ** 2
            return super().training_step(model, inputs, *args, **kwargs)

    return TimedTrainer


def best_evaluation(state) -> dict | None:
    """The logged evaluation of the checkpoint that load_best_model_at_end restored: the same numbers a
    second `trainer.evaluate()` would compute, without another pass over the validation set."""
    step = getattr(state, "best_global_step", None)
    if not step:
        return None
    for entry in reversed(state.log_history):
        if entry.get("step") == step and "eval_macro_f1" in entry:
            return entry
    return None


def build_model(model_dir: str, labels: list[str], p: FinetuneParams):
    from transformers import AutoModelForSequenceClassification

    id2label = dict(enumerate(labels))
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=len(labels), id2label=id2label, label2id={v: k for k, v in id2label.items()}
        )
    except (OSError, ValueError) as exc:
        raise BadInput(f"--base-model {model_dir}: cannot load as a classifier ({str(exc).splitlines()[0]})") from None
    if not p.lora:
        return model
    from peft import LoraConfig, TaskType, get_peft_model

    # TaskType.SEQ_CLS keeps the new classification head trainable (modules_to_save). The pooler is trained
    # in full too where the model has one: BERT's classifier reads the pooled [CLS] vector, and a frozen pooler
    # from a checkpoint trained with mean pooling (sentence-transformers, such as the packaged MiniLM) starves
    # it. Measured on 4,000 SST-2 rows, 1 epoch, lr 5e-4: dev accuracy 0.575 -> 0.770 for 148k more
    # trainable weights at the same speed (bench/BENCHMARKS.md).
    pooler = [name for name, _ in model.named_modules() if name.split(".")[-1] == "pooler"]
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=p.lora_r, lora_alpha=p.lora_alpha,
                        lora_dropout=p.lora_dropout, target_modules=["query", "value"],
                        modules_to_save=["classifier", "pooler"] if pooler else None)
    return get_peft_model(model, config)


def freeze_input_embeddings(model) -> int:
    """Full fine-tuning leaves the input word-embedding matrix as it is: it is about half of a small
    encoder's parameters (11.7M of MiniLM's 22.7M) but only the rows of the batch's tokens get a gradient,
    so updating it densely costs a full AdamW pass, a gradient-norm pass and a dense gradient per step.
    Measured on 16,000 SST-2 rows: 319 vs 297 examples/s (+7%), dev accuracy 0.861 vs 0.854 (one seed;
    bench/BENCHMARKS.md). `freeze_embeddings=False` trains it like any other weight. Position and
    token-type embeddings, LayerNorms and every encoder layer still train. Returns the frozen count."""
    embeddings = model.get_input_embeddings()
    weight = getattr(embeddings, "weight", None)
    if weight is None or not weight.requires_grad:
        return 0
    weight.requires_grad_(False)
    return weight.numel()


def count_parameters(model) -> dict:
    total = sum(t.numel() for t in model.parameters())
    trainable = sum(t.numel() for t in model.parameters() if t.requires_grad)
    return {"total": total, "trainable": trainable}


def run_finetune(tokens_dir: str, model_dir: str, output_dir: str, history_path: str, p: FinetuneParams) -> dict:
    stage_started = time.monotonic()
    import torch
    from datasets import load_from_disk
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, TrainingArguments, set_seed

    from domaintune.components.dropout import use_cheap_cpu_dropout
    from domaintune.components.tokenization import load_tokenizer

    set_seed(p.seed)
    train = load_from_disk(os.path.join(tokens_dir, "train"))
    validation = load_from_disk(os.path.join(tokens_dir, "validation"))
    labels = storage.read_json(os.path.join(tokens_dir, "label_map.json"))["labels"]
    tokenizer = load_tokenizer(os.path.join(tokens_dir, "tokenizer"))
    max_length = storage.read_json(os.path.join(tokens_dir, "token_stats.json"))["max_length"]
    model = build_model(model_dir, labels, p)
    frozen = freeze_input_embeddings(model) if p.freeze_embeddings and not p.lora else 0
    params = {**count_parameters(model), "frozen_input_embeddings": frozen}
    cheap_dropout = 0 if torch.cuda.is_available() else use_cheap_cpu_dropout(model)
    precision = pick_precision(p.precision)

    # Checkpoints live outside the model artifact; a retried task that is given the same checkpoint dir
    # (a volume on a cluster) resumes from the last one.
    checkpoints = p.checkpoint_dir or os.path.join(os.path.dirname(os.path.abspath(output_dir)), "checkpoints")
    resume = last_checkpoint(checkpoints)
    steps_per_epoch = max(1, -(-len(train) // p.batch_size))
    args = TrainingArguments(
        output_dir=checkpoints,
        num_train_epochs=p.epochs,
        learning_rate=p.learning_rate,
        per_device_train_batch_size=p.batch_size,
        per_device_eval_batch_size=max(64, p.batch_size),
        weight_decay=p.weight_decay,
        warmup_steps=p.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of total steps
        lr_scheduler_type="linear",
        train_sampling_strategy="group_by_length",
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        # Optimizer and scheduler states only matter for resuming; without a checkpoint dir to resume
        # from, writing them (2x the model) every epoch is pure cost.
        save_only_model=not p.checkpoint_dir,
        load_best_model_at_end=True,
        metric_for_best_model="macro_f1",
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=max(1, min(50, steps_per_epoch // 10)),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        seed=p.seed,
        data_seed=p.seed,
        disable_tqdm=True,
        report_to=[],
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = _timed_trainer_class()(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=p.early_stopping_patience),
                   progress_callback("finetune")],
    )
    started, cpu_started = time.monotonic(), time.process_time()
    result = trainer.train(resume_from_checkpoint=resume)
    train_seconds, train_cpu_seconds = time.monotonic() - started, time.process_time() - cpu_started
    inside = dict(trainer.timing)  # evaluation and checkpoint time within train()
    best = best_evaluation(trainer.state) or trainer.evaluate()

    final = trainer.model.merge_and_unload() if p.lora else trainer.model
    examples_seen = int(round(result.metrics.get("epoch", p.epochs) * len(train)))
    # examples this process trained on (a resumed run skips what its checkpoint already did)
    examples_trained = min(examples_seen, (trainer.state.global_step - _resumed_step(resume)) * p.batch_size)
    step_seconds = train_seconds - inside["eval_seconds"] - inside["checkpoint_seconds"]
    timing = {"setup_seconds": round(started - stage_started, 2), "train_seconds": round(train_seconds, 2),
              "eval_seconds": round(inside["eval_seconds"], 2),
              "checkpoint_seconds": round(inside["checkpoint_seconds"], 2),
              "step_seconds": round(step_seconds, 2),
              # process CPU time (all threads): moves far less than wall time when the machine is shared
              "train_cpu_seconds": round(train_cpu_seconds, 2),
              "step_cpu_seconds": round(train_cpu_seconds - inside["eval_cpu_seconds"]
                                        - inside["checkpoint_cpu_seconds"], 2)}
    history = {
        "params": {**asdict(p), "precision_used": precision, "max_length": max_length},
        "parameters": params,
        "cheap_cpu_dropout_modules": cheap_dropout,
        "train_examples": len(train),
        "examples_seen": examples_seen,
        "train_seconds": round(train_seconds, 2),
        "examples_per_second": round(examples_seen / train_seconds, 2) if train_seconds else None,
        # train_seconds is trainer.train(): the optimizer steps plus the per-epoch evaluations and
        # checkpoints; step_seconds is the steps alone (the number to compare with a bare training loop).
        "timing": timing,
        "examples_per_second_steps": (round(examples_trained / timing["step_seconds"], 2)
                                      if timing["step_seconds"] > 0 and examples_trained else None),
        "train_tokens": {**trainer.train_tokens,
                         "padding_fraction": round(1 - trainer.train_tokens["real"] / trainer.train_tokens["padded"], 4)
                         if trainer.train_tokens["padded"] else None},
        "epochs_run": result.metrics.get("epoch"),
        "global_steps": trainer.state.global_step,
        "stopped_early": trainer.state.global_step < trainer.state.max_steps,
        "best_checkpoint": trainer.state.best_model_checkpoint and os.path.basename(trainer.state.best_model_checkpoint),
        "validation": {"accuracy": best.get("eval_accuracy"), "macro_f1": best.get("eval_macro_f1"),
                       "loss": best.get("eval_loss")},
        "resumed_from": resume,
        "log_history": trainer.state.log_history,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    with storage.atomic_dir(output_dir) as tmp:
        final.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        storage.write_json(os.path.join(tmp, "domaintune.json"),
                           {"max_length": max_length, "labels": labels, "lora_merged": p.lora})
    os.makedirs(os.path.dirname(os.path.abspath(history_path)), exist_ok=True)
    if not p.checkpoint_dir:  # nothing left to resume: don't keep optimizer states around
        shutil.rmtree(checkpoints, ignore_errors=True)
    timing["stage_seconds"] = round(time.monotonic() - stage_started, 2)
    storage.write_json(history_path, history)
    print(f"finetune: {examples_seen} examples in {train_seconds:.1f}s "
          f"({history['examples_per_second']} ex/s, {precision}); validation macro-F1 "
          f"{history['validation']['macro_f1']:.4f}", file=sys.stderr)
    return history


def _resumed_step(checkpoint: str | None) -> int:
    if not checkpoint:
        return 0
    try:
        return int(os.path.basename(checkpoint.rstrip("/")).rsplit("-", 1)[-1])
    except ValueError:
        return 0


def last_checkpoint(directory: str) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(directory) if os.path.isdir(directory) else None
