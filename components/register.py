"""Register: one MLflow run per pipeline run (params, metrics, curves, reports), and — only for a
candidate that passed the gate — a model version with alias `challenger` (and `champion` with
auto-promote when it beats the current one). Writes the run's summary (DESIGN.md §4)."""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass

from domaintune.components import registry, storage
from domaintune.components.errors import require

PACKAGES = ("domaintune", "torch", "transformers", "peft", "datasets", "kfp", "mlflow", "onnxruntime")


@dataclass
class RegisterParams:
    model_name: str
    mlflow_tracking_uri: str
    experiment_name: str
    auto_promote: bool
    pipeline_run_id: str
    base_model: str

    def __post_init__(self):
        require(bool(self.model_name.strip()), "--model-name must not be empty")


@dataclass
class RunInputs:
    model_dir: str
    data_report: str
    token_stats: str
    history: str
    evaluation_dir: str
    export_report: str = ""


def flat_params(reports: dict) -> dict:
    params = {}
    for stage, report in reports.items():
        for key, value in (report or {}).get("params", {}).items():
            if isinstance(value, dict):
                params.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                params[key] = ",".join(map(str, value)) if isinstance(value, list) else value
    return params


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def log_curves(mlflow, history: dict) -> None:
    """Training and validation curves per logging step, so the MLflow UI plots them."""
    for entry in history.get("log_history", []):
        step = int(entry.get("step", 0))
        for key, value in entry.items():
            if key in ("step", "epoch") or not isinstance(value, (int, float)):
                continue
            name = key.replace("eval_", "validation_") if key.startswith("eval_") else f"train_{key}"
            mlflow.log_metric(name, float(value), step=step)


def summary_metrics(evaluation: dict, history: dict, data: dict) -> dict:
    m = evaluation["metrics"]
    out = {"test_accuracy": m["accuracy"], "test_macro_f1": m["macro_f1"], "test_n": m["n"],
           "validation_accuracy": history["validation"]["accuracy"],
           "validation_macro_f1": history["validation"]["macro_f1"],
           "train_seconds": history["train_seconds"], "train_examples_per_second": history["examples_per_second"]}
    out.update({f"test_f1_{label}": v["f1"] for label, v in m["per_class"].items()})
    out.update({f"rows_{split}": n for split, n in data["rows"].items()})
    probe = (evaluation.get("bias") or {}).get("counterfactual") or {}
    if probe.get("flip_rate") is not None:
        out["bias_flip_rate"] = probe["flip_rate"]
    slices = (evaluation.get("bias") or {}).get("slices") or {}
    if slices.get("max_slice_gap") is not None:
        out["bias_max_slice_gap"] = slices["max_slice_gap"]
    return {k: float(v) for k, v in out.items() if v is not None}


def _existing(c, experiment_id: str, model_name: str, pipeline_run_id: str):
    """A retried register step finds the run and version its first attempt made (idempotent)."""
    if not pipeline_run_id:
        return None, None
    runs = c.search_runs([experiment_id], f"tags.pipeline_run_id = '{pipeline_run_id}'", max_results=1)
    versions = c.search_model_versions(f"name = '{model_name}' and tags.pipeline_run_id = '{pipeline_run_id}'")
    return (runs[0] if runs else None), (versions[0] if versions else None)


def run_register(inputs: RunInputs, summary_path: str, p: RegisterParams) -> dict:
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from domaintune.components.serving import DomaintuneClassifier

    data = storage.read_json(inputs.data_report)
    tokens = storage.read_json(inputs.token_stats)
    history = storage.read_json(inputs.history)
    evaluation = storage.read_json(os.path.join(inputs.evaluation_dir, "evaluation.json"))
    export = storage.read_json(inputs.export_report) if inputs.export_report else None
    gate = evaluation["gate"]

    c = registry.client(p.mlflow_tracking_uri)
    experiment = mlflow.set_experiment(p.experiment_name)
    prior_run, prior_version = _existing(c, experiment.experiment_id, p.model_name, p.pipeline_run_id)

    tags = {"pipeline_run_id": p.pipeline_run_id, "base_model": p.base_model,
            "data_version": data["params"].get("data_version", ""), "gate": "passed" if gate["passed"] else "rejected",
            **{f"data_sha256.{os.path.basename(k)}": v for k, v in data.get("data_sha256", {}).items()},
            **{f"version.{k}": v for k, v in package_versions().items()}}
    with mlflow.start_run(run_id=prior_run.info.run_id if prior_run else None,
                          run_name=None if prior_run else (p.pipeline_run_id or None)) as run:
        if prior_run is None:
            mlflow.log_params({k: str(v)[:6000] for k, v in flat_params(
                {"data": data, "tokens": tokens, "finetune": history, "evaluate": evaluation}).items()})
            log_curves(mlflow, history)
            mlflow.log_metrics(summary_metrics(evaluation, history, data))
            for path in (inputs.data_report, inputs.token_stats, inputs.history, inputs.export_report):
                if path:
                    mlflow.log_artifact(path, artifact_path="reports")
            mlflow.log_artifacts(inputs.evaluation_dir, artifact_path="evaluation")
        mlflow.set_tags({**tags, "gate.reasons": "; ".join(gate["reasons"])[:5000]})

        version, aliases = prior_version, []
        if gate["passed"] and version is None:
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=DomaintuneClassifier(),
                artifacts={"model": inputs.model_dir},
                signature=ModelSignature(inputs=Schema([ColSpec("string", "text")]),
                                         outputs=Schema([ColSpec("string", "label"), ColSpec("double", "score")])),
                pip_requirements=[f"{k}=={v}" for k, v in package_versions().items() if k != "python"],
            )
            version = mlflow.register_model(info.model_uri, p.model_name,
                                            tags={"pipeline_run_id": p.pipeline_run_id, "gate": "passed",
                                                  "test_macro_f1": f"{evaluation['metrics']['macro_f1']:.4f}"})
        if version is not None:
            c.set_registered_model_alias(p.model_name, registry.CHALLENGER, version.version)
            aliases.append(registry.CHALLENGER)
            if p.auto_promote and gate.get("beats_champion"):
                c.set_registered_model_alias(p.model_name, registry.CHAMPION, version.version)
                c.set_model_version_tag(p.model_name, version.version, "promoted_by", "auto-promote")
                aliases.append(registry.CHAMPION)
        run_id = run.info.run_id

    summary = {
        "status": "registered" if gate["passed"] else "rejected",
        "metrics": {"test": {k: evaluation["metrics"][k] for k in ("accuracy", "macro_f1", "n", "per_class")},
                    "validation": history["validation"]},
        "bias": evaluation.get("bias"),
        "gate": gate,
        "export": export,
        "data": {"rows": data["rows"], "labels": data["labels"], "leakage": data["leakage"]},
        "training": {k: history[k] for k in ("train_seconds", "examples_per_second", "epochs_run", "global_steps",
                                             "stopped_early", "parameters")} | {"precision": history["params"]["precision_used"]},
        "registry": {"tracking_uri": registry.tracking_uri(p.mlflow_tracking_uri), "experiment": p.experiment_name,
                     "run_id": run_id, "model_name": p.model_name,
                     "version": int(version.version) if version is not None else None, "aliases": aliases},
        "pipeline_run_id": p.pipeline_run_id,
        "artifacts": {"model": inputs.model_dir, "evaluation": inputs.evaluation_dir,
                      "data_report": inputs.data_report, "history": inputs.history},
    }
    os.makedirs(os.path.dirname(os.path.abspath(summary_path)) or ".", exist_ok=True)
    storage.write_json(summary_path, summary)
    return summary
