"""Training defaults that depend on the training set's size: the one place for that rule.

`--batch-size 0` (the default) means "chosen for the data"; any other value is the user's and is used as
given. The choice is made once the training split's size is known (run_finetune),
written into history.json (`chosen_for_data_size`, with `params` holding the values used) and shown as one
line on stderr.

Why (bench/finetune_sizes.py, numbers in bench/BENCHMARKS.md "Accuracy at every data size"): one epoch of
batch 32 on 4,000 SST-2 rows is 125 optimizer steps, and at learning rate 1e-4 that is too few: dev accuracy
0.797 against the tutorials' recipe (batch 16, 250 steps) 0.829. On 16,000 rows batch 32 (500 steps) matches
the recipe and is the faster batch. So the batch is the largest of BATCHES that still gives MIN_STEPS
optimizer steps per epoch (the smallest when none does). The learning rate is not part of the rule: at
batch 32, 2e-4 instead of 1e-4 did not close the gap (0.800 at 4,000 rows), nor did 2e-4 at batch 16 on
1,000 rows (0.735 vs 0.763 at 1e-4); one seed each, bench/BENCHMARKS.md.
"""
from __future__ import annotations

import dataclasses
import sys

BATCHES = (32, 16, 8)  # largest first: the fastest batch that keeps enough steps wins
MIN_STEPS = 250  # optimizer steps per epoch below which a smaller batch is chosen


def auto_batch_size(train_size: int, parts: int = 1) -> int:
    """The largest batch of BATCHES giving MIN_STEPS steps per epoch over TRAIN_SIZE rows (else the smallest),
    rounded up to a multiple of PARTS (processes x accumulation: the global batch must split evenly)."""
    batch = next((b for b in BATCHES if -(-train_size // b) >= MIN_STEPS), BATCHES[-1])
    return -(-batch // parts) * parts


def for_data_size(p, train_size: int, processes: int = 1, announce: bool = False):
    """P with its "chosen for the data" fields (0) resolved for TRAIN_SIZE training rows, and what was chosen
    ({field: {"value", ...how}}; empty when the user gave every one). ANNOUNCE: print the choice (stderr)."""
    chosen = {}
    if p.batch_size == 0:
        parts = processes * p.gradient_accumulation_steps
        batch = auto_batch_size(train_size, parts)
        steps = -(-train_size // batch)
        chosen["batch_size"] = {"value": batch, "train_rows": train_size, "steps_per_epoch": steps,
                                "rule": f"the largest of {list(BATCHES)} giving >= {MIN_STEPS} optimizer steps per "
                                        f"epoch, else the smallest"}
    resolved = dataclasses.replace(p, **{k: v["value"] for k, v in chosen.items()}) if chosen else p
    if chosen and announce:
        print(describe(chosen, train_size), file=sys.stderr, flush=True)
    return resolved, chosen


def describe(chosen: dict, train_size: int) -> str:
    """The one line the user sees (stderr) when a default was chosen for the data."""
    b = chosen["batch_size"]
    return (f"finetune: batch size {b['value']} chosen for {train_size} training rows ({b['steps_per_epoch']} "
            f"optimizer steps per epoch; --batch-size sets your own)")
