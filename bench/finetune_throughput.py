"""Finetune throughput: our finetune stage (pipeline defaults) vs the tutorials' recipe, side by side, same data.

    python -m bench.finetune_throughput --json OUT [--rows 4000] [--ours-runs 2] [--variant batch_size=16 ...]

Both train the packaged all-MiniLM-L6-v2 on the same ingested SST-2 sample (seeded sample of train.tsv;
dev.tsv is validation and test) for one epoch, then are scored on dev:

- ours: `run_finetune` with the pipeline's defaults (`FinetuneParams()`) except `epochs=1`, on the
  tokenize stage's output (ingest + tokenize run once, beforehand, with the stage functions).
- baseline, the tutorials' recipe: a hand-written PyTorch loop, `padding="max_length"` to 128, batch 16,
  `torch.optim.AdamW`, fp32, peak learning rate 1e-4, 6% warm-up, weight decay 0.01 and linear decay
  (`RECIPE`: what our defaults were before they depended on the data size, so the recipe's numbers stay
  comparable across rounds), shuffled with a seeded generator.

Both run in this one process with the same thread settings. The baseline's epoch is cut into
`ours-runs + 1` chunks and our runs happen between them, so a change of machine load hits both. Reported
examples/s: ours from the stage's own history (`examples_per_second_steps`: optimizer steps only, what a
bare loop measures; `examples_per_second`: `trainer.train()` incl. the per-epoch evaluation and checkpoint;
and the whole `run_finetune` call incl. model load and save), the baseline's over its training steps only.
CPU-time throughputs (process CPU seconds) are given too: on a shared machine they move far less with load.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time

from bench import _common as C

# The recipe's hyper-parameters: fixed here (not read from our defaults, which now depend on the data size).
RECIPE = {"learning_rate": 1e-4, "warmup_ratio": 0.06, "weight_decay": 0.01, "batch_size": 16}


def finetune_defaults() -> dict:
    """The finetune stage's parameter defaults (its Params dataclass is their one source)."""
    from domaintune.components.core.params import defaults
    from domaintune.components.finetune.stage import FinetuneParams

    return defaults(FinetuneParams)


def baseline_setup(splits: str, model_dir: str, labels: list[str], d: dict, seed: int, trim: bool = False):
    """The tutorials' recipe, prepared: fixed-length tokenization, DataLoader, fp32 model, torch AdamW.

    TRIM: each batch loses the columns that are padding in all its rows before the forward pass. Same
    batches, same order, same model, optimizer and schedule; padded positions are masked out of attention,
    so loss, logits and gradients are the recipe's up to float rounding (measured: 0, 4e-8 and 1.5e-8 apart
    with dropout off). Dropout draws its masks for the trimmed shape: another random draw of the same
    training, what seeds average over. ~8x cheaper on short sentences: for accuracy over several seeds
    (bench/finetune_sizes.py); its speed is not the recipe's."""
    import pandas as pd
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train = pd.read_parquet(os.path.join(splits, "train.parquet"))
    enc = tokenizer(train["text"].tolist(), padding="max_length", truncation=True, max_length=128, return_tensors="pt")
    data = TensorDataset(enc["input_ids"], enc["attention_mask"], torch.tensor(train["label"].to_numpy()))
    loader = DataLoader(data, batch_size=d.get("batch_size", 16), shuffle=True, generator=torch.Generator().manual_seed(seed))
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(labels))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=d["learning_rate"], weight_decay=d["weight_decay"])
    steps = len(loader)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(d["warmup_ratio"] * steps), steps)
    return {"model": model, "optimizer": optimizer, "scheduler": scheduler, "batches": iter(loader),
            "steps": steps, "examples": len(data), "tokenizer": tokenizer, "trim": trim}


def baseline_chunk(b: dict, n_steps: int) -> tuple[int, float, float]:
    """Train N steps of the recipe; returns (examples, wall seconds, CPU seconds)."""
    model, optimizer, scheduler = b["model"], b["optimizer"], b["scheduler"]
    examples = 0
    w0, c0 = time.perf_counter(), C.cpu_seconds()
    for _ in range(n_steps):
        batch = next(b["batches"], None)
        if batch is None:
            break
        input_ids, attention_mask, labels = trimmed(batch) if b.get("trim") else batch
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        examples += len(labels)
    return examples, time.perf_counter() - w0, C.cpu_seconds() - c0


def trimmed(batch):
    """The batch without the columns that are padding in every row (see baseline_setup's TRIM)."""
    input_ids, attention_mask, *rest = batch
    n = int(attention_mask.sum(1).max())
    return (input_ids[:, :n], attention_mask[:, :n], *rest)


def baseline_accuracy(b: dict, splits: str) -> float:
    import numpy as np
    import pandas as pd
    import torch

    dev = pd.read_parquet(os.path.join(splits, "validation.parquet"))
    enc = b["tokenizer"](dev["text"].tolist(), padding="max_length", truncation=True, max_length=128, return_tensors="pt")
    model = b["model"].eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(dev), 64):
            ids, mask = trimmed((enc["input_ids"][i:i + 64], enc["attention_mask"][i:i + 64]))  # exact: masked
            logits = model(input_ids=ids, attention_mask=mask).logits
            preds.append(logits.argmax(-1).numpy())
    return float((np.concatenate(preds) == dev["label"].to_numpy()).mean())


BENCH_ONLY = {"sampler.mega_batch_mult": int, "torch_dropout": bool, "packing": bool}  # run_ours' own switches


def run_ours(prep: dict, work: str, name: str, overrides: dict) -> dict:
    """Our stage, epochs=1 and OVERRIDES. Bench-only keys, for exploring what makes a difference: `args.NAME`
    a TrainingArguments field (e.g. args.max_grad_norm=0); `sampler.mega_batch_mult=N` length-groups N batches
    at a time (HF: 50); `torch_dropout=true` torch's dropout instead of training/dropout.py's; `packing=false`
    the length-grouped batches instead of training/packing.py's packed random ones."""
    import functools
    import transformers
    import transformers.trainer_pt_utils as pt_utils

    import domaintune.components.training.dropout as dropout
    import domaintune.components.training.packing as packing
    from domaintune.components.finetune import stage

    trainer_args = {k[len("args."):]: v for k, v in overrides.items() if k.startswith("args.")}
    mult = overrides.get("sampler.mega_batch_mult")
    p = C.finetune_params(**{"epochs": 1.0, **{k: v for k, v in overrides.items()
                                              if not k.startswith("args.") and k not in BENCH_ONLY}})
    out = os.path.join(work, name)
    original = transformers.TrainingArguments  # the stage imports it at call time
    original_grouping = pt_utils.get_length_grouped_indices  # so does training/trainer.py
    original_dropout = dropout.use_cheap_cpu_dropout  # and finetune/stage.py
    original_packing = packing.enable  # and finetune/stage.py
    if trainer_args:
        transformers.TrainingArguments = lambda **kw: original(**{**kw, **trainer_args})
    if mult:
        pt_utils.get_length_grouped_indices = functools.partial(original_grouping, mega_batch_mult=mult)
    if overrides.get("torch_dropout"):
        dropout.use_cheap_cpu_dropout = lambda model: 0
    if overrides.get("packing") is False:
        packing.enable = lambda model: None
    w0, c0 = time.perf_counter(), C.cpu_seconds()
    try:
        h = stage.run_finetune(prep["tokens"], prep["model_dir"], os.path.join(out, "model"),
                               os.path.join(out, "history.json"), p)
    finally:
        transformers.TrainingArguments = original
        pt_utils.get_length_grouped_indices = original_grouping
        dropout.use_cheap_cpu_dropout = original_dropout
        packing.enable = original_packing
    wall, cpu = time.perf_counter() - w0, C.cpu_seconds() - c0
    return {"name": name, "overrides": overrides, "batch_size": h["params"]["batch_size"], "examples": h["examples_seen"],
            "chosen": h.get("chosen_for_data_size"), "learning_rate": h["params"]["learning_rate"],
            "examples_per_second_steps": h["examples_per_second_steps"],
            "examples_per_second_train": h["examples_per_second"],
            "examples_per_second_stage": round(h["examples_seen"] / wall, 2),
            "examples_per_cpu_second_stage": round(h["examples_seen"] / cpu, 2),
            "stage_wall_seconds": round(wall, 2), "timing": h["timing"], "train_tokens": h["train_tokens"],
            "train_batches": h["train_batches"],
            "accuracy": h["validation"]["accuracy"], "macro_f1": h["validation"]["macro_f1"],
            "precision": h["params"]["precision_used"], "parameters": h["parameters"],
            "loadavg": round(os.getloadavg()[0], 2)}


def parse_variant(text: str) -> dict:
    out = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if key.startswith("args."):  # a TrainingArguments field (run_ours): a number or a word
            out[key] = float(value) if value.replace(".", "", 1).isdigit() else value
            continue
        kind = BENCH_ONLY.get(key) or (type(finetune_defaults()[key]) if key != "epochs" else float)
        if kind is bool and value.lower() not in ("true", "false"):
            raise SystemExit(f"--variant {key}={value}: expected true or false")
        out[key] = value.lower() == "true" if kind is bool else kind(value)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.finetune_throughput", description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--rows", type=int, default=4000, help="SST-2 train rows sampled (default 4000)")
    ap.add_argument("--seed", type=int, default=0, help="sample and baseline seed")
    ap.add_argument("--ours-runs", type=int, default=2, help="runs of our stage with the defaults (interleaved)")
    ap.add_argument("--variant", action="append", default=[],
                    help="extra run of our stage with overrides, e.g. batch_size=16 (reported beside, not as ours)")
    ap.add_argument("--work", help="scratch directory (default: a temporary one)")
    ap.add_argument("--no-warmup", action="store_true", help="skip the unmeasured warm-up run")
    args = ap.parse_args(argv)

    import torch

    work = args.work or tempfile.mkdtemp(prefix="bench-ft-")
    d = RECIPE
    info = C.machine()
    prep = C.prepare_sst2(work, args.rows, args.seed)
    import json

    labels = json.load(open(os.path.join(prep["tokens"], "label_map.json")))["labels"]
    # Warm-up, not measured: a fresh process pays for imports and for oneDNN building kernels per new
    # shape; one small run of the stage and two recipe steps on a throwaway copy pay it before the clock.
    if not args.no_warmup:
        warm = C.prepare_sst2(os.path.join(work, "warmup"), 400, args.seed + 1)
        run_ours(warm, work, "warmup", {})
        throwaway = baseline_setup(prep["splits"], prep["model_dir"], labels, d, args.seed)
        baseline_chunk(throwaway, 2)
        del throwaway
    base = baseline_setup(prep["splits"], prep["model_dir"], labels, d, args.seed)
    # ours and the variants alternate: ours, variant 1, ..., ours, ... (each --variant is one run)
    variants = [(f"variant:{v}", parse_variant(v)) for v in args.variant]
    runs = []
    for i in range(max(args.ours_runs, 1)):
        runs.append(("ours", {}))
        runs.extend(variants[i::max(args.ours_runs, 1)])
    chunks = len(runs) + 1
    per_chunk = math.ceil(base["steps"] / chunks)
    threads = torch.get_num_threads()

    base_parts, ours_runs = [], []
    for i in range(chunks):
        torch.set_num_threads(threads)
        ex, wall, cpu = baseline_chunk(base, per_chunk)
        base_parts.append({"examples": ex, "wall": wall, "cpu": cpu, "examples_per_second": round(ex / wall, 2),
                           "loadavg": round(os.getloadavg()[0], 2)})
        print(f"baseline chunk {i + 1}/{chunks}: {ex} examples, {ex / wall:.1f} ex/s", file=sys.stderr, flush=True)
        if i < len(runs):
            name, overrides = runs[i]
            torch.set_num_threads(threads)
            r = run_ours(prep, work, f"{name.replace(':', '-').replace('=', '')}-{i}", overrides)
            r["name"] = name
            ours_runs.append(r)
            print(f"{name}: {r['examples_per_second_steps']} ex/s (steps), acc {r['accuracy']:.4f}", file=sys.stderr, flush=True)
    acc_base = baseline_accuracy(base, prep["splits"])

    b_ex = sum(p["examples"] for p in base_parts)
    b_wall = sum(p["wall"] for p in base_parts)
    b_cpu = sum(p["cpu"] for p in base_parts)
    baseline_eps = b_ex / b_wall
    ours = [r for r in ours_runs if r["name"] == "ours"]

    def pooled(rs, key_seconds):  # total examples / total seconds over runs
        return sum(r["examples"] for r in rs) / sum(key_seconds(r) for r in rs)

    eps_steps = pooled(ours, lambda r: r["timing"]["step_seconds"])
    eps_train = pooled(ours, lambda r: r["timing"]["train_seconds"])
    eps_stage = pooled(ours, lambda r: r["stage_wall_seconds"])
    eps_cpu_stage = sum(r["examples"] for r in ours) / sum(r["examples"] / r["examples_per_cpu_second_stage"] for r in ours)
    result = {
        "ratio": round(eps_steps / baseline_eps, 2),
        "examples_per_s_ours": round(eps_steps, 2),
        "baseline_examples_per_s": round(baseline_eps, 2),
        "accuracy_ours": ours[0]["accuracy"],
        "accuracy_baseline": acc_base,
        "ratio_train_incl_eval_checkpoint": round(eps_train / baseline_eps, 2),
        "ratio_stage_wall": round(eps_stage / baseline_eps, 2),
        "examples_per_s_ours_train_incl_eval_checkpoint": round(eps_train, 2),
        "examples_per_s_ours_stage_wall": round(eps_stage, 2),
        "ratio_cpu_time_stage_vs_baseline_steps": round(eps_cpu_stage / (b_ex / b_cpu), 2),
        "examples_per_cpu_s_ours_stage": round(eps_cpu_stage, 2),
        "baseline_examples_per_cpu_s": round(b_ex / b_cpu, 2),
        "noise": {
            "ours_examples_per_s_steps_per_run": [r["examples_per_second_steps"] for r in ours],
            "baseline_examples_per_s_per_chunk": [p["examples_per_second"] for p in base_parts],
            "ours_accuracy_per_run": [r["accuracy"] for r in ours],
            "ratio_per_run_vs_neighbouring_chunks": [
                round(r["examples_per_second_steps"] / statistics.mean([base_parts[i]["examples_per_second"],
                                                                          base_parts[i + 1]["examples_per_second"]]), 2)
                for i, r in enumerate(ours_runs) if r["name"] == "ours"],
        },
        "ours_runs": ours_runs,
        "baseline": {"examples": b_ex, "train_seconds": round(b_wall, 2), "cpu_seconds": round(b_cpu, 2),
                     "chunks": base_parts, "batch_size": 16, "padding": "max_length 128", "precision": "fp32",
                     "optimizer": "torch.optim.AdamW (defaults: for-loop implementation on CPU)",
                     "learning_rate": d["learning_rate"], "warmup_ratio": d["warmup_ratio"],
                     "weight_decay": d["weight_decay"]},
        "data": {"rows_sampled": args.rows, "seed": args.seed, "rows": prep["rows"], "token_stats": prep["token_stats"],
                 "ingest_seconds": prep["ingest_seconds"], "tokenize_seconds": prep["tokenize_seconds"]},
        "pipeline_defaults_used": {**{k: {**finetune_defaults(), "max_length": prep["max_length"]}[k]
                                      for k in ("warmup_ratio", "weight_decay", "precision", "max_length", "seed",
                                                "lora")},
                                   "batch_size": ours[0]["batch_size"], "learning_rate": ours[0]["learning_rate"],
                                   "chosen_for_data_size": ours[0]["chosen"], "epochs": 1.0},
        "machine": {**info, "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
    }
    C.write_json(args.json, result)
    rows = [("baseline (recipe)", f"{baseline_eps:.1f}", f"{b_ex / b_cpu:.1f}", "1.0", f"{acc_base:.4f}")]
    for r in ours_runs:
        rows.append((r["name"] + f" b{r['batch_size']}", f"{r['examples_per_second_steps']:.1f} / {r['examples_per_second_train']:.1f} / "
                     f"{r['examples_per_second_stage']:.1f}", f"{r['examples_per_cpu_second_stage']:.1f}",
                     f"{r['examples_per_second_steps'] / baseline_eps:.1f}", f"{r['accuracy']:.4f}"))
    print(C.table(rows, ("", "ex/s (steps / train() / stage)", "ex/cpu-s", "ratio (steps)", "dev acc")))
    print(f"ratio {result['ratio']} (steps)  {result['ratio_train_incl_eval_checkpoint']} (incl. eval+checkpoint)  "
          f"{result['ratio_stage_wall']} (whole stage)  {result['ratio_cpu_time_stage_vs_baseline_steps']} (CPU time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
