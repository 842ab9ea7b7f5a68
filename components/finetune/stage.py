"""Finetune: HF Trainer on random batches packed without padding (or length-grouped ones), early stopping on
the task's primary validation metric (macro-F1 for classification).

Full fine-tuning or LoRA (peft, merged into the saved model so every later stage sees a plain model). The
task (tasks/) gives the model head, the collator, the metrics and the LoRA task type.
Out: a Hugging Face model directory (model, tokenizer, `domaintune.json`) and `history.json`.

Speed choices (measured on a 2-core AVX-512-BF16 CPU; numbers in bench/BENCHMARKS.md): bf16 autocast where
it measures faster (training/precision.py), random batches packed without padding for BERT's heads
(training/packing.py), else length-grouped batches in random order with dynamic padding (8% padding
on SST-2 instead of 89% at max_length 128; training/trainer.py `shuffled_batches`),
the fused AdamW (the Trainer's default), a cheaper random source for dropout on CPU (training/dropout.py),
the input word-embedding matrix kept fixed in full fine-tuning (`freeze_embeddings`), and no second
evaluation of the best model after training (its metrics are in the log).
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass

from domaintune.components.core.errors import BadInput, fraction, non_negative, one_of, positive
from domaintune.components.finetune import sizing
from domaintune.components.finetune.history import build_history
from domaintune.components.io import storage
from domaintune.components.io.base_models import PACKAGED_MODEL, load_tokenizer
from domaintune.components.io.splits import LABEL_MAP
from domaintune.components.tasks import task_of
from domaintune.components.training import checkpoints as ckpt
from domaintune.components.training import distributed
from domaintune.components.training.launch import distributable
from domaintune.components.training.precision import PRECISIONS, pick_precision
from domaintune.components.training.progress import progress_callback
from domaintune.components.training.trainer import best_evaluation, timed_trainer_class


@dataclass
class FinetuneParams:
    base_model: str = PACKAGED_MODEL  # used when no adapted (pretrained) encoder is given
    s3_endpoint_url: str = ""
    epochs: float = 3.0
    learning_rate: float = 1e-4
    batch_size: int = 0  # 0: chosen for the training set's size (finetune/sizing.py); else used as given
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    early_stopping_patience: int = 2
    seed: int = 42
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    precision: str = "auto"
    freeze_embeddings: bool = True
    checkpoint_dir: str = ""
    # 0: one process per GPU the pod has (DDP under torchrun when that is more than one), else one process
    num_processes: int = 0
    gradient_accumulation_steps: int = 1

    def __post_init__(self):
        positive("epochs", self.epochs, kind=float)
        positive("learning-rate", self.learning_rate, kind=float)
        non_negative("batch-size", self.batch_size, kind=int)
        positive("early-stopping-patience", self.early_stopping_patience)
        fraction("warmup-ratio", self.warmup_ratio)
        non_negative("weight-decay", self.weight_decay)
        non_negative("seed", self.seed, kind=int)
        one_of("precision", self.precision, PRECISIONS)
        # checked whether or not --lora is on: a NaN or a boolean is never a setting
        positive("lora-r", self.lora_r)
        positive("lora-alpha", self.lora_alpha)
        fraction("lora-dropout", self.lora_dropout)
        non_negative("num-processes", self.num_processes, kind=int)
        positive("gradient-accumulation-steps", self.gradient_accumulation_steps)
        if self.batch_size:  # 0 (chosen for the data) is checked once chosen: the rule picks one that splits
            per_device_batch(self, 1)


def per_device_batch(p: FinetuneParams, processes: int) -> int:
    """--batch-size is the global batch: what one optimizer step averages over, whatever the number of
    processes; each process trains on its share of it per micro-step (batch / processes / accumulation)."""
    parts = processes * p.gradient_accumulation_steps
    if p.batch_size % parts:
        raise BadInput(f"--batch-size {p.batch_size} is the global batch and must split evenly over {processes} "
                       f"process(es) x --gradient-accumulation-steps {p.gradient_accumulation_steps}")
    return p.batch_size // parts


def freeze_input_embeddings(model) -> int:
    """Full fine-tuning leaves the input word-embedding matrix as it is: it is about half of a small
    encoder's parameters (11.7M of MiniLM's 22.7M) but only the rows of the batch's tokens get a gradient,
    so updating it densely costs a full AdamW pass, a gradient-norm pass and a dense gradient per step.
    Measured on 16,000 SST-2 rows: 319 vs 297 examples/s (+7%), dev accuracy 0.861 vs 0.854 (one seed;
    bench/BENCHMARKS.md). Not for a task that `trains_input_embeddings` (token classification: word identity
    is what a tagger reads). `freeze_embeddings=False` trains it like any other weight. Position and
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


def prepare_model(task, model_dir: str, labels: list[str], p: FinetuneParams) -> tuple[object, dict]:
    """The task's model on the base encoder, LoRA-wrapped or with frozen input embeddings, and its counts."""
    import torch

    from domaintune.components.finetune.lora import apply_lora
    from domaintune.components.training import packing
    from domaintune.components.training.dropout import use_cheap_cpu_dropout

    model = task.build_model(model_dir, labels)
    model = apply_lora(task, model, p) if p.lora else model
    freeze = p.freeze_embeddings and not p.lora and not task.trains_input_embeddings
    frozen = freeze_input_embeddings(model) if freeze else 0
    cheap_dropout = 0 if torch.cuda.is_available() else use_cheap_cpu_dropout(model)
    packed = None if torch.cuda.is_available() else packing.enable(model)  # measured on CPUs only
    return model, {"parameters": {**count_parameters(model), "frozen_input_embeddings": frozen},
                   "cheap_cpu_dropout_modules": cheap_dropout, "packed_head": packed,
                   "train_batches": "random, packed without padding (training/packing.py)" if packed
                   else "length-grouped, in random order (training/trainer.py)"}


def training_arguments(task, p: FinetuneParams, checkpoints: str, precision: str, train_size: int,
                       setup: dict | None = None, packed: bool = False):
    """The TrainingArguments (or the task's arguments class, with the task's extra options: `training_setup`);
    PACKED: random batches (packing.py), else length-grouped ones."""
    import torch
    from transformers import TrainingArguments

    setup = setup or {}
    steps_per_epoch = max(1, -(-train_size // p.batch_size))
    return setup.get("arguments", TrainingArguments)(
        **setup.get("options", {}),
        output_dir=checkpoints,
        num_train_epochs=p.epochs,
        learning_rate=p.learning_rate,
        per_device_train_batch_size=per_device_batch(p, distributed.world_size()),
        gradient_accumulation_steps=p.gradient_accumulation_steps,
        per_device_eval_batch_size=max(64, p.batch_size),
        weight_decay=p.weight_decay,
        warmup_steps=p.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of total steps
        lr_scheduler_type="linear",
        train_sampling_strategy="random" if packed else "group_by_length",
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        # Optimizer and scheduler states only matter for resuming; without a checkpoint dir to resume
        # from, writing them (2x the model) every epoch is pure cost.
        save_only_model=not p.checkpoint_dir,
        load_best_model_at_end=True,
        metric_for_best_model=task.primary_metric,
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
        # every trainable weight gets a gradient each step (the heads use the encoder's output): skip DDP's
        # per-step search for unused ones
        ddp_find_unused_parameters=False,
        # across nodes (a Kubeflow TrainJob) each node keeps its own checkpoints: every process reloads the best
        save_on_each_node=distributed.multi_node(),
    )


def save_model(model, tokenizer, output_dir: str, task, labels: list[str], max_length: int, p: FinetuneParams,
               calibration: dict | None = None):
    """The HF directory plus `domaintune.json`: the task, max_length, labels and the confidence calibration
    its predictors apply (export copies the file beside the ONNX model)."""
    meta = {"task": task.name, "max_length": max_length, "labels": labels, "lora_merged": p.lora}
    if calibration:
        meta["calibration"] = calibration
    with storage.atomic_dir(output_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        storage.write_json(os.path.join(tmp, "domaintune.json"), meta)


# What a checkpoint directory is bound to besides the data and the base model: every parameter that changes
# the training (where checkpoints go and where S3 is do not).
# The process count and accumulation split the same global batch differently: a retry on a pod of another size
# resumes the same training.
NOT_IN_FINGERPRINT = ("checkpoint_dir", "s3_endpoint_url", "num_processes", "gradient_accumulation_steps")


def training_fingerprint(tokens_dir: str, model_dir: str, p: FinetuneParams) -> dict:
    """What produced a checkpoint (training/checkpoints.py): the tokens (stats, label map, and the Arrow data of
    the train and validation splits, which early stopping and the best checkpoint depend on), the base model's
    config and weights, and the training parameters."""
    data = {name: ckpt.file_digest([os.path.join(tokens_dir, name)]) for name in ("token_stats.json", LABEL_MAP)}
    data.update({split: ckpt.arrow_digest(os.path.join(tokens_dir, split)) for split in ("train", "validation")})
    return ckpt.fingerprint(data, ckpt.model_digest(model_dir), ckpt.training_params(p, NOT_IN_FINGERPRINT))


def checkpoints_for(tokens_dir: str, model_dir: str, output_dir: str, p: FinetuneParams) -> tuple[str, dict]:
    """Checkpoints live outside the model artifact; a retried task given the same --checkpoint-dir (a volume on a
    cluster) resumes from the last one — only if that directory was written by this same training. Without
    --checkpoint-dir they go to a scratch directory beside the output that a kfp.local retry of this task finds
    again; one left there by another training is cleared (nobody asked to keep it)."""
    fp = training_fingerprint(tokens_dir, model_dir, p)
    if p.checkpoint_dir:
        return ckpt.bind(p.checkpoint_dir, fp), fp
    scratch = os.path.join(os.path.dirname(os.path.abspath(output_dir)), "checkpoints")
    return ckpt.bind_scratch(scratch, fp), fp


@distributable("finetune", check=per_device_batch)
def run_finetune(tokens_dir: str, model_dir: str, output_dir: str, history_path: str, p: FinetuneParams) -> dict:
    stage_started = time.monotonic()
    from datasets import load_from_disk
    from transformers import EarlyStoppingCallback, set_seed

    from domaintune.components.training.packing import PackingCollator

    set_seed(p.seed)
    task = task_of(tokens_dir)
    # first, before the model is loaded: a checkpoint dir of another training is refused in a second
    # (the main process binds the directory, the others then find it bound)
    checkpoints, fp = distributed.main_first(checkpoints_for, tokens_dir, model_dir, output_dir, p)
    resume = ckpt.last_checkpoint(checkpoints)
    if distributed.is_main():
        print(ckpt.describe_resume("finetune", resume, checkpoints, fp["fingerprint"]), file=sys.stderr, flush=True)
    train = load_from_disk(os.path.join(tokens_dir, "train"))
    p, chosen = sizing.for_data_size(p, len(train), distributed.world_size(), announce=distributed.is_main())
    # The Trainer evaluates in dataset order, padding each batch to its longest row: sorted by length, the
    # per-epoch evaluation of varied sentence lengths (CoNLL: 1 to 124 words) pads little (metrics don't
    # depend on the order).
    validation = load_from_disk(os.path.join(tokens_dir, "validation"))
    validation = validation.sort("length") if "length" in validation.column_names else validation
    labels = storage.read_json(os.path.join(tokens_dir, LABEL_MAP))["labels"]
    tokenizer = load_tokenizer(os.path.join(tokens_dir, "tokenizer"))
    token_stats = storage.read_json(os.path.join(tokens_dir, "token_stats.json"))
    max_length = token_stats["max_length"]
    model, model_info = prepare_model(task, model_dir, labels, p)
    precision = pick_precision(p.precision)
    setup = task.training_setup(model, tokenizer, token_stats)
    if setup.get("validation_rows") and len(validation) > setup["validation_rows"]:  # bounded per-epoch cost
        validation = validation.shuffle(seed=p.seed).select(range(setup["validation_rows"]))

    packed = model_info["packed_head"]
    trainer = timed_trainer_class(setup.get("trainer"))(
        model=model, args=training_arguments(task, p, checkpoints, precision, len(train), setup, bool(packed)),
        train_dataset=train, eval_dataset=validation, processing_class=tokenizer,
        data_collator=task.collator(tokenizer), compute_metrics=task.metric_function(labels, tokenizer),
        train_collator=PackingCollator.for_model(model, tokenizer.pad_token_id) if packed else None,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=p.early_stopping_patience),
                   progress_callback("finetune")],
    )
    started, cpu_started = time.monotonic(), time.process_time()
    result = trainer.train(resume_from_checkpoint=resume)
    clock = {"stage_started": stage_started, "started": started, "train_seconds": time.monotonic() - started,
             "train_cpu_seconds": time.process_time() - cpu_started}
    trainer.train_tokens = distributed.sum_over_ranks(trainer.train_tokens)  # each rank counted its own batches
    best = best_evaluation(trainer.state, task.primary_metric) or trainer.evaluate()
    # fitted on validation, the split early stopping already chose the model on; the test split stays unseen.
    # On every rank: under DDP the prediction is a collective (each rank scores its shard, all gather them).
    calibration = task.calibrate(trainer, validation)
    distributed.barrier()  # every rank holds the best model before the main one clears the checkpoints
    if not distributed.is_main():  # the main process writes the outputs and the report
        return None

    history = build_history(task, p, trainer, result, best, clock, resume, len(train),
                            {**model_info, "precision_used": precision, "max_length": max_length})
    history["distributed"] = {**distributed.describe(), "global_batch_size": p.batch_size,
                              "per_device_batch_size": trainer.args.per_device_train_batch_size,
                              "gradient_accumulation_steps": p.gradient_accumulation_steps}
    history["chosen_for_data_size"] = chosen
    history["checkpoints"] = {"dir": checkpoints if p.checkpoint_dir else None, "fingerprint": fp["fingerprint"]}
    pretrained = os.path.join(model_dir, "pretrain.json")
    if os.path.isfile(pretrained):  # the encoder came from the pretrain stage: its report travels with the run
        history["pretrain"] = storage.read_json(pretrained)
    if calibration:
        history["calibration"] = calibration
    save_model(trainer.model.merge_and_unload() if p.lora else trainer.model, tokenizer, output_dir, task, labels,
               max_length, p, calibration)
    os.makedirs(os.path.dirname(os.path.abspath(history_path)), exist_ok=True)
    if not p.checkpoint_dir:  # nothing left to resume: don't keep optimizer states around
        shutil.rmtree(checkpoints, ignore_errors=True)
    history["timing"]["stage_seconds"] = round(time.monotonic() - stage_started, 2)
    storage.write_json(history_path, history)
    resumed = (f", resumed at step {history['resumed_step']}: {history['examples_seen']} examples in all"
               if resume else "")
    print(f"finetune: {history['examples_trained']} examples in {history['train_seconds']:.1f}s "
          f"({history['examples_per_second']} ex/s, {precision}{resumed}, {distributed.world_size()} process(es)); "
          f"validation {task.primary_metric} {history['validation'][task.primary_metric]:.4f}", file=sys.stderr)
    return history
