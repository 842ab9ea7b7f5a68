"""Register: one MLflow run per pipeline run, and — only for a candidate that passed the gate — a model
version with alias `challenger` (and `champion` with auto-promote when it beats the current one).
Writes the run's summary (the `summary.json` contract in docs/ARCHITECTURE.md).

The MLflow run holds every stage's effective parameters (read from the stages' reports), per-stage metrics,
the training and validation curves per logging step, the reports (data, tokens, training history,
evaluation with its plots and bias report, export) and the model card; its tags carry the lineage
(register/lineage.py). A registered version is a pyfunc model (registry/pyfunc.py) carrying the Hugging Face
directory (artifact `model`) and the ONNX export directory (artifact `onnx`); its description is the card.

Idempotent: a retried register step of the same pipeline run (same `pipeline_run_id`) finds the run and
version its first attempt made and creates neither again (register/versions.py).
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass

from domaintune.components.core.errors import require
from domaintune.components.evaluation.gate import should_promote
from domaintune.components.io import storage
from domaintune.components.register.lineage import lineage_tags, log_datasets, package_versions
from domaintune.components.register.run_log import log_curves, run_params, summary_metrics
from domaintune.components.register.versions import _existing, _logged_model, _register
from domaintune.components.registry import client as registry
from domaintune.components.registry import model_card
from domaintune.components.registry.client import DEFAULT_MODEL_NAME
from domaintune.components.tasks import task_of

LOGGED_TAG = "domaintune.logged"  # set once params, metrics, curves and reports are all logged
EXPORT_REPORT = "export_report.json"


@dataclass
class RegisterParams:
    model_name: str = DEFAULT_MODEL_NAME
    experiment_name: str = "domaintune"
    mlflow_tracking_uri: str = ""
    auto_promote: bool = False

    def __post_init__(self):
        require(bool(self.model_name.strip()), "--model-name must not be empty")
        require(bool(self.experiment_name.strip()), "--experiment-name must not be empty")


@dataclass
class RunInputs:
    model_dir: str
    data_report: str
    token_stats: str
    history: str
    evaluation_dir: str
    export_dir: str = ""  # the export stage's directory (model.onnx, model.int8.onnx, tokenizer, export_report.json)
    pretrain_plan: str = ""  # the plan task's report: the pretraining parameters, whether pretraining ran or not


@dataclass
class Reports:
    """Everything the stages reported, read once."""

    data: dict
    tokens: dict
    history: dict
    evaluation: dict
    export: dict | None
    plan: dict | None

    @property
    def pretrain(self) -> dict | None:
        # finetune carries the pretrain stage's report (pretrain.json of the adapted encoder) into its history
        return self.history.get("pretrain")

    @property
    def base_model(self) -> str:
        return str((self.tokens.get("params") or {}).get("base_model", ""))


def read_reports(inputs: RunInputs) -> Reports:
    export_path = os.path.join(inputs.export_dir, EXPORT_REPORT) if inputs.export_dir else ""
    return Reports(data=storage.read_json(inputs.data_report), tokens=storage.read_json(inputs.token_stats),
                   history=storage.read_json(inputs.history),
                   evaluation=storage.read_json(os.path.join(inputs.evaluation_dir, "evaluation.json")),
                   export=storage.read_json(export_path) if export_path and os.path.isfile(export_path) else None,
                   plan=storage.read_json(inputs.pretrain_plan) if inputs.pretrain_plan else None)


def all_params(r: Reports, p: RegisterParams) -> dict:
    """Every stage's effective parameters, in pipeline order, plus what stages resolved (precision_used)."""
    reports = {"data": r.data, "tokens": r.tokens, "plan": r.plan, "pretrain": r.pretrain, "finetune": r.history,
               "export": r.export, "evaluate": r.evaluation}
    return run_params(reports, asdict(p))


def log_run(mlflow, c, run_id: str, inputs: RunInputs, r: Reports, task, params: dict) -> None:
    """Parameters, curves, metrics, reports and datasets: once per MLflow run (a retry skips it)."""
    mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
    log_curves(c, run_id, r.history)
    mlflow.log_metrics(summary_metrics(task, r.evaluation, r.history, r.data, r.tokens, r.export, r.pretrain))
    for name, path in (("data_report", inputs.data_report), ("token_stats", inputs.token_stats),
                       ("history", inputs.history)):
        with open(path, encoding="utf-8") as f:  # KFP names its files without the extension: name them here
            mlflow.log_text(f.read(), f"reports/{name}.json")
    if r.pretrain:
        mlflow.log_dict(r.pretrain, "reports/pretrain_report.json")
    mlflow.log_artifacts(inputs.evaluation_dir, artifact_path="evaluation")
    if r.export is not None:
        for name in (EXPORT_REPORT, "export_report.md"):
            if os.path.isfile(os.path.join(inputs.export_dir, name)):
                mlflow.log_artifact(os.path.join(inputs.export_dir, name), artifact_path="export")
    log_datasets(mlflow, r.data)
    mlflow.set_tag(LOGGED_TAG, "true")


def log_model(mlflow, task, inputs: RunInputs) -> str:
    import warnings

    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from domaintune.components.registry.pyfunc import DomaintuneModel

    artifacts = {registry.HF_ARTIFACT: inputs.model_dir}
    if inputs.export_dir:
        artifacts[registry.ONNX_ARTIFACT] = inputs.export_dir
    columns_in, columns_out = task.pyfunc_signature()
    # MLflow nags about type hints and an input example; the explicit signature is the contract.
    warnings.filterwarnings("ignore", message=r".*(type hints|input example).*", category=UserWarning)
    return mlflow.pyfunc.log_model(
        name="model", python_model=DomaintuneModel(), artifacts=artifacts,
        signature=ModelSignature(inputs=Schema([ColSpec(t, n) for t, n in columns_in]),
                                 outputs=Schema([ColSpec(t, n) for t, n in columns_out])),
        pip_requirements=[f"{k}=={v}" for k, v in package_versions().items() if k != "python"],
    ).model_uri


def version_tags(task, r: Reports, run_id: str, lineage: dict, pipeline_run_id: str) -> dict:
    m = r.evaluation["metrics"]
    tags = {f"test_{k}": f"{m[k]:.4f}" for k in dict.fromkeys((task.primary_metric, task.quality_metric))}
    deployable = (r.export or {}).get("deployable")
    return {"pipeline_run_id": pipeline_run_id, "gate": "passed", **tags, "test_n": str(m["n"]),
            "task": task.name, "git_commit": lineage["git_commit"], "data_version": lineage["data_version"],
            "mlflow_run_id": run_id, "serving": f"onnx-{deployable}" if deployable else "pytorch"}


def promote(c, p: RegisterParams, gate: dict, version) -> list[str]:
    """`challenger` for every new version; `champion` too with auto-promote, for a candidate that beats the
    champion it was compared with — and only if that champion still holds the alias."""
    aliases = []
    if registry.move_challenger(c, p.model_name, version.version):
        aliases.append(registry.CHALLENGER)
    if should_promote(gate, p.auto_promote):
        compared = (gate.get("champion") or {}).get("version")
        current = registry.alias_version(c, p.model_name, registry.CHAMPION)
        if (int(current.version) if current else None) == compared:
            registry.set_alias(c, p.model_name, registry.CHAMPION, version.version)
            c.set_model_version_tag(p.model_name, version.version, "champion.promoted_by", "auto-promote")
            aliases.append(registry.CHAMPION)
        else:
            print(f"register: not auto-promoted: champion is now v{current.version if current else None}, "
                  f"evaluation compared with v{compared}", file=sys.stderr)
    return aliases


def build_summary(task, r: Reports, p: RegisterParams, run_id: str, version, aliases: list[str], lineage: dict,
                  pipeline_run_id: str) -> dict:
    ev, history, pre = r.evaluation, r.history, r.pretrain
    keep = lambda m: {k: v for k, v in m.items() if k not in ("labels", "confusion_matrix")}  # noqa: E731
    return {
        "status": "registered" if ev["gate"]["passed"] else "rejected",
        "task": task.name,
        "metrics": {"test": keep(ev["metrics"]), "test_pytorch": keep(ev.get("metrics_pytorch") or ev["metrics"]),
                    "validation": history["validation"], "scored": ev.get("scored")},
        "bias": ev.get("bias"),
        "gate": ev["gate"],
        "baselines": ev.get("baselines"),
        "calibration": {k: v for k, v in (ev.get("calibration") or {}).items() if not k.startswith("bins_")} or None,
        "ood": ev.get("ood"),
        "export": r.export,
        "data": {"rows": r.data["rows"], "labels": r.data["labels"], "leakage": r.data.get("leakage")},
        "training": {k: history.get(k) for k in ("train_seconds", "examples_per_second", "epochs_run",
                                                 "global_steps", "stopped_early", "parameters")}
                    | {"precision": history["params"]["precision_used"], "max_length": history["params"].get("max_length"),
                       "batch_size": history["params"].get("batch_size"),
                       "batch_size_chosen_for": ((history.get("chosen_for_data_size") or {}).get("batch_size")
                                                 or {}).get("train_rows")},
        "registry": {"tracking_uri": registry.tracking_uri(p.mlflow_tracking_uri), "experiment": p.experiment_name,
                     "run_id": run_id, "model_name": p.model_name,
                     "version": int(version.version) if version is not None else None, "aliases": aliases},
        "pretrain": ({"perplexity": {k: (pre.get("perplexity") or {}).get(k) for k in ("before", "after", "relative_change")},
                      "corpus": pre.get("corpus"), "steps": (pre.get("training") or {}).get("steps")} if pre else None),
        "lineage": {k: v for k, v in lineage.items() if not k.startswith("mlflow.")},
        "pipeline_run_id": pipeline_run_id,
        "task_card": task.card_context(r.data["labels"], ev["metrics"], ev.get("metrics_pytorch")),
    }


def run_register(inputs: RunInputs, summary_path: str, p: RegisterParams, pipeline_run_id: str = "") -> dict:
    import mlflow

    task = task_of(inputs.model_dir)
    r = read_reports(inputs)
    gate, params = r.evaluation["gate"], all_params(r, p)
    lineage = lineage_tags(r.data, pipeline_run_id, r.base_model)
    uri = registry.tracking_uri(p.mlflow_tracking_uri)
    registry.check_server(uri)  # a server that is down: one line in seconds, before anything is logged
    with registry.reachable(uri, "while registering"):
        summary, card = _log_and_register(mlflow, inputs, r, task, p, gate, params, lineage, pipeline_run_id)

    summary["artifacts"] = {"model": inputs.model_dir, "evaluation": inputs.evaluation_dir,
                            "data_report": inputs.data_report, "history": inputs.history,
                            "export": inputs.export_dir or None}
    summary["model_card"] = card
    os.makedirs(os.path.dirname(os.path.abspath(summary_path)) or ".", exist_ok=True)
    storage.write_json(summary_path, summary)
    return summary


def _log_and_register(mlflow, inputs: RunInputs, r: Reports, task, p: RegisterParams, gate: dict, params: dict,
                      lineage: dict, pipeline_run_id: str) -> tuple[dict, str]:
    c = registry.client(p.mlflow_tracking_uri)
    experiment_id = registry.experiment_id(c, p.experiment_name)
    prior_run, prior_version = _existing(c, experiment_id, p.model_name, pipeline_run_id)

    with mlflow.start_run(run_id=prior_run.info.run_id if prior_run else None, experiment_id=experiment_id,
                          run_name=None if prior_run else (pipeline_run_id or None),
                          tags=None if prior_run else {"pipeline_run_id": pipeline_run_id}) as run:
        run_id = run.info.run_id
        if prior_run is None or prior_run.data.tags.get(LOGGED_TAG) != "true":
            log_run(mlflow, c, run_id, inputs, r, task, params)
        mlflow.set_tags({**lineage, "model_name": p.model_name, "task": task.name,
                         "gate": "passed" if gate["passed"] else "rejected",
                         "gate.reasons": "; ".join(gate["reasons"])[:5000],
                         "export.deployable": (r.export or {}).get("deployable", "not exported"),
                         "export.int8_files": ",".join((r.export or {}).get("int8_files") or []),
                         "pretrained": str(r.pretrain is not None).lower()})
        version, aliases = prior_version, []
        if gate["passed"] and version is None:
            logged = _logged_model(c, experiment_id, run_id)
            model_uri = logged.model_uri if logged is not None else log_model(mlflow, task, inputs)
            version = _register(c, model_uri, run_id, p.model_name,
                                version_tags(task, r, run_id, lineage, pipeline_run_id), pipeline_run_id)
        if version is not None:
            aliases = promote(c, p, gate, version)
        summary = build_summary(task, r, p, run_id, version, aliases, lineage, pipeline_run_id)
        card = model_card.render_model_card({**summary, "parameters": params}, data_report=r.data, lineage=lineage)
        mlflow.log_text(card, "model_card.md")
        if version is not None:
            c.update_model_version(p.model_name, version.version, description=model_card.description(card))
    return summary, card
