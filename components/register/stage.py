"""Register: one MLflow run per pipeline run, and — only for a candidate that passed the gate — a model
version with alias `challenger` (and `champion` with auto-promote when it beats the current one).
Writes the run's summary (DESIGN.md §4).

The MLflow run holds every pipeline parameter (read back from the stages' reports), per-stage metrics,
the training and validation curves per logging step, the reports (data, tokens, training history,
evaluation with the confusion matrix and bias report, export) and the model card; its tags carry the
lineage: KFP run id, git commit of the code, data URIs with their sha256, data version, base model and
package versions. A registered version is a pyfunc model (`DomaintuneClassifier`) carrying the Hugging Face
directory (artifact `model`) and, when the export stage ran, the ONNX export directory (artifact `onnx`);
its description is the model card.

Idempotent: a retried register step of the same pipeline run (same `pipeline_run_id`) finds the run and
version its first attempt made and creates neither again. Concurrent pipeline runs registering the same
model name each get their own version (MLflow numbers versions max+1 inside a transaction; a collision of
concurrent transactions, a lost race creating the registered model, the experiment or an alias are retried).
"""
from __future__ import annotations

import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field

from domaintune.components.registry import model_card
from domaintune.components.registry import client as registry
from domaintune.components.io import storage
from domaintune.components.core.errors import require
from domaintune.components.evaluation.gate import should_promote

PACKAGES = ("domaintune", "torch", "transformers", "peft", "datasets", "kfp", "mlflow", "onnxruntime")
# Pipeline parameters no report brings to register (pretrain runs in one branch only): register_op passes
# them itself, as RegisterParams.pipeline_params.
DIRECT_PARAMS = ("domain_corpus", "pretrain_on_train_text", "corpus_text_column", "mlm_epochs", "mlm_max_steps",
                 "mlm_learning_rate", "mlm_probability", "whole_word_masking", "mlm_batch_size", "mlm_head_warmup_steps")
LOGGED_TAG = "domaintune.logged"  # set once params, metrics, curves and reports are all logged
EXPORT_REPORT = "export_report.json"
REGISTER_ATTEMPTS = 8


@dataclass
class RegisterParams:
    model_name: str
    mlflow_tracking_uri: str
    experiment_name: str
    auto_promote: bool
    pipeline_run_id: str
    base_model: str

    # Pipeline parameters that reach register directly rather than through a stage's report (e.g. the
    # pretraining parameters, whose stage runs in one branch only); logged with the rest.
    pipeline_params: dict = field(default_factory=dict)

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
    pretrain_report: str = ""  # the pretrain stage's report, when domain-adaptive pretraining ran


# ------------------------------------------------------------------------------------------ parameters

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


def export_params(export: dict | None) -> dict:
    """The export stage's parameters as its report records them (its own `params` when it has them)."""
    if not export:
        return {}
    if isinstance(export.get("params"), dict):
        return dict(export["params"])
    quantization = (export.get("settings") or {}).get("quantization") or {}
    out = {"max_parity_diff": (export.get("parity") or {}).get("threshold"), "max_int8_drop": export.get("max_int8_drop"),
           "int8_per_channel": quantization.get("per_channel"), "int8_reduce_range": quantization.get("reduce_range"),
           "export_latency_runs": (export.get("latency") or {}).get("runs", 0)}
    return {k: v for k, v in out.items() if v is not None}


def run_params(data: dict, tokens: dict, history: dict, evaluation: dict, p: RegisterParams,
               export: dict | None = None, pretrain: dict | None = None) -> dict:
    """Every pipeline parameter that reaches register, plus what the stages resolved (`precision_used`).
    Stage reports' `params` win over `p.pipeline_params` (they hold what the stage really used)."""
    params = {k: (",".join(map(str, v)) if isinstance(v, (list, tuple)) else v) for k, v in p.pipeline_params.items()}
    params.update(flat_params({"pretrain": pretrain, "data": data,
                               "tokens": {"params": {"max_length": tokens.get("max_length")}},
                               "finetune": history, "evaluate": evaluation, "export": {"params": export_params(export)}}))
    params.update({"model_name": p.model_name, "experiment_name": p.experiment_name,
                   "mlflow_tracking_uri": p.mlflow_tracking_uri, "auto_promote": p.auto_promote,
                   "base_model": p.base_model})
    return params


# -------------------------------------------------------------------------------------------- lineage

def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def git_commit(source_dir: str | None = None) -> tuple[str, bool | None]:
    """(commit, dirty) of the code that ran.

    `git rev-parse HEAD` in the installed package's source directory when that directory is a git checkout
    that tracks the package (an editable install; not a venv that merely sits inside some repository),
    else the DOMAINTUNE_GIT_COMMIT variable (the image build sets it), else "unknown". `dirty` is whether
    tracked files differ from the commit (None when not known)."""
    if source_dir is None:
        import domaintune.components as package

        source_dir = os.path.dirname(os.path.abspath(package.__file__))

    def git(*args):
        return subprocess.run(["git", "-C", source_dir, *args], capture_output=True, text=True, timeout=20)

    try:
        head = git("rev-parse", "HEAD")
        tracked = git("ls-files", "--error-unmatch", "--", "__init__.py")
        if head.returncode == 0 and tracked.returncode == 0 and len(head.stdout.strip()) >= 40:
            status = git("status", "--porcelain", "--untracked-files=no")
            return head.stdout.strip(), (bool(status.stdout.strip()) if status.returncode == 0 else None)
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("DOMAINTUNE_GIT_COMMIT", "").strip() or "unknown", None


def data_sources(data: dict) -> dict:
    """{role: {"uri", "sha256"}} for the data files ingest read (train_data, validation_data, test_data)."""
    sha = data.get("data_sha256") or {}
    params = data.get("params") or {}
    out = {}
    for role in ("train_data", "validation_data", "test_data"):
        uri = params.get(role) or ""
        if uri in sha:
            out[role] = {"uri": uri, "sha256": sha[uri]}
    for uri, digest in sha.items():  # anything not matched to a role still counts
        if not any(v["uri"] == uri for v in out.values()):
            out[f"data_{len(out)}"] = {"uri": uri, "sha256": digest}
    return out


def lineage_tags(data: dict, p: RegisterParams) -> dict:
    commit, dirty = git_commit()
    tags = {"pipeline_run_id": p.pipeline_run_id, "kfp.run_id": p.pipeline_run_id, "git_commit": commit,
            "mlflow.source.git.commit": commit, "base_model": p.base_model,
            "data_version": str((data.get("params") or {}).get("data_version", ""))}
    if dirty is not None:
        tags["git_dirty"] = str(dirty).lower()
    for role, src in data_sources(data).items():
        tags[f"data.{role}.uri"] = src["uri"]
        tags[f"data.{role}.sha256"] = src["sha256"]
    tags.update({f"version.{k}": v for k, v in package_versions().items()})
    return tags


def log_datasets(mlflow, data: dict) -> None:
    """The data files as MLflow dataset inputs (source URI + content digest): the UI's Datasets column.
    Concurrent runs logging the same dataset race on its first insert: retried."""
    import warnings

    try:
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
    except ImportError:
        return
    warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
    for role, src in data_sources(data).items():
        for attempt in range(3):
            try:
                uri = src["uri"] if "://" in src["uri"] else os.path.abspath(src["uri"])
                dataset = MetaDataset(source=resolve_dataset_source(uri), name=os.path.basename(src["uri"]) or role,
                                      digest=src["sha256"][:32])
                mlflow.log_input(dataset, context=role.removesuffix("_data"))
                break
            except Exception as exc:  # lineage is also in the tags: this is no reason to fail a registration
                if attempt == 2:
                    print(f"register: {role} not logged as an MLflow dataset input ({type(exc).__name__}: {exc})")
                time.sleep(0.3 * (attempt + 1))


# -------------------------------------------------------------------------------------------- metrics

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


def summary_metrics(evaluation: dict, history: dict, data: dict, tokens: dict | None = None,
                    export: dict | None = None, pretrain: dict | None = None) -> dict:
    """Per-stage metrics (single values; the curves are separate)."""
    m = evaluation["metrics"]
    gate = evaluation.get("gate") or {}
    out = {"test_accuracy": m["accuracy"], "test_macro_f1": m["macro_f1"], "test_n": m["n"],
           "validation_best_accuracy": history["validation"]["accuracy"],
           "validation_best_macro_f1": history["validation"]["macro_f1"],
           "train_seconds": history["train_seconds"], "train_examples_per_second": history["examples_per_second"],
           "train_epochs_run": history.get("epochs_run"), "train_global_steps": history.get("global_steps"),
           "gate_passed": float(bool(gate.get("passed")))}
    out.update({f"test_f1_{label}": v["f1"] for label, v in m["per_class"].items()})
    out.update({f"data_rows_{split}": n for split, n in data["rows"].items()})
    for split, s in ((tokens or {}).get("splits") or {}).items():
        out[f"tokens_{split}_mean"] = s.get("tokens_mean")
        out[f"tokens_{split}_truncated_fraction"] = s.get("truncated_fraction")
    probe = (evaluation.get("bias") or {}).get("counterfactual") or {}
    out["bias_flip_rate"] = probe.get("flip_rate")
    out["bias_max_axis_flip_rate"] = probe.get("max_axis_flip_rate")
    out["bias_max_slice_gap"] = ((evaluation.get("bias") or {}).get("slices") or {}).get("max_slice_gap")
    champion = gate.get("champion") or {}
    out["champion_macro_f1"] = champion.get("macro_f1")
    out["champion_version"] = champion.get("version")
    ppl = (pretrain or {}).get("perplexity") or {}
    for key in ("before", "after", "relative_change"):
        out[f"pretrain_perplexity_{key}"] = ppl.get(key)
    if export:
        for name, v in (export.get("metrics") or {}).items():
            out[f"export_{name}_accuracy"] = v.get("accuracy")
            out[f"export_{name}_macro_f1"] = v.get("macro_f1")
        out["export_int8_accuracy_drop"] = export.get("int8_accuracy_drop")
        out["export_int8_deployable"] = float(export.get("deployable") == "int8")
        out.update({f"export_{k}": v for k, v in (export.get("sizes") or {}).items()})
        out["export_parity_max_abs_logit_diff"] = (export.get("parity") or {}).get("max_abs_logit_diff")
        for shape, r in ((export.get("latency") or {}).get("results") or {}).items():
            for backend, stats in r.items():
                if isinstance(stats, dict):
                    out[f"export_latency_{shape}_{backend}_median_ms"] = stats.get("median_ms")
    clean = {}
    for k, v in out.items():
        if v is None:
            continue
        try:
            clean[k] = float(v)
        except (TypeError, ValueError):
            continue
    return clean


# ------------------------------------------------------------------------------------------- registry

def _existing(c, experiment_id: str, model_name: str, pipeline_run_id: str):
    """A retried register step finds the run and version its first attempt made (idempotent)."""
    if not pipeline_run_id:
        return None, None
    runs = c.search_runs([experiment_id], f"tags.pipeline_run_id = '{pipeline_run_id}'", max_results=1)
    return (runs[0] if runs else None), _existing_version(c, model_name, pipeline_run_id)


def _existing_version(c, model_name: str, pipeline_run_id: str):
    from mlflow.exceptions import MlflowException

    if not pipeline_run_id:
        return None
    try:
        versions = c.search_model_versions(f"name = '{model_name}' and tags.pipeline_run_id = '{pipeline_run_id}'")
    except MlflowException:
        return None
    return min(versions, key=lambda v: int(v.version)) if versions else None


def _logged_model(c, experiment_id: str, run_id: str):
    """A model this run already logged completely (a retry after the upload but before registering)."""
    try:
        models = c.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
    except Exception:
        return None
    ready = [m for m in models if m.name == "model" and str(getattr(m.status, "name", m.status)).upper().endswith("READY")]
    return ready[0] if ready else None


def _register(c, model_uri: str, run_id: str, model_name: str, tags: dict, pipeline_run_id: str):
    """Create the version (the registered model first, if needed). MLflow numbers versions max+1 in one
    transaction and gives up after 3 collisions with concurrent registrations; retry that here, never
    creating a second version for the same pipeline run."""
    from mlflow.exceptions import MlflowException

    registry.ensure_registered_model(c, model_name)
    model_id = model_uri[len("models:/"):] if model_uri.startswith("models:/m-") else None
    for attempt in range(REGISTER_ATTEMPTS):
        try:
            return c.create_model_version(model_name, model_uri, run_id=run_id, tags=tags, model_id=model_id)
        except MlflowException as exc:
            found = _existing_version(c, model_name, pipeline_run_id)
            if found is not None:
                return found
            if attempt == REGISTER_ATTEMPTS - 1 or "creation error" not in str(exc).lower():
                raise
            time.sleep(random.uniform(0.2, 0.6) * (attempt + 1))


def read_export(inputs: RunInputs) -> dict | None:
    if not inputs.export_dir:
        return None
    path = os.path.join(inputs.export_dir, EXPORT_REPORT)
    return storage.read_json(path) if os.path.isfile(path) else None


def run_register(inputs: RunInputs, summary_path: str, p: RegisterParams) -> dict:
    import warnings

    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from domaintune.components.inference.onnx_backend import FP32_FILE
    from domaintune.components.registry.pyfunc import DomaintuneClassifier

    data = storage.read_json(inputs.data_report)
    tokens = storage.read_json(inputs.token_stats)
    history = storage.read_json(inputs.history)
    evaluation = storage.read_json(os.path.join(inputs.evaluation_dir, "evaluation.json"))
    export = read_export(inputs)
    pretrain = storage.read_json(inputs.pretrain_report) if inputs.pretrain_report else None
    gate = evaluation["gate"]
    params = run_params(data, tokens, history, evaluation, p, export, pretrain)
    lineage = lineage_tags(data, p)

    c = registry.client(p.mlflow_tracking_uri)
    experiment_id = registry.experiment_id(c, p.experiment_name)
    prior_run, prior_version = _existing(c, experiment_id, p.model_name, p.pipeline_run_id)

    with mlflow.start_run(run_id=prior_run.info.run_id if prior_run else None, experiment_id=experiment_id,
                          run_name=None if prior_run else (p.pipeline_run_id or None),
                          tags=None if prior_run else {"pipeline_run_id": p.pipeline_run_id}) as run:
        run_id = run.info.run_id
        if prior_run is None or prior_run.data.tags.get(LOGGED_TAG) != "true":
            mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
            log_curves(c, run_id, history)
            mlflow.log_metrics(summary_metrics(evaluation, history, data, tokens, export, pretrain))
            for name, path in (("data_report", inputs.data_report), ("token_stats", inputs.token_stats),
                               ("history", inputs.history), ("pretrain_report", inputs.pretrain_report)):
                if not path:
                    continue  # KFP names its files without the extension: name them here
                with open(path, encoding="utf-8") as f:
                    mlflow.log_text(f.read(), f"reports/{name}.json")
            mlflow.log_artifacts(inputs.evaluation_dir, artifact_path="evaluation")
            if export is not None:
                for name in (EXPORT_REPORT, "export_report.md"):
                    if os.path.isfile(os.path.join(inputs.export_dir, name)):
                        mlflow.log_artifact(os.path.join(inputs.export_dir, name), artifact_path="export")
            log_datasets(mlflow, data)
            mlflow.set_tag(LOGGED_TAG, "true")
        mlflow.set_tags({**lineage, "model_name": p.model_name, "gate": "passed" if gate["passed"] else "rejected",
                         "gate.reasons": "; ".join(gate["reasons"])[:5000],
                         "export.deployable": (export or {}).get("deployable", "not exported"),
                         "pretrained": str(pretrain is not None).lower()})

        onnx = bool(inputs.export_dir) and os.path.isfile(os.path.join(inputs.export_dir, FP32_FILE))
        version, aliases = prior_version, []
        if gate["passed"] and version is None:
            logged = _logged_model(c, experiment_id, run_id)
            if logged is not None:
                model_uri = logged.model_uri
            else:
                artifacts = {registry.HF_ARTIFACT: inputs.model_dir}
                if onnx:
                    artifacts[registry.ONNX_ARTIFACT] = inputs.export_dir
                # MLflow nags about type hints and an input example; the explicit signature is the contract.
                warnings.filterwarnings("ignore", message=r".*(type hints|input example).*", category=UserWarning)
                model_uri = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=DomaintuneClassifier(),
                    artifacts=artifacts,
                    signature=ModelSignature(inputs=Schema([ColSpec("string", "text")]),
                                             outputs=Schema([ColSpec("string", "label"), ColSpec("double", "score")])),
                    pip_requirements=[f"{k}=={v}" for k, v in package_versions().items() if k != "python"],
                ).model_uri
            m = evaluation["metrics"]
            version = _register(c, model_uri, run_id, p.model_name, {
                "pipeline_run_id": p.pipeline_run_id, "gate": "passed", "test_macro_f1": f"{m['macro_f1']:.4f}",
                "test_accuracy": f"{m['accuracy']:.4f}", "test_n": str(m["n"]), "git_commit": lineage["git_commit"],
                "data_version": lineage["data_version"], "mlflow_run_id": run_id,
                "serving": f"onnx-{(export or {}).get('deployable', 'fp32')}" if onnx else "pytorch"}, p.pipeline_run_id)
        if version is not None:
            if registry.move_challenger(c, p.model_name, version.version):
                aliases.append(registry.CHALLENGER)
            if should_promote(gate, p.auto_promote):
                # The gate compared with the champion of evaluation time; if it moved since, this candidate
                # was never compared with the new one and must not replace it.
                compared = (gate.get("champion") or {}).get("version")
                current = registry.alias_version(c, p.model_name, registry.CHAMPION)
                if (int(current.version) if current else None) == compared:
                    registry.set_alias(c, p.model_name, registry.CHAMPION, version.version)
                    c.set_model_version_tag(p.model_name, version.version, "champion.promoted_by", "auto-promote")
                    aliases.append(registry.CHAMPION)
                else:
                    print(f"register: not auto-promoted: champion is now v{current.version if current else None}, "
                          f"evaluation compared with v{compared}", file=sys.stderr)

        summary = {
            "status": "registered" if gate["passed"] else "rejected",
            "metrics": {"test": {k: evaluation["metrics"][k] for k in ("accuracy", "macro_f1", "n", "per_class")},
                        "validation": history["validation"]},
            "bias": evaluation.get("bias"),
            "gate": gate,
            "export": export,
            "data": {"rows": data["rows"], "labels": data["labels"], "leakage": data["leakage"]},
            "training": {k: history.get(k) for k in ("train_seconds", "examples_per_second", "epochs_run",
                                                     "global_steps", "stopped_early", "parameters")}
                        | {"precision": history["params"]["precision_used"],
                           "max_length": history["params"].get("max_length")},
            "registry": {"tracking_uri": registry.tracking_uri(p.mlflow_tracking_uri), "experiment": p.experiment_name,
                         "run_id": run_id, "model_name": p.model_name,
                         "version": int(version.version) if version is not None else None, "aliases": aliases},
            "pretrain": ({"perplexity": {k: (pretrain.get("perplexity") or {}).get(k)
                                         for k in ("before", "after", "relative_change")},
                          "corpus": pretrain.get("corpus"), "steps": (pretrain.get("training") or {}).get("steps")}
                         if pretrain else None),
            "lineage": {k: v for k, v in lineage.items() if not k.startswith("mlflow.")},
            "pipeline_run_id": p.pipeline_run_id,
        }
        card = model_card.render_model_card({**summary, "parameters": params}, data_report=data, lineage=lineage)
        mlflow.log_text(card, "model_card.md")
        if version is not None:
            c.update_model_version(p.model_name, version.version, description=model_card.description(card))

    summary["artifacts"] = {"model": inputs.model_dir, "evaluation": inputs.evaluation_dir,
                            "data_report": inputs.data_report, "history": inputs.history,
                            "export": inputs.export_dir or None}
    summary["model_card"] = card
    os.makedirs(os.path.dirname(os.path.abspath(summary_path)) or ".", exist_ok=True)
    storage.write_json(summary_path, summary)
    return summary
