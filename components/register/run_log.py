"""What the MLflow run holds: every stage's effective parameters (from the stages' reports), the training
and validation curves per logging step, and per-stage single-value metrics."""
from __future__ import annotations

import time

from domaintune.components.evaluation.quality import quality_metrics


def flat_params(reports: dict) -> dict:
    """The `params` of every stage report as one flat dict under the pipeline's own parameter names
    (nested dicts such as evaluate's `thresholds` contribute their keys; lists are comma-joined)."""
    params = {}

    def put(key, value):
        params[key] = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value

    for report in reports.values():
        for key, value in ((report or {}).get("params") or {}).items():
            if isinstance(value, dict):
                for k, v in value.items():
                    put(k, v)
            else:
                put(key, value)
    return params


def curve_metrics(history: dict) -> list[tuple[str, float, int]]:
    """(name, value, step) per logging step of the Trainer's log_history: train_loss, train_learning_rate,
    train_grad_norm and validation_* per evaluation during training. The Trainer's closing summary entry
    (mean train loss, runtime) is logged once at the last step as train_loss_mean / train_runtime / ...;
    the evaluation of the best model after training is not a curve point (it is validation_best_*)."""
    points = []
    trained = False
    for entry in history.get("log_history", []):
        step = int(entry.get("step", 0))
        final = "train_runtime" in entry
        for key, value in entry.items():
            if key in ("step", "epoch") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if key.startswith("eval_"):
                if trained:
                    continue
                name = "validation_" + key[len("eval_"):]
            elif final:
                name = "train_loss_mean" if key == "train_loss" else key if key.startswith("train_") else f"train_{key}"
            else:
                name = f"train_{key}"
            points.append((name, float(value), step))
        trained = trained or final
    return points


def log_curves(c, run_id: str, history: dict) -> int:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(name, value, now, step) for name, value, step in curve_metrics(history)]
    for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
        c.log_batch(run_id, metrics=metrics[start:start + 1000])
    return len(metrics)


def run_params(reports: dict, own: dict) -> dict:
    """Every stage's effective parameters as its report records them (`params`), plus register's own.
    Reports are read in pipeline order, so a later stage's value of a shared name (seed, precision) wins."""
    params = flat_params(reports)
    params.update(own)
    return params


def summary_metrics(task, evaluation: dict, history: dict, data: dict, tokens: dict | None = None,
                    export: dict | None = None, pretrain: dict | None = None) -> dict:
    """Per-stage metrics (single values; the curves are separate). Test metrics are the deployable's
    (`test_*`), the PyTorch model's beside them (`test_pytorch_*`)."""
    gate = evaluation.get("gate") or {}
    out = {f"test_{k}": v for k, v in task.summary_metrics(evaluation["metrics"]).items()}
    out.update({f"test_pytorch_{k}": v for k, v in
                task.summary_metrics(evaluation.get("metrics_pytorch") or evaluation["metrics"]).items()})
    out.update({f"validation_best_{k}": v for k, v in (history.get("validation") or {}).items()})
    out.update({"train_seconds": history["train_seconds"], "train_examples_per_second": history["examples_per_second"],
                "train_epochs_run": history.get("epochs_run"), "train_global_steps": history.get("global_steps"),
                "gate_passed": float(bool(gate.get("passed")))})
    out.update({f"data_rows_{split}": n for split, n in data["rows"].items()})
    for split, s in ((tokens or {}).get("splits") or {}).items():
        out[f"tokens_{split}_mean"] = s.get("tokens_mean")
        out[f"tokens_{split}_truncated_fraction"] = s.get("truncated_fraction")
    out.update(bias_metrics(evaluation.get("bias") or {}))
    out.update(quality_metrics(evaluation))  # baselines and lift, calibration ECE, out-of-domain drops
    champion = gate.get("champion") or {}
    out[f"champion_{task.primary_metric}"] = champion.get(task.primary_metric)
    out["champion_version"] = champion.get("version")
    ppl = (pretrain or {}).get("perplexity") or {}
    for key in ("before", "after", "relative_change"):
        out[f"pretrain_perplexity_{key}"] = ppl.get(key)
    out.update(export_metrics(export))
    return {k: float(v) for k, v in out.items() if _is_number(v)}


def bias_metrics(bias: dict) -> dict:
    probe = bias.get("counterfactual") or {}
    return {"bias_flip_rate": probe.get("flip_rate"), "bias_max_axis_flip_rate": probe.get("max_axis_flip_rate"),
            "bias_max_slice_gap": (bias.get("slices") or {}).get("max_slice_gap")}


def export_metrics(export: dict | None) -> dict:
    if not export:
        return {}
    out = {}
    for name, v in (export.get("metrics") or {}).items():
        out.update({f"export_{name}_{k}": x for k, x in v.items() if k != "n"})
    out["export_int8_quality_drop"] = export.get("int8_quality_drop")
    out["export_int8_deployable"] = float(export.get("deployable") == "int8")
    out.update({f"export_{k}": v for k, v in (export.get("sizes") or {}).items()})
    out["export_parity_max_abs_logit_diff"] = (export.get("parity") or {}).get("max_abs_logit_diff")
    for shape, r in ((export.get("latency") or {}).get("results") or {}).items():
        for backend, stats in r.items():
            if isinstance(stats, dict):
                out[f"export_latency_{shape}_{backend}_median_ms"] = stats.get("median_ms")
    return out


def _is_number(v) -> bool:
    if v is None:
        return False
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True
