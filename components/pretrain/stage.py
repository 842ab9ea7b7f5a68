"""Pretrain (optional): domain-adaptive masked-LM continued pretraining of the base encoder (DAPT / TAPT).

In: an unlabeled domain corpus (`--domain-corpus`: plain text with one document per line, or CSV/TSV/JSONL/
Parquet with a text column; local or s3://) and/or the training split's own texts (`--pretrain-on-train-text`,
task-adaptive pretraining), and the base model. Documents are tokenized, joined with the separator token and
cut into full `max_length` blocks, so no step computes on padding. A seeded slice of whole documents is held
out for perplexity.

"Before" is measured fairly: the packaged MiniLM ships no MLM head, so its perplexity with a random head says
nothing. When the head is missing from the checkpoint it is first trained alone on the corpus with the encoder
frozen (`mlm_head_warmup_steps`), and that head's held-out perplexity is "before"; the same fixed masks give
"after". The loss is computed on the masked positions only (the vocabulary projection of the other ~85% of
tokens is skipped): the same loss as the library's, in fewer FLOPs.

Out: a Hugging Face model directory (MLM weights + the base model's pooler, carried over so a reload as a
classifier initialises nothing but the classifier; tokenizer beside it; `pretrain.json`), and the report.

Modules: `corpus` (read and clean the documents), `blocks` (tokenize, hold out, pack), `mlm` (loss, perplexity,
head warm-up, classifier handoff), `report` (the report and the outputs); this one holds the parameters and the
stage, and re-exports the others' names (`from domaintune.components.pretrain.stage import split_and_pack`).
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass

from domaintune.components.core.errors import BadInput, require
from domaintune.components.io import storage
from domaintune.components.pretrain.blocks import (  # noqa: F401  (re-exported)
    HELDOUT_FRACTION, MAX_HELDOUT_BLOCKS, Blocks, make_collator, pack_blocks, special_template, split_and_pack,
    tokenize_docs)
from domaintune.components.pretrain.corpus import _clean_docs, gather_corpus, read_corpus  # noqa: F401
from domaintune.components.pretrain.params import PretrainParams
from domaintune.components.pretrain.mlm import (  # noqa: F401  (re-exported)
    EVAL_MLM_PROBABILITY, EVAL_MASK_SEED, HEAD_WARMUP_LR, _trainer_class, autocast, carried_weights,
    classifier_reload_check, encoder_features, fixed_eval_batches, head_perplexity, head_warmup, masked_logits,
    mlm_head, mlm_loss, perplexity)
from domaintune.components.pretrain.report import perplexity_report, training_report, write_outputs
from domaintune.components.training import checkpoints as ckpt
from domaintune.components.training import distributed
from domaintune.components.training.launch import distributable
from domaintune.components.training.precision import pick_precision
from domaintune.components.training.progress import progress_callback

WARMUP_RATIO = 0.06
WEIGHT_DECAY = 0.01
MIN_SAVE_STEPS = 50  # checkpoint every max(this, steps/4) steps (at most 500): a few per run, none in short ones


def per_device_batch(p: PretrainParams, processes: int) -> int:
    """--mlm-batch-size is the global batch, split evenly over the processes."""
    require(p.mlm_batch_size % processes == 0, f"--mlm-batch-size {p.mlm_batch_size} is the global batch and must "
                                               f"split evenly over {processes} processes")
    return p.mlm_batch_size // processes


# ---------------------------------------------------------------------------------------------- stage


@dataclass
class _Plan:
    per_epoch: int      # optimizer steps per pass over the train blocks
    steps: int          # masked-LM steps (after the --mlm-max-steps cap)
    warmup_steps: int   # head-only steps before them (0: the checkpoint has its MLM head)
    total: int


@distributable("pretrain", check=per_device_batch)
def run_pretrain(splits_dir: str, model_dir: str, output_dir: str, report_path: str, p: PretrainParams) -> dict:
    """Continue masked-LM pretraining of MODEL_DIR on the domain corpus and/or the train split's texts.

    Writes OUTPUT_DIR (model + tokenizer + pretrain.json) and REPORT_PATH only when everything succeeded.
    """
    require(p.wanted, "pretrain needs --domain-corpus or --pretrain-on-train-text")
    wall_started = time.monotonic()
    tokenizer, train, heldout, corpus = prepare_blocks(splits_dir, model_dir, p)
    # another training's: refused here (the main process binds the directory, the others find it bound)
    checkpoints, fp = distributed.main_first(checkpoints_for, model_dir, output_dir, corpus, p)
    resume = ckpt.last_checkpoint(checkpoints)
    if distributed.is_main():
        print(ckpt.describe_resume("pretrain", resume, checkpoints, fp["fingerprint"]), file=sys.stderr, flush=True)
    model, head_missing, precision, device = load_masked_lm(model_dir, p.precision)
    plan = plan_steps(model, train, head_missing, p)
    eval_batches = fixed_eval_batches(tokenizer, heldout, max(32, p.mlm_batch_size))
    before, resume = measure_before(model, tokenizer, train, eval_batches, checkpoints, resume, plan,
                                    precision, device, p)
    trainer, result, train_seconds = train_mlm(model, tokenizer, train, checkpoints, resume, plan, precision,
                                               device, p)
    model = trainer.model
    after = perplexity(model, eval_batches, precision, device)
    distributed.barrier()  # every rank is done with the checkpoints before the main one clears them
    if not distributed.is_main():  # the main process writes the outputs and the report
        return None
    extra = carried_weights(model, model_dir)
    report = {
        "params": {**asdict(p), "precision_used": precision},
        "corpus": corpus,
        "perplexity": perplexity_report(before, after, corpus, head_missing, plan.warmup_steps),
        "head_warmup": before["head_warmup"],
        "training": training_report(trainer, result, train, plan.steps, plan.per_epoch, train_seconds, resume, device, p),
        "classifier_reload": {"carried_over_from_base": sorted(extra)},
        "distributed": distributed.describe(),
    }
    write_outputs(model, tokenizer, extra, report, output_dir, report_path, wall_started)
    if not p.checkpoint_dir:  # nothing left to resume: don't keep optimizer states around
        shutil.rmtree(checkpoints, ignore_errors=True)
    print(f"pretrain: {report['training']['steps']} MLM steps, {report['training']['tokens_seen']} tokens in "
          f"{train_seconds:.1f}s ({precision}); "
          f"held-out perplexity {report['perplexity']['before']} -> {report['perplexity']['after']}", file=sys.stderr)
    return report


# The masked-LM checkpoints are bound (training/checkpoints.py) to the corpus content, the base model and these
# parameters; not to where things live, nor to the step budget (mlm_epochs, mlm_max_steps), which a retry may
# raise to continue the same training, nor to how many processes share the global batch.
NOT_IN_FINGERPRINT = ("checkpoint_dir", "s3_endpoint_url", "domain_corpus", "mlm_epochs", "mlm_max_steps",
                      "num_processes")


def checkpoints_for(model_dir: str, output_dir: str, corpus: dict, p: PretrainParams) -> tuple[str, dict]:
    """`<checkpoint_dir>/pretrain` bound to this training (a mismatch is refused), or a scratch directory beside
    the output that a retry of this task finds again (cleared when another training left it)."""
    data = [{"kind": s.get("kind"), "sha256": s.get("sha256"), "documents": s.get("documents")}
            for s in corpus.get("sources", [])]
    fp = ckpt.fingerprint({"corpus": data}, ckpt.model_digest(model_dir), ckpt.training_params(p, NOT_IN_FINGERPRINT))
    if p.checkpoint_dir:
        return ckpt.bind(os.path.join(p.checkpoint_dir, "pretrain"), fp), fp
    scratch = os.path.join(os.path.dirname(os.path.abspath(output_dir)), "pretrain-checkpoints")
    return ckpt.bind_scratch(scratch, fp), fp


def prepare_blocks(splits_dir: str, model_dir: str, p: PretrainParams) -> tuple:
    """The corpus read (bad input fails here, before anything is loaded or written), tokenized, held out
    and packed. Returns (tokenizer, train blocks, held-out blocks, corpus report)."""
    from transformers import set_seed

    from domaintune.components.io.base_models import check_max_length, load_tokenizer

    docs, corpus = gather_corpus(splits_dir, p)
    check_max_length(p.max_length, model_dir)
    tokenizer = load_tokenizer(model_dir)
    require(tokenizer.mask_token is not None, f"--base-model {model_dir}: the tokenizer has no mask token")
    set_seed(p.seed)
    started = time.monotonic()
    train, heldout, stats = split_and_pack(tokenizer, docs, p.max_length, p.seed, p.whole_word_masking,
                                           " + ".join(s["uri"] for s in corpus["sources"]))
    corpus.update(stats, tokenize_seconds=round(time.monotonic() - started, 2))
    return tokenizer, train, heldout, corpus


def load_masked_lm(model_dir: str, precision: str) -> tuple:
    """The base model as a masked LM on the device. Returns (model, MLM-head weights the checkpoint lacks,
    precision used, device)."""
    import torch
    from transformers import AutoModelForMaskedLM

    from domaintune.components.training.dropout import use_cheap_cpu_dropout

    try:
        model, info = AutoModelForMaskedLM.from_pretrained(model_dir, output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise BadInput(f"--base-model {model_dir}: cannot load as a masked LM ({str(exc).splitlines()[0]})") from None
    head_missing = sorted(k for k in info["missing_keys"] if not k.startswith(model.base_model_prefix + "."))
    precision = pick_precision(precision)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    if device == "cpu":
        use_cheap_cpu_dropout(model)
    return model, head_missing, precision, device


def plan_steps(model, train: dict, head_missing: list[str], p: PretrainParams) -> _Plan:
    per_epoch = max(1, -(-len(train["input_ids"]) // p.mlm_batch_size))
    steps = max(1, math.ceil(p.mlm_epochs * per_epoch))
    if p.mlm_max_steps:
        steps = min(steps, p.mlm_max_steps)
    warmup_steps = p.mlm_head_warmup_steps if head_missing and mlm_head(model) is not None else 0
    return _Plan(per_epoch, steps, warmup_steps, warmup_steps + steps)


def measure_before(model, tokenizer, train: dict, eval_batches: list[dict], checkpoints: str, resume: str | None,
                   plan: _Plan, precision: str, device: str, p: PretrainParams) -> tuple[dict, str | None]:
    """Held-out perplexity before training: recorded in the checkpoint dir on a resume (the warmed-up head is
    in the checkpoint), else measured, after the head warm-up when the checkpoint has no MLM head, and
    recorded. Returns ("before", the checkpoint to resume from or None)."""
    before_path = os.path.join(checkpoints, "before.json")
    if resume and os.path.isfile(before_path):
        return storage.read_json(before_path), resume
    if plan.warmup_steps:
        features = encoder_features(model, eval_batches, precision, device)
        before = {"perplexity_untrained_head": head_perplexity(model, features, precision, device)}
        before["head_warmup"] = head_warmup(model, tokenizer, train, plan.warmup_steps, p.mlm_batch_size, p.seed,
                                            precision, device, features, plan.total)
        before["perplexity_before"] = head_perplexity(model, features, precision, device)
        del features
    else:
        before = {"perplexity_untrained_head": None, "head_warmup": None,
                  "perplexity_before": perplexity(model, eval_batches, precision, device)}
    if distributed.is_main():  # every rank measured the same; one writes it
        os.makedirs(checkpoints, exist_ok=True)
        storage.write_json(before_path, before)
    return before, None


def training_arguments(checkpoints: str, plan: _Plan, precision: str, device: str, p: PretrainParams):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=checkpoints,
        max_steps=plan.steps,
        learning_rate=p.mlm_learning_rate,
        per_device_train_batch_size=per_device_batch(p, distributed.world_size()),
        weight_decay=WEIGHT_DECAY,
        warmup_steps=WARMUP_RATIO,  # transformers 5: a float in [0, 1) is a ratio of total steps
        lr_scheduler_type="linear",
        save_strategy="steps",
        save_steps=min(500, max(MIN_SAVE_STEPS, -(-plan.steps // 4))),
        save_total_limit=1,
        logging_strategy="steps",
        logging_steps=max(1, min(50, plan.steps // 20)),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        seed=p.seed,
        data_seed=p.seed,
        disable_tqdm=True,
        report_to=[],
        remove_unused_columns=False,  # the collator reads special_tokens_mask / offset_mapping and drops them
        dataloader_pin_memory=device == "cuda",
    )


def train_mlm(model, tokenizer, train: dict, checkpoints: str, resume: str | None, plan: _Plan, precision: str,
              device: str, p: PretrainParams) -> tuple:
    """The masked-LM steps through the library's Trainer. Returns (trainer, train result, seconds)."""
    trainer = _trainer_class()(
        model=model, args=training_arguments(checkpoints, plan, precision, device, p), train_dataset=Blocks(train),
        processing_class=tokenizer,
        # each rank its own masks (one seed everywhere would mask the same positions in every rank's blocks)
        data_collator=make_collator(tokenizer, p.mlm_probability, p.whole_word_masking, p.seed + distributed.rank()),
        callbacks=[progress_callback("pretrain", plan.warmup_steps, plan.total, phase="mlm")],
    )
    started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=resume)
    return trainer, result, time.monotonic() - started
