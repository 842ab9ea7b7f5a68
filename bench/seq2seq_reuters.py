"""Headline generation on Reuters-21578 (../shared/data/reuters21578_corpus/train.txt, one `TITLE. body` document
per line): the upper-case title before the first ". " is the target, the body the source. A seeded 10% of the
documents is held out; the model (BERT2BERT-share from the packaged MiniLM, the seq2seq task's default)
trains on a sample of the rest through the stages, and is scored on a sample of the held-out documents beside
the lead-1 baseline on the same rows: ROUGE, a paired bootstrap interval of the ROUGE-L difference, training
examples/s, and (with --export) the export's parity, int8 ROUGE-L and greedy latency PyTorch vs ONNX vs int8.

    python -m bench.seq2seq_reuters --export --json bench/results/seq2seq_reuters.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile

from bench._common import HERE, write_json
from bench._seq2seq import score, train_once

CORPUS = os.path.abspath(os.path.join(HERE, "..", "..", "shared", "data", "reuters21578_corpus", "train.txt"))


def headline_pairs(path: str) -> list[dict]:
    """(body, headline) of every document whose title is upper case, 2-20 words, with a body of 20+ words."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            title, sep, body = line.strip().partition(". ")
            if sep and title == title.upper() and re.search(r"[A-Z]", title) and 2 <= len(title.split()) <= 20 \
                    and len(body.split()) >= 20:
                pairs.append({"text": body, "summary": title})
    return pairs


def split_documents(pairs: list[dict], seed: int, train_docs: int, eval_docs: int, val_docs: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pairs))
    held = order[: len(pairs) // 10]  # the seeded 10% held out; everything scored comes from it
    rest = order[len(pairs) // 10:]
    pick = lambda idx, n: [pairs[i] for i in idx[:n]]  # noqa: E731
    return pick(rest, train_docs), pick(rest[train_docs:], val_docs), pick(held, eval_docs), len(held)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-docs", type=int, default=10000)
    ap.add_argument("--val-docs", type=int, default=100)
    ap.add_argument("--eval-docs", type=int, default=400)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--max-length", type=int, default=64, help="source tokens: the headline's facts are in the lead")
    ap.add_argument("--max-target-length", type=int, default=24)
    ap.add_argument("--learning-rate", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--export", action="store_true", help="also export and measure ONNX parity, int8 and latency")
    ap.add_argument("--work", default="", help="work directory; one holding a trained model/ and history.json "
                                               "from an earlier run of the same arguments is scored again, not retrained")
    ap.add_argument("--json", required=True)
    args = ap.parse_args(argv)
    if not os.path.isfile(CORPUS):
        sys.exit(f"needs {CORPUS}")

    pairs = headline_pairs(CORPUS)
    train, val, test, held = split_documents(pairs, args.seed, args.train_docs, args.eval_docs, args.val_docs)
    work = args.work or tempfile.mkdtemp(prefix="seq2seq_reuters_")
    history, stats = train_once(work, train, val, test, base_model="", seed=args.seed, epochs=args.epochs,
                                max_length=args.max_length, max_target_length=args.max_target_length,
                                learning_rate=args.learning_rate)
    result = {"args": vars(args), "documents": {"usable": len(pairs), "held_out": held, "train": len(train),
                                                "validation": len(val), "scored": len(test)},
              **score(work, history, stats, args.export)}
    write_json(args.json, result)
    print(json.dumps({k: result[k] for k in ("rouge", "baselines", "margins", "training")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
