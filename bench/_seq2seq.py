"""What the seq2seq benchmarks share: train a summarizer through the stages on given rows, score it beside the
extractive baselines on the same held-out rows (ROUGE, a paired bootstrap interval of the ROUGE-L margin), and
optionally export it (parity, per-file int8 ROUGE-L, greedy latency PyTorch vs ONNX vs int8).

A work directory that already holds `model/` and `history.json` is scored again, not retrained (a scoring or
export step can be rerun after a long training)."""
from __future__ import annotations

import json
import os
import time

from bench._common import machine


def write_jsonl(path: str, rows: list[dict]) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def train_once(work: str, train, val, test, *, base_model: str, seed: int, epochs: float, max_length: int,
               max_target_length: int, learning_rate: float, batch_size: int = 16):
    """(history, token stats) of the finetune stage on the rows; read back when WORK holds a trained model."""
    from domaintune.components.finetune.stage import FinetuneParams, run_finetune
    from domaintune.components.ingest.stage import IngestParams, run_ingest
    from domaintune.components.io.base_models import resolve_model
    from domaintune.components.tokenize.stage import TokenizeParams, run_tokenize

    if os.path.isfile(os.path.join(work, "history.json")) and os.path.isdir(os.path.join(work, "model")):
        with open(os.path.join(work, "history.json")) as f, open(os.path.join(work, "tokens", "token_stats.json")) as g:
            return json.load(f), json.load(g)
    os.makedirs(work, exist_ok=True)
    files = {n: write_jsonl(os.path.join(work, f"{n}.jsonl"), rows) for n, rows in
             (("train", train), ("validation", val), ("test", test))}
    base = resolve_model(base_model)
    run_ingest(IngestParams(train_data=files["train"], validation_data=files["validation"], test_data=files["test"],
                            task="seq2seq", seed=seed), os.path.join(work, "splits"), os.path.join(work, "report.json"))
    stats = run_tokenize(os.path.join(work, "splits"), base, os.path.join(work, "tokens"),
                         TokenizeParams(max_length=max_length, max_target_length=max_target_length))
    history = run_finetune(os.path.join(work, "tokens"), base, os.path.join(work, "model"),
                           os.path.join(work, "history.json"),
                           FinetuneParams(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                                          early_stopping_patience=2))
    return history, stats


def score(work: str, history: dict, stats: dict, export: bool) -> dict:
    """The trained model on the work directory's test split beside the baselines (the lead one for the margin)."""
    import pandas as pd

    from domaintune.components.evaluation import rouge as R
    from domaintune.components.tasks import get_task

    task = get_task("seq2seq")
    frame = pd.read_parquet(os.path.join(work, "splits", "test.parquet"))
    t0 = time.monotonic()
    predictions = task.load_predictor(os.path.join(work, "model")).predict(frame["text"].tolist())
    generate_seconds = time.monotonic() - t0
    metrics = task.score(predictions, frame, [])
    references = frame["summary"].tolist()
    model_l = R.per_example(predictions, references)["rougeL"]
    margins = {}
    for name in metrics["baselines"]:
        base = [R.lead(t, int(name.split("_")[1])) for t in frame["text"]] if name.startswith("lead_") else \
            [R.longest_turn(t) for t in frame["text"]]
        diff = model_l - R.per_example(base, references)["rougeL"]
        margins[name] = {"rougeL_minus_baseline": round(float(diff.mean()), 4),
                         "interval95": R.bootstrap_interval(diff)}
    result = {
        "machine": machine(), "rouge": {k: metrics[k] for k in R.ROUGE_TYPES},
        "rougeL_interval95": metrics["rougeL_interval95"], "baselines": metrics["baselines"], "margins": margins,
        "lengths": metrics["lengths"], "faithfulness": {k: v for k, v in metrics["faithfulness"].items() if k != "worst"},
        "training": {**{k: history.get(k) for k in ("examples_per_second", "train_seconds", "epochs_run")},
                     "precision": (history.get("params") or {}).get("precision_used")},
        "validation_rougeL": history["validation"].get("rougeL"), "token_stats": stats["splits"]["train"],
        "pytorch_generation_seconds": round(generate_seconds, 2), "scored": len(frame),
        "examples": [{"reference": r, "summary": s} for r, s in zip(references[:8], predictions[:8])],
    }
    if export:
        from domaintune.components.export.stage import ExportParams, run_export

        e = run_export(os.path.join(work, "model"), os.path.join(work, "splits", "test.parquet"),
                       os.path.join(work, "onnx"), ExportParams(export_latency_runs=10))
        result["export"] = {k: e.get(k) for k in ("deployable", "reason", "int8_files", "int8_per_file", "parity",
                                                  "metrics", "sizes", "latency", "seconds")}
    return result
