"""Finetune: HF Trainer with dynamic padding, length-grouped batches, early stopping on validation macro-F1.

Full fine-tuning or LoRA (peft, merged into the saved model so every later stage sees a plain model).
Out: a Hugging Face model directory (model, tokenizer, `domaintune.json`) and `history.json`.
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


def _progress_callback():
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def __init__(self):
            self.started = time.monotonic()
            self.every = 1

        def on_train_begin(self, args, state, control, **kwargs):
            self.every = max(1, state.max_steps // 100)
            progress("finetune", step=0, total=state.max_steps)

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % self.every == 0 or state.global_step == state.max_steps:
                loss = next((h["loss"] for h in reversed(state.log_history) if "loss" in h), None)
                progress("finetune", step=state.global_step, total=state.max_steps, loss=loss,
                         elapsed=round(time.monotonic() - self.started, 1))

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if metrics:
                progress("finetune", step=state.global_step, total=state.max_steps,
                         eval_macro_f1=metrics.get("eval_macro_f1"), eval_accuracy=metrics.get("eval_accuracy"))

    return ProgressCallback()


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

    # TaskType.SEQ_CLS keeps the new classification head trainable (modules_to_save).
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=p.lora_r, lora_alpha=p.lora_alpha,
                        lora_dropout=p.lora_dropout, target_modules=["query", "value"])
    return get_peft_model(model, config)


def count_parameters(model) -> dict:
    total = sum(t.numel() for t in model.parameters())
    trainable = sum(t.numel() for t in model.parameters() if t.requires_grad)
    return {"total": total, "trainable": trainable}


def run_finetune(tokens_dir: str, model_dir: str, output_dir: str, history_path: str, p: FinetuneParams) -> dict:
    import torch
    from datasets import load_from_disk
    from transformers import (DataCollatorWithPadding, EarlyStoppingCallback, Trainer, TrainingArguments,
                              set_seed)

    from domaintune.components.tokenization import load_tokenizer

    set_seed(p.seed)
    train = load_from_disk(os.path.join(tokens_dir, "train"))
    validation = load_from_disk(os.path.join(tokens_dir, "validation"))
    labels = storage.read_json(os.path.join(tokens_dir, "label_map.json"))["labels"]
    tokenizer = load_tokenizer(os.path.join(tokens_dir, "tokenizer"))
    max_length = storage.read_json(os.path.join(tokens_dir, "token_stats.json"))["max_length"]
    model = build_model(model_dir, labels, p)
    params = count_parameters(model)
    precision = pick_precision(p.precision)

    # Checkpoints live outside the model artifact; a retried task that is given the same checkpoint dir
    # (a volume on a cluster) resumes from the last one.
    checkpoints = p.checkpoint_dir or os.path.join(os.path.dirname(os.path.abspath(output_dir)), "checkpoints")
    resume = _last_checkpoint(checkpoints)
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
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=p.early_stopping_patience), _progress_callback()],
    )
    started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.monotonic() - started
    best = trainer.evaluate()

    final = trainer.model.merge_and_unload() if p.lora else trainer.model
    examples_seen = int(round(result.metrics.get("epoch", p.epochs) * len(train)))
    history = {
        "params": {**asdict(p), "precision_used": precision, "max_length": max_length},
        "parameters": params,
        "train_examples": len(train),
        "examples_seen": examples_seen,
        "train_seconds": round(train_seconds, 2),
        "examples_per_second": round(examples_seen / train_seconds, 2) if train_seconds else None,
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
    storage.write_json(history_path, history)
    if not p.checkpoint_dir:  # nothing left to resume: don't keep optimizer states around
        shutil.rmtree(checkpoints, ignore_errors=True)
    print(f"finetune: {examples_seen} examples in {train_seconds:.1f}s "
          f"({history['examples_per_second']} ex/s, {precision}); validation macro-F1 "
          f"{history['validation']['macro_f1']:.4f}", file=sys.stderr)
    return history


def _last_checkpoint(directory: str) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(directory) if os.path.isdir(directory) else None
