"""What the classification task adds to a run's evaluation beyond the test metrics (tasks/base.py, "quality
beyond the test metrics"): temperature-scaled confidence, the cheap baselines, out-of-domain sets.

Kept beside tasks/classification.py rather than in it (that module is near the 300-line limit of
tests/test_layout.py); `Classification` inherits it, so it is the classification task's own code.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from domaintune.components.core.errors import BadInput
from domaintune.components.tasks.base import Task

RELIABILITY_PLOT = "reliability_diagram.png"


def parse_label_map(value: str, labels: list[str]) -> dict[str, str]:
    """`--ood-label-map "Bearish=negative,Bullish=positive"` -> {"Bearish": "negative", ...}; every target must
    be one of the model's labels."""
    mapping = {}
    for item in (value or "").split(","):
        if not item.strip():
            continue
        source, sep, target = item.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise BadInput(f"--ood-label-map: {item.strip()!r} is not SOURCE=TARGET")
        if target.strip() not in labels:
            raise BadInput(f"--ood-label-map: {target.strip()!r} is not one of the model's labels {labels}")
        mapping[source.strip()] = target.strip()
    return mapping


class ClassificationQuality(Task):
    def calibrate(self, trainer, dataset):
        """Temperature scaling on the validation logits of the trained (best) model."""
        from domaintune.components.evaluation.calibration import fit_temperature

        out = trainer.predict(dataset)
        return fit_temperature(out.predictions, out.label_ids)

    def calibration_report(self, predictor, outputs, frame, directory):
        from domaintune.components.evaluation.calibration import plot_reliability, report

        result = report(np.asarray(outputs), frame["label"].to_numpy(), getattr(predictor, "temperature", 1.0))
        plot_reliability(result, os.path.join(directory, RELIABILITY_PLOT))
        return {**result, "plot": RELIABILITY_PLOT}

    def baselines(self, model_dir, splits, labels, metrics, p):
        """Frozen base-model embeddings + logistic regression, and TF-IDF + logistic regression
        (evaluation/baselines.py), at the fine-tuned model's max_length; `baseline_max_rows` 0 skips them."""
        from domaintune.components.evaluation.baselines import run_baselines
        from domaintune.components.inference.batching import saved_max_length
        from domaintune.components.io.base_models import resolve_model

        if p.baseline_max_rows == 0:
            return None
        return run_baselines(resolve_model(p.base_model, p.s3_endpoint_url), splits["train"], splits["validation"],
                             splits["test"], labels, metrics, self.primary_metric, saved_max_length(model_dir) or 128,
                             p.baseline_max_rows, p.seed)

    def read_ood(self, uri, labels, p):
        """The file's text and label columns (the training data's names), labels mapped through
        `ood_label_map`; a label neither mapped nor the model's is refused with its row."""
        from domaintune.components.io.tables import read_table
        from domaintune.components.tasks.classification import label_str

        frame, _ = read_table(uri, p.s3_endpoint_url)
        for column in (p.text_column, p.label_column):
            if column not in frame.columns:
                raise BadInput(f"--ood-data {uri}: no column {column!r} (columns: {', '.join(map(str, frame.columns))}); "
                               "out-of-domain files use the training data's --text-column/--label-column")
        mapping = parse_label_map(p.ood_label_map, labels)
        names = frame[p.label_column].map(label_str)
        mapped = names.map(lambda n: mapping.get(n, n))
        unknown = ~mapped.isin(labels)
        if unknown.any():
            row = int(np.flatnonzero(unknown.to_numpy())[0])
            hint = ("--ood-label-map does not cover it" if mapping else "map it onto them with --ood-label-map")
            raise BadInput(f"--ood-data {uri}: row {row + 1}: label {names.iloc[row]!r} is not one of the model's "
                           f"labels {labels} ({hint})")
        index = {label: i for i, label in enumerate(labels)}
        return pd.DataFrame({"text": frame[p.text_column].astype(str), "label": mapped.map(index).astype("int64"),
                             "label_name": mapped})
