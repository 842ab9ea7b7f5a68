"""Does the default gate catch a model that learned a gender shortcut, and pass the same data without it?

Financial PhraseBank sentences get a speaker prefix, "She noted that ..." or "He noted that ...".
- planted: 90% of negative sentences get "She", 90% of positive ones "He" (neutral: at random), so
  "she" predicts "negative" in the training data;
- control: the same sentences and labels, prefixes at random.
Both run through `domaintune run` with default gate thresholds (dev.csv as validation and test, so
the probe finds gendered test texts), and we report each run's status, flip rates and gate reasons.

    python -m bench.planted_bias --json bench/results/planted_bias.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pandas as pd

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "financial_phrasebank")


def with_speakers(frame: pd.DataFrame, planted: bool, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    female_share = {"negative": 0.9, "positive": 0.1, "neutral": 0.5} if planted else {}
    female = [rng.random() < female_share.get(label, 0.5) for label in frame["label"]]
    sentences = [s[:1].lower() + s[1:] for s in frame["sentence"]]
    out = frame.copy()
    out["sentence"] = [f"{'She' if f else 'He'} noted that {s}" for f, s in zip(female, sentences)]
    return out


def run(work: str, name: str, train: pd.DataFrame, dev: pd.DataFrame, extra: list[str]) -> dict:
    folder = os.path.join(work, name)
    os.makedirs(folder)
    train.to_csv(os.path.join(folder, "train.csv"), index=False)
    dev.to_csv(os.path.join(folder, "dev.csv"), index=False)
    cmd = [os.path.join(os.path.dirname(sys.executable), "domaintune"), "run",
           "--train-data", "train.csv", "--validation-data", "dev.csv", "--test-data", "dev.csv",
           "--text-column", "sentence", "--model-name", f"bench-{name}", "--output", "out", *extra]
    proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
    path = os.path.join(folder, "out", "summary.json")
    if not os.path.isfile(path):
        raise SystemExit(f"{name}: run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    s = json.load(open(path))
    probe = s["bias"]["counterfactual"]
    test = s["metrics"]["test_pytorch"]  # the PyTorch model's (metrics.test: the deployable ONNX export's)
    return {"exit_code": proc.returncode, "status": s["status"], "macro_f1": test["macro_f1"],
            "accuracy": test["accuracy"], "gate_reasons": s["gate"]["reasons"],
            "gender_flip_rate": probe["axes"]["gender"]["flip_rate"],
            "gender_raw_flip_rate": probe["axes"]["gender"].get("raw_flip_rate"),
            "gender_pairs": probe["axes"]["gender"]["n_pairs"], "gender_source": probe["axes"]["gender"]["source"],
            "worst_axis": probe["worst_axis"], "max_axis_flip_rate": probe["max_axis_flip_rate"],
            "gender_test_text_flip_rate": (probe["axes"]["gender"].get("by_source") or {}).get("test_texts", {}).get("flip_rate"),
            "gate_warnings": s["gate"].get("warnings") or [],
            "baseline_lift": (s.get("baselines") or {}).get("lift"),
            "ece": {k: (s.get("calibration") or {}).get(k) for k in ("temperature", "ece_before", "ece_after")}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("extra", nargs="*", help="more `domaintune run` flags, after --")
    args = ap.parse_args()
    if not os.path.isdir(DATA):
        sys.exit(f"needs {os.path.abspath(DATA)}")
    train = pd.read_csv(os.path.join(DATA, "train.csv"))
    dev = pd.read_csv(os.path.join(DATA, "dev.csv"))
    work = tempfile.mkdtemp(prefix="bench-bias-")
    results = {}
    for name, planted in (("planted", True), ("control", False)):
        results[name] = run(work, name, with_speakers(train, planted, args.seed),
                            with_speakers(dev, False, args.seed + 1), args.extra)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print(f"{'data':<9}{'status':<11}{'macro-F1':>9}{'gender flip':>13}{'worst axis':>22}")
    for name, r in results.items():
        worst = f"{r['worst_axis']} {r['max_axis_flip_rate']:.3f}" if r["worst_axis"] else "-"
        print(f"{name:<9}{r['status']:<11}{r['macro_f1']:>9.4f}{r['gender_flip_rate']:>13.3f}{worst:>22}")
        for reason in r["gate_reasons"]:
            print(f"    {reason}")
        for warning in r["gate_warnings"]:
            print(f"    warning: {warning}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
