"""Is fine-tuning worth it, can its confidence be trusted, how does it hold up elsewhere? `domaintune run` with
the defaults, and what every classification run now reports: the two baselines and the lift, their seconds
beside the finetune stage's, test ECE before/after temperature scaling, out-of-domain drops, the gate's
verdict and its template-only bias warnings.

    python -m bench.quality --json OUT --case tickets         # the embedded default (bundled tickets)
    python -m bench.quality --json OUT --case fpb [--ood-rows N] # Financial PhraseBank, OOD: Twitter financial news
    python -m bench.quality --json OUT --case sst2 --rows 4000

One case per call (each bounded to ~10 minutes on 2 cores). FPB and SST-2 use their dev files as validation
and test (no public labeled test split; dev numbers). The Twitter set gets FPB's column name (`sentence`) and
the label map 0=negative,1=positive,2=neutral (the dataset card: 0 Bearish, 1 Bullish, 2 Neutral).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.abspath(os.path.join(HERE, "..", "..", "shared", "data"))
TWITTER_MAP = "0=negative,1=positive,2=neutral"


def prepare(case: str, work: str, rows: int, seed: int, ood_rows: int = 0) -> list[str]:
    """The `domaintune run` flags of a case (its files written into WORK)."""
    if case == "tickets":
        return []
    if case == "fpb":
        fpb = os.path.join(DATA, "financial_phrasebank")
        tweets = pd.read_csv(os.path.join(DATA, "twitter_financial_news_sentiment", "train.csv"))
        if ood_rows:  # a seeded sample bounds the scoring cost
            tweets = tweets.sample(n=min(ood_rows, len(tweets)), random_state=seed)
        ood = os.path.join(work, "twitter_financial_news.csv")
        tweets.rename(columns={"text": "sentence"}).to_csv(ood, index=False)
        dev = os.path.join(fpb, "dev.csv")
        return ["--train-data", os.path.join(fpb, "train.csv"), "--validation-data", dev, "--test-data", dev,
                "--text-column", "sentence", "--ood-data", ood, "--ood-label-map", TWITTER_MAP]
    if case == "sst2":
        sst2 = os.path.join(DATA, "sst2")
        train = pd.read_csv(os.path.join(sst2, "train.tsv"), sep="\t", quoting=3)
        path = os.path.join(work, "train.tsv")
        train.sample(n=min(rows, len(train)), random_state=seed).to_csv(path, sep="\t", index=False)
        dev = os.path.join(sst2, "dev.tsv")
        return ["--train-data", path, "--validation-data", dev, "--test-data", dev, "--text-column", "sentence",
                "--epochs", "1"]
    raise SystemExit(f"unknown case {case!r}")


def measure(case: str, rows: int, seed: int, extra: list[str], ood_rows: int = 0) -> dict:
    work = tempfile.mkdtemp(prefix=f"bench-quality-{case}-")
    flags = prepare(case, work, rows, seed, ood_rows)
    cmd = [os.path.join(os.path.dirname(sys.executable), "domaintune"), "run", *flags,
           "--model-name", f"bench-quality-{case}", "--output", "out", "--export-latency-runs", "0", *extra]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    path = os.path.join(work, "out", "summary.json")
    if not os.path.isfile(path):
        raise SystemExit(f"{case}: run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    s = json.load(open(path))
    stages = {st["name"]: st.get("seconds") for st in s.get("stages", [])}
    b, c = s.get("baselines") or {}, s.get("calibration") or {}
    models = b.get("models") or {}
    finetune = next((v for k, v in stages.items() if k.startswith("finetune")), None)
    return {
        "case": case, "exit_code": proc.returncode, "status": s["status"], "load_average_start": os.getloadavg(),
        "test": {k: s["metrics"]["test"][k] for k in ("accuracy", "macro_f1", "n")},
        "baselines": {name: {k: m[k] for k in ("accuracy", "macro_f1", "lift", "seconds", "C")}
                      for name, m in models.items()},
        "lift_over_best": b.get("lift"), "best_baseline": b.get("best"), "baseline_rows_fit": b.get("rows_fit"),
        "finetune_stage_seconds": finetune, "evaluate_stage_seconds": stages.get("evaluate"),
        "frozen_embeddings_share_of_finetune": (models["frozen_embeddings"]["seconds"] / finetune
                                                if finetune and "frozen_embeddings" in models else None),
        "calibration": {k: c.get(k) for k in ("temperature", "ece_before", "ece_after", "n")},
        "ood": {name: {k: o[k] for k in ("n", "accuracy", "macro_f1", "drop")}
                for name, o in ((s.get("ood") or {}).get("sets") or {}).items()},
        "gate_reasons": s["gate"]["reasons"], "gate_warnings": s["gate"].get("warnings"),
        "stages": stages, "wall_seconds": s.get("wall_seconds"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--case", choices=("tickets", "fpb", "sst2"), required=True)
    ap.add_argument("--rows", type=int, default=4000, help="SST-2 training rows (a seeded sample)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ood-rows", type=int, default=0, help="FPB: score a seeded sample of the tweets (0: all 9,543)")
    ap.add_argument("extra", nargs="*", help="more `domaintune run` flags, after --")
    args = ap.parse_args()
    if args.case != "tickets" and not os.path.isdir(DATA):
        sys.exit(f"needs {DATA}")
    result = measure(args.case, args.rows, args.seed, args.extra, args.ood_rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
