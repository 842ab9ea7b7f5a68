"""Evaluate: the test-split metrics of the deployable that ships (the ONNX export the export stage chose,
int8 or fp32) with the PyTorch model's beside them, the bias checks on the deployable, and the gate decision
(evaluation/gate.py) against the current champion scored the same way on the same rows in this run.

The task (tasks/) scores, probes and plots; this stage only runs the steps.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields

from domaintune.components.core.errors import BadInput, fraction, positive, require
from domaintune.components.core.params import csv_list
from domaintune.components.evaluation.gate import Thresholds, decide
from domaintune.components.inference.onnx_backend import REPORT_FILE
from domaintune.components.io import storage
from domaintune.components.io.splits import labels_of, read_split
from domaintune.components.registry.client import DEFAULT_MODEL_NAME
from domaintune.components.tasks import task_of


@dataclass
class EvaluateParams(Thresholds):
    """The gate's thresholds (evaluation/gate.py, with the reasoning behind each default) and the bias checks'
    settings, plus where the champion is registered."""

    slice_columns: str = ""
    min_slice_size: int = 30
    identity_terms: str = ""
    flip_min_prob_change: float = 0.1
    model_name: str = DEFAULT_MODEL_NAME
    mlflow_tracking_uri: str = ""

    def __post_init__(self):
        super().__post_init__()
        positive("min-slice-size", self.min_slice_size)
        fraction("flip-min-prob-change", self.flip_min_prob_change)
        require(bool(self.model_name.strip()), "--model-name must not be empty")

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(**{f.name: getattr(self, f.name) for f in fields(Thresholds)})

    @property
    def slice_column_list(self) -> list[str]:
        return csv_list(self.slice_columns)

    @property
    def probe_max_texts(self) -> int:
        from domaintune.components.evaluation.bias import PROBE_MAX_TEXTS

        return PROBE_MAX_TEXTS


def scored(task, predictor, test, labels) -> tuple[dict, object]:
    if list(predictor.labels) != list(labels):
        raise BadInput(f"model labels {predictor.labels} differ from the data's labels {labels}")
    outputs = task.predict_frame(predictor, test)
    return task.score(outputs, test, labels), outputs


def export_summary(onnx_dir: str | None) -> dict | None:
    """What the gate's rule 4 reports: the export's int8-or-fp32 decision."""
    path = os.path.join(onnx_dir, REPORT_FILE) if onnx_dir else ""
    if not path or not os.path.isfile(path):
        return None
    report = storage.read_json(path)
    return {k: report.get(k) for k in ("deployable", "deployable_file", "int8_quality_drop", "max_int8_drop",
                                       "quality_metric")}


def score_champion(task, champion_dir: str | None, champion_info: dict | None, test, labels) -> dict | None:
    if not champion_dir:
        return None
    metrics, _ = scored(task, task.load_predictor(champion_dir), test, labels)
    return {**(champion_info or {}), **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}


def run_evaluate(model_dir: str, onnx_dir: str | None, splits_dir: str, output_dir: str, p: EvaluateParams,
                 champion_dir: str | None = None, champion_info: dict | None = None) -> dict:
    """Writes evaluation.json (metrics of the deployable and of the PyTorch model, bias, gate), the task's
    plots, bias_report.md and predictions.parquet. Without `onnx_dir` the PyTorch model is the deployable."""
    task = task_of(model_dir)
    test, labels = read_split(splits_dir, "test"), labels_of(splits_dir)
    deployable = task.load_predictor(onnx_dir or model_dir)
    metrics, outputs = scored(task, deployable, test, labels)
    metrics_pytorch = scored(task, task.load_predictor(model_dir), test, labels)[0] if onnx_dir else metrics
    bias_result = task.bias_checks(deployable, outputs, test, labels, p)
    champion = score_champion(task, champion_dir, champion_info, test, labels)
    export = export_summary(onnx_dir)
    gate = decide(metrics, champion, bias_result, p.thresholds, task.primary_metric, export,
                  task.gate_checks(metrics, p.thresholds), task_floor=task.quality_floor)

    with storage.atomic_dir(output_dir) as tmp:
        task.write_plots(metrics, labels, tmp)
        with open(os.path.join(tmp, "bias_report.md"), "w") as f:
            f.write(task.bias_report(bias_result, gate, asdict(p.thresholds)))
        task.prediction_table(test, outputs, labels).to_parquet(os.path.join(tmp, "predictions.parquet"), index=False)
        result = {"params": asdict(p), "task": task.name, "primary_metric": task.primary_metric,
                  "scored": f"onnx-{export['deployable']}" if export else "pytorch",
                  "metrics": metrics, "metrics_pytorch": metrics_pytorch, "bias": bias_result, "gate": gate,
                  "champion": champion, "export": export}
        storage.write_json(os.path.join(tmp, "evaluation.json"), result)
    return result
