"""Dialogue summarization on DialogSum dev (../shared/data/dialogsum/dev.jsonl, 500 dialogues; the official train
file is not in the mirror): a seeded split by dialogue into train / validation / scored rows, the summarizer
trained through the stages (from the packaged MiniLM, or --base-model, e.g. a summarizer trained by
bench.seq2seq_reuters: a warm start that has already learned to write English), and scored beside lead-N and
the longest turn on the same rows, with paired bootstrap intervals of the ROUGE-L margins.

    python -m bench.seq2seq_dialogsum --json bench/results/seq2seq_dialogsum.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from bench._common import HERE, write_json
from bench._seq2seq import score, train_once

DEV = os.path.abspath(os.path.join(HERE, "..", "..", "shared", "data", "dialogsum", "dev.jsonl"))


def dialogues(path: str, seed: int, train_n: int, val_n: int):
    import numpy as np

    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    pairs = [{"text": r["dialogue"], "summary": r["summary"]} for r in rows]
    order = np.random.default_rng(seed).permutation(len(pairs))
    pick = [pairs[i] for i in order]
    return pick[:train_n], pick[train_n:train_n + val_n], pick[train_n + val_n:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=350)
    ap.add_argument("--val", type=int, default=50)
    ap.add_argument("--base-model", default="", help="a local model directory (default: the packaged MiniLM)")
    ap.add_argument("--epochs", type=float, default=8.0)
    ap.add_argument("--max-length", type=int, default=256, help="source tokens (median dialogue: 184)")
    ap.add_argument("--max-target-length", type=int, default=64, help="summary tokens (90th percentile: 56)")
    ap.add_argument("--learning-rate", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--export", action="store_true")
    ap.add_argument("--work", default="")
    ap.add_argument("--json", required=True)
    args = ap.parse_args(argv)
    if not os.path.isfile(DEV):
        sys.exit(f"needs {DEV}")

    train, val, test = dialogues(DEV, args.seed, args.train, args.val)
    work = args.work or tempfile.mkdtemp(prefix="seq2seq_dialogsum_")
    history, stats = train_once(work, train, val, test, base_model=args.base_model, seed=args.seed,
                                epochs=args.epochs, max_length=args.max_length,
                                max_target_length=args.max_target_length, learning_rate=args.learning_rate)
    result = {"args": vars(args), "dialogues": {"train": len(train), "validation": len(val), "scored": len(test)},
              **score(work, history, stats, args.export)}
    write_json(args.json, result)
    print(json.dumps({k: result[k] for k in ("rouge", "baselines", "margins", "training")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
