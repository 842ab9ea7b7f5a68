"""Financial PhraseBank fine-tuned with and without domain-adaptive masked-LM pretraining (DAPT) on Reuters-21578.

Stage functions called directly (no KFP): ingest (dev.csv as validation and test) -> tokenize -> [pretrain on
Reuters, once, reused by every seed] -> finetune with the pipeline's defaults -> predictions on dev. Both arms
use the same seeds, so the per-seed differences are paired. Also times masked-LM throughput with packed blocks
vs documents padded to max_length (and padded per batch), interleaved step by step in one run.

    python -m bench.dapt --json bench/results/dapt.json [--seeds 3] [--mlm-max-steps N] [--whole-word-masking]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from bench import _common  # noqa: E402,F401  (sets the measuring environment before torch is imported)

DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
FPB = os.path.join(DATA, "financial_phrasebank")
REUTERS = os.path.join(DATA, "reuters21578_corpus", "train.txt")

def mean_sd(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 4),
            "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "values": [round(v, 4) for v in values]}


def throughput(base: str, docs: list[str], max_length: int, batch_size: int, steps: int, precision: str, seed: int) -> dict:
    """Masked-LM training steps on the same model, same batch size: packed blocks vs each document padded to
    max_length vs padded to the longest in its batch. Steps are interleaved (pack, pad, dynamic, pack, ...) so
    the other load on a shared machine hits all three alike. Counts real (non-pad) tokens."""
    import numpy as np
    import torch
    from transformers import AutoModelForMaskedLM

    from domaintune.components.io.base_models import load_tokenizer
    from domaintune.components.pretrain.stage import (Blocks, autocast, make_collator, mlm_loss, split_and_pack,
                                                      tokenize_docs)

    tokenizer = load_tokenizer(base)
    packed, _, stats = split_and_pack(tokenizer, docs, max_length, seed, offsets=False)
    tokenizer.model_max_length = max_length
    full = tokenizer(docs, truncation=True, max_length=max_length, return_special_tokens_mask=True)
    lengths = np.array([len(x) for x in full["input_ids"]])
    rng = np.random.default_rng(seed)
    collator = make_collator(tokenizer, 0.15, False, seed)
    model = AutoModelForMaskedLM.from_pretrained(base).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    blocks = Blocks(packed)

    def examples(kind):
        if kind == "packed":
            return [blocks[int(i)] for i in rng.integers(0, len(blocks), batch_size)]
        idx = rng.integers(0, len(docs), batch_size)
        rows = [{"input_ids": full["input_ids"][i], "special_tokens_mask": full["special_tokens_mask"][i]} for i in idx]
        if kind == "padded_to_max_length":
            return [tokenizer.pad(r, padding="max_length", max_length=max_length) for r in rows]
        return rows  # the collator pads to the longest in the batch

    kinds = ("packed", "padded_to_max_length", "padded_per_batch")
    seconds = {k: 0.0 for k in kinds}
    real = {k: 0 for k in kinds}
    computed = {k: 0 for k in kinds}
    for step in range(steps + 1):  # step 0 warms each path up and is not counted
        for kind in kinds:
            started = time.perf_counter()
            batch = collator(examples(kind))
            with autocast(precision, "cpu"):
                loss = mlm_loss(model, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step:
                seconds[kind] += time.perf_counter() - started
                real[kind] += int(batch["attention_mask"].sum())
                computed[kind] += int(batch["attention_mask"].numel())
    out = {"batch_size": batch_size, "max_length": max_length, "steps": steps, "precision": precision}
    for kind in kinds:
        out[kind] = {"real_tokens_per_second": round(real[kind] / seconds[kind], 1),
                     "real_token_share": round(real[kind] / computed[kind], 4),
                     "seconds": round(seconds[kind], 2)}
    # how much of the corpus each recipe can train on at all (truncation discards the tail of long documents)
    out["packed"]["corpus_tokens_usable_share"] = 1.0
    doc_tokens = np.array([len(x) for x in tokenize_docs(tokenizer, docs, offsets=False)["input_ids"]])
    usable = np.minimum(doc_tokens, lengths - 2).sum() / doc_tokens.sum()  # lengths include [CLS] and [SEP]
    out["padded_to_max_length"]["corpus_tokens_usable_share"] = round(float(usable), 4)
    out["padded_per_batch"]["corpus_tokens_usable_share"] = out["padded_to_max_length"]["corpus_tokens_usable_share"]
    out["packing_speedup_vs_padded_to_max_length"] = round(
        out["packed"]["real_tokens_per_second"] / out["padded_to_max_length"]["real_tokens_per_second"], 2)
    out["corpus_blocks"] = stats["blocks_train"]
    del model, optimizer
    return out


def evaluate_on_dev(model_dir: str, splits_dir: str) -> dict:
    import pandas as pd

    from domaintune.components.evaluation.metrics import classification_metrics
    from domaintune.components.inference.torch_backend import HFClassifier

    dev = pd.read_parquet(os.path.join(splits_dir, "test.parquet"))
    clf = HFClassifier(model_dir)
    pred = clf.predict_proba(dev["text"].tolist()).argmax(axis=1)
    m = classification_metrics(dev["label"].to_numpy(), pred, clf.labels)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--seeds", type=int, default=3, help="fine-tune seeds per arm (pipeline seed, +1, +2, ...)")
    ap.add_argument("--arms", default="baseline,dapt", help="comma-separated subset of baseline,dapt")
    ap.add_argument("--corpus", default=REUTERS)
    ap.add_argument("--mlm-max-steps", type=int)
    ap.add_argument("--mlm-learning-rate", type=float)
    ap.add_argument("--mlm-batch-size", type=int)
    ap.add_argument("--mlm-head-warmup-steps", type=int)
    ap.add_argument("--mlm-probability", type=float)
    ap.add_argument("--whole-word-masking", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--dapt-model", help="reuse this adapted model directory instead of pretraining")
    ap.add_argument("--throughput-steps", type=int, default=6, help="timed MLM steps per recipe; 0 skips")
    ap.add_argument("--keep", help="keep the work directory here")
    ap.add_argument("--limit-train", type=int, default=0, help="use only this many FPB train rows (smoke runs)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads (0: torch's default). On an oversubscribed machine 1 is 2-3x faster")
    args = ap.parse_args()
    for path in (os.path.join(FPB, "train.csv"), os.path.join(FPB, "dev.csv"), args.corpus):
        if not os.path.isfile(path):
            sys.exit(f"needs {path}")

    from domaintune.components.core.params import defaults
    from domaintune.components.finetune.stage import FinetuneParams, run_finetune
    from domaintune.components.ingest.stage import IngestParams, run_ingest
    from domaintune.components.io.base_models import resolve_model
    from domaintune.components.pretrain.stage import PretrainParams, run_pretrain
    from domaintune.components.tokenize.stage import TokenizeParams, run_tokenize
    from domaintune.components.training.precision import pick_precision

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    wall = time.monotonic()
    load_start = os.getloadavg()
    work = args.keep or tempfile.mkdtemp(prefix="bench-dapt-")
    os.makedirs(work, exist_ok=True)
    base = resolve_model("")
    dev = os.path.join(FPB, "dev.csv")
    train_csv = os.path.join(FPB, "train.csv")
    if args.limit_train:
        import pandas as pd

        train_csv = os.path.join(work, "train_sample.csv")
        pd.read_csv(os.path.join(FPB, "train.csv")).sample(n=args.limit_train, random_state=0).to_csv(train_csv, index=False)
    ingest = IngestParams(train_data=train_csv, validation_data=dev, test_data=dev, text_column="sentence",
                          label_column="label", slice_columns="")
    overrides = {k: v for k, v in vars(args).items() if k.startswith(("mlm_", "whole_word")) and v is not None}
    pre = PretrainParams(domain_corpus=args.corpus, **overrides)
    splits, tokens = os.path.join(work, "splits"), os.path.join(work, "tokens")
    run_ingest(ingest, splits, os.path.join(work, "data_report.json"))
    # one max_length for tokenize and pretrain, as the pipeline passes them
    token_stats = run_tokenize(splits, base, tokens, TokenizeParams(max_length=pre.max_length))

    ft_defaults = defaults(FinetuneParams)
    seeds = [ft_defaults["seed"] + i for i in range(args.seeds)]
    arms = [a for a in args.arms.split(",") if a]
    result = {"base_model": "all-MiniLM-L6-v2", "corpus": args.corpus, "task": "financial_phrasebank dev",
              "finetune_params": ft_defaults, "seeds": seeds, "cpu_count": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "limit_train": args.limit_train or None,
              "machine": _common.machine()}

    if args.throughput_steps:
        import pandas as pd

        from domaintune.components.pretrain.stage import read_corpus

        started = time.monotonic()
        corpora = {"reuters (DAPT corpus)": read_corpus(args.corpus, "text")[0],
                   "fpb train text (TAPT corpus)": pd.read_parquet(os.path.join(splits, "train.parquet"))["text"].tolist()}
        result["mlm_throughput"] = {
            name: throughput(base, docs, pre.max_length, pre.mlm_batch_size, args.throughput_steps,
                             pick_precision(pre.precision), pre.seed) for name, docs in corpora.items()}
        result["mlm_throughput_wall_seconds"] = round(time.monotonic() - started, 1)

    dapt_dir = args.dapt_model
    if "dapt" in arms and not dapt_dir:
        dapt_dir = os.path.join(work, "dapt")
        report = run_pretrain(splits, base, dapt_dir, os.path.join(work, "pretrain_report.json"), pre)
        report["training"].pop("log_history")
        result["pretrain"] = report

    runs = {arm: [] for arm in arms}
    for seed in seeds:  # arms interleaved per seed: drifting load on a shared machine hits both alike
        for arm in arms:
            out = os.path.join(work, f"{arm}-{seed}")
            history = run_finetune(tokens, base if arm == "baseline" else dapt_dir, out, out + "-history.json",
                                   FinetuneParams(**{**ft_defaults, "seed": seed}))
            metrics = evaluate_on_dev(out, splits)
            runs[arm].append({"seed": seed, **metrics, "train_seconds": history["train_seconds"],
                              "epochs_run": history["epochs_run"], "stopped_early": history["stopped_early"]})
            shutil.rmtree(out, ignore_errors=True)
            print(f"[{arm} seed {seed}] dev accuracy {metrics['accuracy']:.4f} macro-F1 {metrics['macro_f1']:.4f} "
                  f"({history['train_seconds']:.0f} s)", file=sys.stderr, flush=True)
    result["runs"] = runs
    result["summary"] = {arm: {"accuracy": mean_sd([r["accuracy"] for r in rs]),
                               "macro_f1": mean_sd([r["macro_f1"] for r in rs]),
                               "finetune_seconds": mean_sd([r["train_seconds"] for r in rs])} for arm, rs in runs.items()}
    if {"baseline", "dapt"} <= set(arms):
        result["paired_difference_dapt_minus_baseline"] = {
            metric: mean_sd([d[metric] - b[metric] for d, b in zip(runs["dapt"], runs["baseline"])])
            for metric in ("accuracy", "macro_f1")}
    result["token_stats"] = token_stats["splits"]["train"]
    result["wall_seconds"] = round(time.monotonic() - wall, 1)
    result["load_average"] = {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print_table(result)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def print_table(r: dict) -> None:
    print(f"\nFinancial PhraseBank dev (n={next(iter(r['runs'].values()))[0]['n']}), {len(r['seeds'])} seeds, "
          f"fine-tune lr {r['finetune_params']['learning_rate']} batch {r['finetune_params']['batch_size']} "
          f"epochs {r['finetune_params']['epochs']}")
    print(f"{'arm':<10}{'accuracy (mean ± sd)':>24}{'macro-F1 (mean ± sd)':>24}{'fine-tune s':>13}")
    for arm, s in r["summary"].items():
        print(f"{arm:<10}{s['accuracy']['mean']:>15.4f} ± {s['accuracy']['sd']:.4f}"
              f"{s['macro_f1']['mean']:>15.4f} ± {s['macro_f1']['sd']:.4f}{s['finetune_seconds']['mean']:>13.0f}")
    if "paired_difference_dapt_minus_baseline" in r:
        d = r["paired_difference_dapt_minus_baseline"]
        print(f"{'dapt-base':<10}{d['accuracy']['mean']:>+15.4f} ± {d['accuracy']['sd']:.4f}"
              f"{d['macro_f1']['mean']:>+15.4f} ± {d['macro_f1']['sd']:.4f}   (paired by seed)")
    if "pretrain" in r:
        p, t = r["pretrain"], r["pretrain"]["training"]
        print(f"DAPT (once, reused by every seed): {t['steps']} steps x {p['params']['mlm_batch_size']} x "
              f"{p['params']['max_length']} = {t['tokens_seen']:,} tokens ({t['epochs']} corpus epochs), "
              f"{t['train_seconds']:.0f} s MLM ({t['tokens_per_second']:.0f} tok/s) + "
              f"{(p['head_warmup'] or {}).get('seconds', 0):.0f} s head warm-up; stage wall {p['wall_seconds']:.0f} s")
        q = p["perplexity"]
        print(f"held-out perplexity: untrained head {q['untrained_head']}, after head warm-up (before) {q['before']} "
              f"[half warm-up {q['head_warmup_half']}], after DAPT {q['after']}")
    for name, m in r.get("mlm_throughput", {}).items():
        print(f"MLM throughput on {name}, batch {m['batch_size']} x {m['max_length']}, {m['steps']} interleaved steps "
              f"each ({m['precision']}): " + " | ".join(
                  f"{k} {m[k]['real_tokens_per_second']:.0f} real tok/s ({m[k]['real_token_share']:.0%} real, "
                  f"{m[k]['corpus_tokens_usable_share']:.0%} of corpus usable)"
                  for k in ("packed", "padded_to_max_length", "padded_per_batch")))
    print(f"bench wall {r['wall_seconds']:.0f} s; load average start {r['load_average']['start']} "
          f"end {r['load_average']['end']} on {r['cpu_count']} cores, {r['torch_threads']} torch thread(s)")


if __name__ == "__main__":
    sys.exit(main())
