"""Evaluate: the test-split metrics of the deployable that ships (the ONNX export the export stage chose,
int8 or fp32) with the PyTorch model's beside them, the bias checks on the deployable, and the gate decision
(evaluation/gate.py) against the current champion scored the same way on the same rows in this run.

The task (tasks/) scores, probes and plots; this stage only runs the steps.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields

from domaintune.components.core.errors import BadInput, fraction, non_negative, positive, require
from domaintune.components.core.params import csv_list
from domaintune.components.evaluation.fairness import check_bias_axes
from domaintune.components.evaluation.gate import Thresholds, decide
from domaintune.components.evaluation.quality import QUALITY_REPORT, render_quality_report
from domaintune.components.inference.onnx_backend import REPORT_FILE
from domaintune.components.io import storage
from domaintune.components.io.base_models import PACKAGED_MODEL
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
    # The baselines (tasks' `baselines`): the frozen base model (the pipeline's --base-model, not a DAPT
    # encoder) and TF-IDF, each fit on at most this many training rows (0: no baselines). 5,000 rows keep
    # the frozen-embedding pass to about one epoch of inference over the capped split.
    baseline_max_rows: int = 5000
    base_model: str = PACKAGED_MODEL
    s3_endpoint_url: str = ""
    seed: int = 42
    # Out-of-domain sets: labeled files with the training data's column names, labels mapped onto the
    # model's with ood_label_map ("Bearish=negative,Bullish=positive").
    ood_data: str = ""
    ood_label_map: str = ""
    text_column: str = "text"
    label_column: str = "label"

    def __post_init__(self):
        super().__post_init__()
        positive("min-slice-size", self.min_slice_size)
        fraction("flip-min-prob-change", self.flip_min_prob_change)
        require(bool(self.model_name.strip()), "--model-name must not be empty")
        non_negative("baseline-max-rows", self.baseline_max_rows, kind=int)
        non_negative("seed", self.seed, kind=int)
        for item in csv_list(self.ood_label_map):
            require("=" in item and all(x.strip() for x in item.split("=", 1)),
                    f"--ood-label-map: {item!r} is not SOURCE=TARGET")
        require(not self.ood_label_map.strip() or bool(self.ood_data.strip()),
                "--ood-label-map is given but --ood-data is empty")

    @property
    def ood_uris(self) -> list[str]:
        return csv_list(self.ood_data)

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


def score_champion(task, champion_dir: str | None, champion_info: dict | None, test, labels,
                   p: EvaluateParams) -> tuple[dict | None, dict | None]:
    """The champion's metrics and bias checks on the same rows (the gate's regression checks)."""
    if not champion_dir:
        return None, None
    predictor = task.load_predictor(champion_dir)
    metrics, outputs = scored(task, predictor, test, labels)
    summary = {**(champion_info or {}), **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
    return summary, task.bias_checks(predictor, outputs, test, labels, p)


def read_ood_sets(task, labels, p: EvaluateParams) -> dict:
    """name -> frame for each --ood-data file, read (and refused) before anything is scored."""
    frames = {}
    for k, uri in enumerate(p.ood_uris):
        frame = task.read_ood(uri, labels, p)
        if frame is None:
            raise BadInput(f"--ood-data: the {task.name} task has no out-of-domain evaluation")
        name = os.path.basename(uri.rstrip("/")) or uri
        frames[name if name not in frames else f"{k}:{name}"] = (uri, frame)
    return frames


def score_ood(task, predictor, ood_sets: dict, labels, metrics: dict) -> dict | None:
    """Each out-of-domain set's metrics and the drop of each headline metric vs the in-domain test split."""
    if not ood_sets:
        return None
    sets = {}
    for name, (uri, frame) in ood_sets.items():
        m, _ = scored(task, predictor, frame, labels)
        keep = {k: v for k, v in m.items() if isinstance(v, (int, float)) or k == "per_class"}
        drops = {f"{k}_drop": float(metrics[k] - m[k]) for k in (task.primary_metric, task.quality_metric)}
        sets[name] = {"uri": uri, **keep, **drops, "drop": drops[f"{task.primary_metric}_drop"]}
    return {"metric": task.primary_metric, "sets": sets}


def run_evaluate(model_dir: str, onnx_dir: str | None, splits_dir: str, output_dir: str, p: EvaluateParams,
                 champion_dir: str | None = None, champion_info: dict | None = None) -> dict:
    """Writes evaluation.json (metrics of the deployable and of the PyTorch model, bias, baselines,
    calibration, out-of-domain sets, gate), the task's plots, bias_report.md and predictions.parquet.
    Without `onnx_dir` the PyTorch model is the deployable."""
    task = task_of(model_dir)
    splits = {name: read_split(splits_dir, name) for name in ("train", "validation", "test")}
    test, labels = splits["test"], labels_of(splits_dir)
    ood_sets = read_ood_sets(task, labels, p)
    deployable = task.load_predictor(onnx_dir or model_dir)
    metrics, outputs = scored(task, deployable, test, labels)
    metrics_pytorch = scored(task, task.load_predictor(model_dir), test, labels)[0] if onnx_dir else metrics
    bias_result = task.bias_checks(deployable, outputs, test, labels, p)
    check_bias_axes(p.bias_axes, (bias_result.get("counterfactual") or {}).get("axes") or {})
    champion, champion_bias = score_champion(task, champion_dir, champion_info, test, labels, p)
    export = export_summary(onnx_dir)
    baselines = task.baselines(model_dir, splits, labels, metrics, p)
    ood = score_ood(task, deployable, ood_sets, labels, metrics)
    gate = decide(metrics, champion, bias_result, p.thresholds, task.primary_metric, export, champion_bias,
                  baselines, ood, task.gate_checks(metrics, p.thresholds), task_floor=task.quality_floor)

    with storage.atomic_dir(output_dir) as tmp:
        task.write_plots(metrics, labels, tmp)
        calibration = task.calibration_report(deployable, outputs, test, tmp)
        with open(os.path.join(tmp, "bias_report.md"), "w") as f:
            f.write(task.bias_report(bias_result, gate, asdict(p.thresholds)))
        task.prediction_table(test, outputs, labels).to_parquet(os.path.join(tmp, "predictions.parquet"), index=False)
        result = {"params": asdict(p), "task": task.name, "primary_metric": task.primary_metric,
                  "scored": f"onnx-{export['deployable']}" if export else "pytorch",
                  "metrics": metrics, "metrics_pytorch": metrics_pytorch, "bias": bias_result, "gate": gate,
                  "champion": champion, "champion_bias": champion_bias, "export": export,
                  "baselines": baselines, "calibration": calibration, "ood": ood}
        storage.write_json(os.path.join(tmp, "evaluation.json"), result)
        with open(os.path.join(tmp, QUALITY_REPORT), "w") as f:
            f.write(render_quality_report(result, tmp))
    return result
