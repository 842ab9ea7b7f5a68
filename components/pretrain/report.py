"""The pretrain stage's report (perplexity before/after and how it was measured, the training run) and its
outputs: the model directory, written atomically, and the report file."""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from domaintune.components.io import storage
from domaintune.components.pretrain.mlm import EVAL_MLM_PROBABILITY, HEAD_WARMUP_LR, classifier_reload_check

if TYPE_CHECKING:
    from domaintune.components.pretrain.stage import PretrainParams


def perplexity_report(before: dict, after: dict, corpus: dict, head_missing: list[str], warmup_steps: int) -> dict:
    """Perplexity before and after, on the same fixed masks, and how "before" was measured."""
    return {
        "before": before["perplexity_before"]["perplexity"],
        "after": after["perplexity"],
        "relative_change": round(after["perplexity"] / before["perplexity_before"]["perplexity"] - 1, 4),
        "untrained_head": (before["perplexity_untrained_head"] or {}).get("perplexity"),
        "head_warmup_half": ((before["head_warmup"] or {}).get("perplexity_at_half") or {}).get("perplexity"),
        "heldout_masked_tokens": after["masked_tokens"],
        "method": (
            f"exp(mean cross-entropy) over the masked tokens of {corpus['blocks_heldout']} held-out blocks "
            f"({corpus['documents_heldout']} whole documents never trained on), masked once with "
            f"{EVAL_MLM_PROBABILITY:.0%} token masking (80/10/10) and a fixed seed; identical masks before and after. "
            + (f"The base checkpoint has no MLM head ({', '.join(head_missing)} missing), so 'before' is measured "
               f"after {warmup_steps} head-only steps (encoder frozen, lr {HEAD_WARMUP_LR}); 'head_warmup_half' "
               f"is the same after half of them: a large gap means the head was still improving and 'before' "
               f"overstates what the base encoder reaches (so the gain is overstated too)."
               if warmup_steps else "The base checkpoint's own MLM head is used for 'before' (no warm-up).")),
        "details": {"before": before["perplexity_before"], "after": after},
    }


def training_report(trainer, result, train: dict, max_steps: int, steps_per_epoch: int, train_seconds: float,
                    resume: str | None, device: str, p: PretrainParams) -> dict:
    """Steps, tokens, throughput, losses and masking of the masked-LM run (the Trainer's log history too)."""
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    done_steps = trainer.state.global_step
    tokens_seen = done_steps * p.mlm_batch_size * p.max_length
    return {
        "steps": done_steps,
        "max_steps": max_steps,
        "steps_per_epoch": steps_per_epoch,
        "epochs": round(done_steps * p.mlm_batch_size / len(train["input_ids"]), 3),
        "tokens_seen": tokens_seen,
        "train_seconds": round(train_seconds, 2),
        "tokens_per_second": round(tokens_seen / train_seconds, 1) if train_seconds and not resume else None,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "train_loss": result.metrics.get("train_loss"),
        "masking": ("whole-word (DataCollatorForLanguageModeling(whole_word_mask=True), word boundaries from "
                    "offsets, every selected token -> [MASK])" if p.whole_word_masking
                    else "token-level (80% [MASK] / 10% random / 10% kept)"),
        "mlm_probability": p.mlm_probability,
        "resumed_from": resume,
        "device": device,
        "log_history": trainer.state.log_history,
    }


def write_outputs(model, tokenizer, extra: dict, report: dict, output_dir: str, report_path: str,
                  wall_started: float) -> None:
    """The model directory (weights + carried-over pooler, tokenizer, pretrain.json without the log history)
    atomically, then the report."""
    with storage.atomic_dir(output_dir) as tmp:
        model.save_pretrained(tmp, state_dict={**model.state_dict(), **extra})
        tokenizer.save_pretrained(tmp)
        report["classifier_reload"].update(classifier_reload_check(tmp))
        report["wall_seconds"] = round(time.monotonic() - wall_started, 2)
        storage.write_json(os.path.join(tmp, "pretrain.json"),
                           {k: v for k, v in report.items() if k != "training"} | {
                               "training": {k: v for k, v in report["training"].items() if k != "log_history"}})
    os.makedirs(os.path.dirname(os.path.abspath(report_path)), exist_ok=True)
    storage.write_json(report_path, report)
