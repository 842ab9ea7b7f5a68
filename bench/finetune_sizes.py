"""Accuracy and speed at several data sizes: our finetune stage (its defaults, which depend on the data size)
vs the tutorials' recipe, several seeds, one epoch each.

    python -m bench.finetune_sizes --json OUT [--case sst2:1000 --case sst2:4000 --case fpb ...]
        [--seeds 0,1,2] [--recipe-seeds 0,1,2] [--variant batch_size=16 ...] [--no-recipe]

A case is `sst2:ROWS` (a seeded sample of SST-2 train; dev is validation and test) or `fpb` (Financial
PhraseBank train; its dev is validation and test). Seed s samples the rows (SST-2) and seeds both trainings.
Per case and seed, in this order:

- the recipe's accuracy (bench.finetune_throughput's hand-written loop: batch 16, fp32, torch AdamW, lr 1e-4,
  6% warm-up, weight decay 0.01), one epoch, the mean of `--recipe-streams` runs on the sample that differ only
  in their random draws (initialisation, shuffle, dropout). Its batches are tokenized to 128 as written but lose their
  all-padding columns before the forward pass (`baseline_setup(trim=True)`: the same computation up to
  float rounding and dropout's random draws, ~8x cheaper), so three seeds per case fit on 2 cores;
  `--recipe-full-padding` runs it exactly as written;
- the recipe's speed as written (pad 128): `--speed-steps` steps timed just before our runs;
- our stage with its defaults (`ours`), then each --variant (our stage with overrides: candidates).

Speed: examples/s of the optimizer steps; each seed's ratio is ours over the recipe's steps timed just
before it (same load). Reported per arm: dev accuracy mean ± sd over seeds (sample sd), and the examples/s.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from bench import _common as C
from bench import finetune_throughput as FT

FPB = os.path.abspath(os.path.join(C.HERE, "..", "..", "shared", "data", "financial_phrasebank"))


def prepare_fpb(work: str) -> dict:
    """Financial PhraseBank train as train, its dev as validation and test, through ingest and tokenize."""
    from domaintune.components.ingest.stage import IngestParams, run_ingest
    from domaintune.components.io.base_models import resolve_model
    from domaintune.components.tokenize.stage import TokenizeParams, run_tokenize

    dev = os.path.join(FPB, "dev.csv")
    params = IngestParams(train_data=os.path.join(FPB, "train.csv"), validation_data=dev, test_data=dev,
                          text_column="sentence", label_column="label", slice_columns="")
    tokenize = TokenizeParams()
    model_dir = resolve_model(tokenize.base_model)
    os.makedirs(work, exist_ok=True)
    report = run_ingest(params, os.path.join(work, "splits"), os.path.join(work, "data_report.json"))
    stats = run_tokenize(os.path.join(work, "splits"), model_dir, os.path.join(work, "tokens"), tokenize)
    return {"splits": os.path.join(work, "splits"), "tokens": os.path.join(work, "tokens"), "model_dir": model_dir,
            "rows": report["rows"], "token_stats": stats["splits"]}


def prepare(case: str, work: str, seed: int) -> dict:
    if case == "fpb":
        return prepare_fpb(work)
    name, _, rows = case.partition(":")
    if name != "sst2" or not rows.isdigit():
        raise SystemExit(f"--case {case}: expected sst2:ROWS or fpb")
    return C.prepare_sst2(work, int(rows), seed)


# Recipe stream k (k > 0) seeds the recipe's initialisation, shuffle and dropout with seed + k * STREAM_OFFSET on the
# same data sample: how far the recipe moves from its own random draws alone (measured on 4,000 SST-2 rows: the
# two streams of one sample 1.08 points apart on average over 11 samples, bench/BENCHMARKS.md).
STREAM_OFFSET = 1000


def recipe_accuracy(prep: dict, seed: int, trim: bool, streams: int = 1) -> dict:
    """The recipe's epoch and its dev accuracy, the mean over STREAMS random streams of this data sample (stream
    0 is seed itself); TRIM: without all-padding columns (baseline_setup)."""
    labels = json.load(open(os.path.join(prep["tokens"], "label_map.json")))["labels"]
    accuracies, wall = [], 0.0
    for k in range(streams):
        b = FT.baseline_setup(prep["splits"], prep["model_dir"], labels, FT.RECIPE, seed + k * STREAM_OFFSET, trim=trim)
        examples, seconds, cpu = FT.baseline_chunk(b, b["steps"])
        accuracies.append(FT.baseline_accuracy(b, prep["splits"]))
        wall += seconds
    return {"accuracy": round(statistics.mean(accuracies), 6), "stream_accuracies": accuracies,
            "examples": examples, "steps": b["steps"], "trimmed_padding": trim, "train_seconds": round(wall, 2),
            "loadavg": round(os.getloadavg()[0], 2),
            **({} if trim else {"examples_per_second": round(examples * streams / wall, 2)})}


def recipe_speed(prep: dict, seed: int, steps: int) -> dict:
    """The recipe as written (pad 128), STEPS optimizer steps: its examples/s, measured just before ours."""
    labels = json.load(open(os.path.join(prep["tokens"], "label_map.json")))["labels"]
    b = FT.baseline_setup(prep["splits"], prep["model_dir"], labels, FT.RECIPE, seed)
    FT.baseline_chunk(b, 2)  # this model's first steps (allocations) are not the recipe's pace
    examples, wall, cpu = FT.baseline_chunk(b, steps)
    return {"examples": examples, "examples_per_second": round(examples / wall, 2),
            "examples_per_cpu_second": round(examples / cpu, 2), "loadavg": round(os.getloadavg()[0], 2)}


def summary(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 4),
            "sd": round(statistics.stdev(values), 4) if len(values) > 1 else None, "n": len(values),
            "values": values}


def aggregate(runs: list[dict], arms: list[str]) -> dict:
    """Per arm: accuracy and examples/s over the seeds, the speed ratios, what our defaults chose."""
    agg = {}
    speeds = [r["recipe_speed"]["examples_per_second"] for r in runs if "recipe_speed" in r]
    for name in ["recipe"] + arms:
        got = [r[name] for r in runs if name in r]
        if not got:
            continue
        agg[name] = {"accuracy": summary([g["accuracy"] for g in got]),
                     "examples_per_second": (summary(speeds) if speeds else None) if name == "recipe"
                     else summary([g["examples_per_second_steps"] for g in got])}
        ratios = [g["ratio_vs_recipe"] for g in got if "ratio_vs_recipe" in g]
        if ratios:
            agg[name]["ratio_vs_recipe"] = summary(ratios)
        if name != "recipe":
            agg[name]["chosen"] = got[0]["chosen"]
    return agg


def fmt(s: dict | None) -> str:
    if not s:
        return "-"
    return f"{s['mean']:.4f}" + (f" ± {s['sd']:.4f}" if s["sd"] is not None else "") + f" (n={s['n']})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.finetune_sizes", description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--case", action="append", default=[], help="sst2:ROWS or fpb (repeatable; default sst2:4000)")
    ap.add_argument("--seeds", default="0,1,2", help="seeds for our runs (default 0,1,2)")
    ap.add_argument("--recipe-seeds", default=None,
                    help="seeds the recipe's accuracy runs for (default: --seeds; \"\": none, e.g. a recorded one)")
    ap.add_argument("--no-recipe", action="store_true", help="only our runs (exploring candidates)")
    ap.add_argument("--recipe-streams", type=int, default=2,
                    help="random streams the recipe runs per data sample, its accuracy their mean (default 2: one "
                         "stream's own noise is about a point at 4,000 rows)")
    ap.add_argument("--recipe-full-padding", action="store_true",
                    help="the recipe's accuracy epoch padded to 128 as written (default: all-padding columns "
                         "trimmed per batch, the same training up to float rounding, ~8x cheaper)")
    ap.add_argument("--speed-steps", type=int, default=24,
                    help="steps of the recipe as written (pad 128) timed before our runs of each seed (0: none)")
    ap.add_argument("--no-defaults", action="store_true", help="only the --variant runs, not our defaults")
    ap.add_argument("--variant", action="append", default=[], help="our stage with overrides, e.g. batch_size=16")
    ap.add_argument("--work", help="scratch directory (default: a temporary one)")
    args = ap.parse_args(argv)

    import torch

    cases = args.case or ["sst2:4000"]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    recipe_seeds = [] if args.no_recipe else [int(s) for s in (args.seeds if args.recipe_seeds is None
                                                                else args.recipe_seeds).split(",") if s.strip()]
    arms = ([] if args.no_defaults else [("ours", {})]) + [(f"variant:{v}", FT.parse_variant(v)) for v in args.variant]
    work = args.work or tempfile.mkdtemp(prefix="bench-sizes-")
    info = C.machine()
    threads = torch.get_num_threads()
    # warm-up, not measured: imports and oneDNN's first kernels for each shape
    warm = C.prepare_sst2(os.path.join(work, "warmup"), 300, 99)
    FT.run_ours(warm, work, "warmup-run", {})
    if recipe_seeds:
        labels = json.load(open(os.path.join(warm["tokens"], "label_map.json")))["labels"]
        FT.baseline_chunk(FT.baseline_setup(warm["splits"], warm["model_dir"], labels, FT.RECIPE, 0), 2)

    results = {}
    for case in cases:
        runs = []
        for seed in sorted(set(seeds) | set(recipe_seeds)):
            prep = prepare(case, os.path.join(work, case.replace(":", "-"), f"seed{seed}"), seed)
            row = {"seed": seed, "rows": prep["rows"]}
            if seed in recipe_seeds:
                torch.set_num_threads(threads)
                row["recipe"] = recipe_accuracy(prep, seed, not args.recipe_full_padding, args.recipe_streams)
                print(f"{case} seed {seed} recipe: acc {row['recipe']['accuracy']:.4f}", file=sys.stderr, flush=True)
            if seed in seeds and args.speed_steps and not args.no_recipe:
                torch.set_num_threads(threads)
                row["recipe_speed"] = recipe_speed(prep, seed, args.speed_steps)
                print(f"{case} seed {seed} recipe speed: {row['recipe_speed']['examples_per_second']} ex/s",
                      file=sys.stderr, flush=True)
            if seed in seeds:
                for name, overrides in arms:
                    torch.set_num_threads(threads)
                    t0 = time.perf_counter()
                    r = FT.run_ours(prep, os.path.join(work, case.replace(":", "-"), f"seed{seed}"),
                                    name.replace(":", "-").replace("=", "").replace(",", "-"),
                                    {"seed": seed, **overrides})
                    r["name"], r["wall_seconds"] = name, round(time.perf_counter() - t0, 2)
                    if "recipe_speed" in row:
                        r["ratio_vs_recipe"] = round(r["examples_per_second_steps"]
                                                     / row["recipe_speed"]["examples_per_second"], 2)
                    row[name] = r
                    print(f"{case} seed {seed} {name}: acc {r['accuracy']:.4f}, {r['examples_per_second_steps']} ex/s, "
                          f"chosen {r['chosen']}", file=sys.stderr, flush=True)
            runs.append(row)
            # after every seed: a run cut short by the clock still leaves what it measured
            results[case] = {"summary": aggregate(runs, [n for n, _ in arms]), "runs": runs}
            C.write_json(args.json, {"cases": results, "seeds": seeds, "recipe_seeds": recipe_seeds,
                                     "recipe": FT.RECIPE,
                                     "machine": {**info, "loadavg_end": [round(x, 2) for x in os.getloadavg()]}})
    rows = []
    for case, res in results.items():
        for name, s in res["summary"].items():
            rows.append((case, name, fmt(s["accuracy"]),
                         f"{s['examples_per_second']['mean']:.1f}" if s["examples_per_second"] else "-",
                         fmt(s.get("ratio_vs_recipe")).split(" (")[0] if s.get("ratio_vs_recipe") else "-",
                         s.get("chosen", "")))
    print(C.table(rows, ("case", "arm", "dev accuracy mean ± sd", "ex/s", "ratio", "chosen")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
