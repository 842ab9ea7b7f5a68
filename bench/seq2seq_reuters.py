"""Headline generation on Reuters-21578 (../shared/data/reuters21578_corpus/train.txt, one `TITLE. body` document
per line): the upper-case title before the first ". " is the target, the body the source. A seeded 10% of the
documents is held out; the model (BERT2BERT-share from the packaged MiniLM, the seq2seq task's default)
trains on a sample of the rest through the stages, and is scored on a sample of the held-out documents beside
the lead-1 baseline on the same rows: ROUGE, a paired bootstrap interval of the ROUGE-L difference, training
examples/s, and (with --export) the export's parity, int8 ROUGE-L and greedy latency PyTorch vs ONNX vs int8.

    python -m bench.seq2seq_reuters --json bench/results/seq2seq_reuters.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time

from bench._common import HERE, machine, write_json

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


def write_jsonl(path: str, rows: list[dict]) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-docs", type=int, default=2000)
    ap.add_argument("--val-docs", type=int, default=100)
    ap.add_argument("--eval-docs", type=int, default=300)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--max-target-length", type=int, default=24)
    ap.add_argument("--learning-rate", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--export", action="store_true", help="also export and measure ONNX parity, int8 and latency")
    ap.add_argument("--json", required=True)
    args = ap.parse_args(argv)
    if not os.path.isfile(CORPUS):
        sys.exit(f"needs {CORPUS}")

    from domaintune.components.evaluation import rouge as R
    from domaintune.components.finetune.stage import FinetuneParams, run_finetune
    from domaintune.components.ingest.stage import IngestParams, run_ingest
    from domaintune.components.io.base_models import resolve_model
    from domaintune.components.tasks import get_task
    from domaintune.components.tokenize.stage import TokenizeParams, run_tokenize

    pairs = headline_pairs(CORPUS)
    train, val, test, held = split_documents(pairs, args.seed, args.train_docs, args.eval_docs, args.val_docs)
    work = tempfile.mkdtemp(prefix="seq2seq_reuters_")
    files = {n: write_jsonl(os.path.join(work, f"{n}.jsonl"), rows) for n, rows in
             (("train", train), ("validation", val), ("test", test))}
    base = resolve_model("")
    run_ingest(IngestParams(train_data=files["train"], validation_data=files["validation"], test_data=files["test"],
                            task="seq2seq", seed=args.seed), os.path.join(work, "splits"), os.path.join(work, "report.json"))
    stats = run_tokenize(os.path.join(work, "splits"), base, os.path.join(work, "tokens"),
                         TokenizeParams(max_length=args.max_length, max_target_length=args.max_target_length))
    history = run_finetune(os.path.join(work, "tokens"), base, os.path.join(work, "model"),
                           os.path.join(work, "history.json"),
                           FinetuneParams(epochs=args.epochs, batch_size=16, learning_rate=args.learning_rate,
                                          seed=args.seed, early_stopping_patience=2))
    task = get_task("seq2seq")
    import pandas as pd

    frame = pd.read_parquet(os.path.join(work, "splits", "test.parquet"))
    t0 = time.monotonic()
    predictions = task.load_predictor(os.path.join(work, "model")).predict(frame["text"].tolist())
    generate_seconds = time.monotonic() - t0
    metrics = task.score(predictions, frame, [])
    model_l = R.per_example(predictions, frame["summary"].tolist())["rougeL"]
    lead_l = R.per_example([R.lead(t) for t in frame["text"]], frame["summary"].tolist())["rougeL"]
    result = {
        "machine": machine(), "args": vars(args), "documents": {"usable": len(pairs), "held_out": held,
                                                               "train": len(train), "validation": len(val),
                                                               "scored": len(test)},
        "rouge": {k: metrics[k] for k in R.ROUGE_TYPES}, "rougeL_interval95": metrics["rougeL_interval95"],
        "lead_1": metrics["baselines"]["lead_1"],
        "rougeL_minus_lead": round(float((model_l - lead_l).mean()), 4),
        "rougeL_minus_lead_interval95": R.bootstrap_interval(model_l - lead_l),
        "lengths": metrics["lengths"], "faithfulness": {k: v for k, v in metrics["faithfulness"].items() if k != "worst"},
        "training": {**{k: history.get(k) for k in ("examples_per_second", "train_seconds", "epochs_run")},
                     "precision": (history.get("params") or {}).get("precision_used")},
        "validation_rougeL": history["validation"].get("rougeL"), "token_stats": stats["splits"]["train"],
        "pytorch_generation_seconds": round(generate_seconds, 2),
        "examples": [{"reference": r, "summary": s} for r, s in zip(frame["summary"][:8], predictions[:8])],
    }
    if args.export:
        from domaintune.components.export.stage import ExportParams, run_export

        e = run_export(os.path.join(work, "model"), os.path.join(work, "splits", "test.parquet"),
                       os.path.join(work, "onnx"), ExportParams(export_latency_runs=10))
        result["export"] = {k: e[k] for k in ("deployable", "reason", "parity", "metrics", "sizes", "latency", "seconds")}
    write_json(args.json, result)
    print(json.dumps({k: result[k] for k in ("rouge", "lead_1", "rougeL_minus_lead", "rougeL_minus_lead_interval95",
                                             "training")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
