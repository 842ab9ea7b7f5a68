"""Evaluate: test-split metrics, bias checks, and the gate decision (DESIGN.md §3), for the candidate and,
when one exists, the current champion scored on the same test split in this run."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from domaintune.components.io import storage
from domaintune.components.core.errors import BadInput, fraction, positive
from domaintune.components.evaluation.gate import Thresholds, decide
from domaintune.components.inference.torch_backend import load_classifier
from domaintune.components.evaluation.metrics import classification_metrics, plot_confusion_matrix


@dataclass
class EvaluateParams:
    """Defaults live in the pipeline signature (pipelines/training_pipeline.py), their one source."""

    thresholds: Thresholds
    slice_columns: list[str]
    min_slice_size: int
    identity_terms: str
    flip_min_prob_change: float
    probe_max_texts: int = 2000  # test texts probed (sampled with a seed): bounds the probe's cost

    def __post_init__(self):
        positive("min-slice-size", self.min_slice_size)
        positive("probe-max-texts", self.probe_max_texts)
        fraction("flip-min-prob-change", self.flip_min_prob_change)


def score(classifier, frame: pd.DataFrame, labels: list[str]) -> tuple[dict, np.ndarray]:
    if list(classifier.labels) != list(labels):
        raise BadInput(f"model labels {classifier.labels} differ from the data's labels {labels}")
    probs = classifier.predict_proba(frame["text"].tolist())
    return classification_metrics(frame["label"].to_numpy(), probs.argmax(axis=1), labels), probs


def run_evaluate(model_dir: str, splits_dir: str, output_dir: str, p: EvaluateParams,
                 champion_dir: str | None = None, champion_info: dict | None = None) -> dict:
    """Writes evaluation.json (metrics, bias, gate), confusion_matrix.png, bias_report.md, predictions.parquet."""
    from domaintune.components.evaluation import bias

    test = pd.read_parquet(os.path.join(splits_dir, "test.parquet"))
    labels = storage.read_json(os.path.join(splits_dir, "label_map.json"))["labels"]
    classifier = load_classifier(model_dir)
    metrics, probs = score(classifier, test, labels)
    preds = probs.argmax(axis=1)

    slices = (bias.slice_metrics(test, test["label"].to_numpy(), preds, labels, p.slice_columns, p.min_slice_size)
              if p.slice_columns else None)
    terms = bias.load_identity_terms(p.identity_terms or None)
    probe = bias.counterfactual_probe(classifier, test["text"].tolist(), terms=terms, max_texts=p.probe_max_texts,
                                      min_prob_change=p.flip_min_prob_change)
    bias_result = {"slices": slices, "counterfactual": probe}

    champion = None
    if champion_dir:
        champion_metrics, _ = score(load_classifier(champion_dir), test, labels)
        champion = {**(champion_info or {}), "macro_f1": champion_metrics["macro_f1"],
                    "accuracy": champion_metrics["accuracy"]}
    gate = decide(metrics, champion, bias_result, p.thresholds)

    with storage.atomic_dir(output_dir) as tmp:
        plot_confusion_matrix(metrics["confusion_matrix"], labels, os.path.join(tmp, "confusion_matrix.png"))
        with open(os.path.join(tmp, "bias_report.md"), "w") as f:
            f.write(bias.render_bias_report({**bias_result, "gate": gate, "thresholds": asdict(p.thresholds)}))
        out = test[["text", "label"]].copy()
        out["predicted"] = preds
        out["confidence"] = probs.max(axis=1)
        out.to_parquet(os.path.join(tmp, "predictions.parquet"), index=False)
        result = {"params": {**asdict(p)}, "metrics": metrics, "bias": bias_result, "gate": gate,
                  "champion": champion}
        storage.write_json(os.path.join(tmp, "evaluation.json"), result)
    return result
