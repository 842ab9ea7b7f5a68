"""MLflow tracking and registry access shared by the stages and the CLI (aliases, never stages).

A registered domaintune version is a pyfunc model whose `artifacts` hold the Hugging Face directory
(`model`) and, when the export stage ran, the ONNX export directory (`onnx`). MLflow stores each under
the *basename* of the directory it was logged from, so where they sit inside the model is read from the
model's `MLmodel` file, never assumed; and only the part that is needed is downloaded.
"""
from __future__ import annotations

import contextlib
import os
import random
import re
import time

from domaintune.components.core.errors import BadInput
from domaintune.components.registry.health import (  # noqa: F401 (the registry API stages use)
    CREDENTIAL_ENV, HEALTH_ATTEMPTS, HEALTH_TIMEOUT_S, HTTP_BOUNDS, bound_http_waits, check_server, connection_problem,
    is_remote, reachable, unavailable)

CHAMPION, CHALLENGER = "champion", "challenger"
DEFAULT_MODEL_NAME = "domaintune-classifier"
HF_ARTIFACT, ONNX_ARTIFACT = "model", "onnx"  # pyfunc artifact keys (DomaintuneClassifier.load_context)
MODEL_REF = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>[^/@]+))$")


def tracking_uri(uri: str = "") -> str:
    """Explicit parameter, else MLFLOW_TRACKING_URI, else MLflow's own local default (./mlflow.db), made
    absolute so every stage subprocess and `mlflow ui` in the same directory see the same store."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    return uri or f"sqlite:///{os.path.abspath('mlflow.db')}"


def client(uri: str = ""):
    import mlflow
    from mlflow import MlflowClient

    resolved = tracking_uri(uri)
    bound_http_waits()
    mlflow.set_tracking_uri(resolved)
    mlflow.set_registry_uri(resolved)
    return MlflowClient(tracking_uri=resolved, registry_uri=resolved)


def alias_version(c, model_name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if connection_problem(exc) is not None:  # a server that is down is not "no champion"
            raise
        return None  # no such model or alias yet


def _retry(fn, attempts: int = 6):
    """Call fn, retrying an MlflowException that a concurrent writer can cause (e.g. two runs creating the
    same alias at once: MLflow's select-then-insert loses the race with a unique violation); a missing
    model or version is not retried."""
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            return fn()
        except MlflowException as exc:
            if attempt == attempts - 1 or exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND",
                                                             "INVALID_PARAMETER_VALUE"):
                raise
            if connection_problem(exc) is not None:  # MLflow's HTTP client has already retried it (bounded)
                raise
            time.sleep(random.uniform(0.1, 0.4) * (attempt + 1))


def set_alias(c, model_name: str, alias: str, version) -> None:
    """Point ALIAS at VERSION (aliases only, never stages), safe against concurrent writers."""
    _retry(lambda: c.set_registered_model_alias(model_name, alias, str(version)))


def move_challenger(c, model_name: str, version) -> bool:
    """`challenger` marks the newest blessed version (tag gate=passed). Concurrent registrations each point
    it at the newest blessed version they can see and re-check after writing, so the alias converges on the
    newest even when a slower writer saw fewer versions; a retried register step of an older pipeline run
    never moves it back. Returns whether it ended on VERSION."""
    current = None
    for _ in range(10):
        blessed = [int(v.version) for v in c.search_model_versions(f"name = '{model_name}' and tags.gate = 'passed'")]
        newest = max(blessed + [int(version)])
        current = alias_version(c, model_name, CHALLENGER)
        if current is not None and int(current.version) == newest:
            break
        set_alias(c, model_name, CHALLENGER, newest)
    return current is not None and int(current.version) == int(version)


def experiment_id(c, name: str) -> str:
    """The experiment's id, created if missing. Not `mlflow.set_experiment`: when two processes create the
    experiment at once, the loser gets it back without it becoming the active experiment, and its run lands
    in `Default` (MLflow 3.17)."""
    from mlflow.exceptions import MlflowException

    for _ in range(3):
        found = c.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise BadInput(f"--experiment-name {name}: the MLflow experiment is deleted (restore it or pick another name)")
            return found.experiment_id
        try:
            return c.create_experiment(name)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
    raise BadInput(f"--experiment-name {name}: could not create or find the MLflow experiment")


def ensure_registered_model(c, model_name: str) -> None:
    """Create the registered model when it does not exist yet (a concurrent creator winning is fine)."""
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(model_name)
        return
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    try:
        c.create_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` -> (name, alias, version); anything else is bad input.
    Stage references (`models:/NAME/Production`) are refused: this project uses aliases only."""
    match = MODEL_REF.match(ref)
    if not match:
        raise BadInput(f"--model {ref}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    name, alias, version = match["name"], match["alias"], match["version"]
    if version is not None and not version.isdigit():
        raise BadInput(f"--model {ref}: {version!r} is not a version number (stages are not used; "
                       f"use models:/{name}@ALIAS or models:/{name}/N)")
    return name, alias, version


def resolve_version(c, ref: str):
    """The ModelVersion a `models:/` reference names (BadInput when there is none)."""
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_ref(ref)
    try:
        if alias is not None:
            return c.get_model_version_by_alias(name, alias)
        return c.get_model_version(name, version)
    except MlflowException as exc:
        raise BadInput(f"--model {ref}: {_first_line(exc)}") from None


def model_artifact_paths(c, mv, dest: str) -> dict[str, str]:
    """{artifact key: path inside the logged model} from the version's MLmodel (pyfunc `artifacts`)."""
    import mlflow
    import yaml

    base = f"models:/{mv.name}/{mv.version}"
    local = mlflow.artifacts.download_artifacts(f"{base}/MLmodel", dst_path=os.path.join(dest, "meta"))
    with open(local) as f:
        meta = yaml.safe_load(f) or {}
    artifacts = ((meta.get("flavors") or {}).get("python_function") or {}).get("artifacts") or {}
    return {key: spec["path"] for key, spec in artifacts.items() if isinstance(spec, dict) and spec.get("path")}


def download_part(c, mv, dest: str, prefer: tuple[str, ...]) -> tuple[str, str]:
    """Download only the first of the `prefer` artifacts the version has; returns (key, local dir)."""
    import mlflow

    paths = model_artifact_paths(c, mv, dest)
    for key in prefer:
        if key in paths:
            local = mlflow.artifacts.download_artifacts(f"models:/{mv.name}/{mv.version}/{paths[key]}",
                                                        dst_path=os.path.join(dest, key))
            return key, local
    raise BadInput(f"models:/{mv.name}/{mv.version}: not a domaintune model (its pyfunc artifacts are "
                   f"{sorted(paths) or 'none'}, expected {' or '.join(prefer)})")


def champion_version(uri: str, model_name: str) -> str:
    """The version number holding `champion` now, or "" when there is none. The pipeline resolves it once,
    before evaluation, and passes it to evaluate as a parameter: evaluate's cache key then names the champion
    it was compared with, so a rerun reuses the evaluation until the champion changes."""
    resolved = tracking_uri(uri)
    local = sqlite_alias(resolved, model_name, CHAMPION)
    if local is not None:
        return local
    check_server(resolved)
    with reachable(resolved, "looking up the champion"):
        version = alias_version(client(resolved), model_name, CHAMPION)
    return "" if version is None else str(version.version)


def sqlite_alias(uri: str, model_name: str, alias: str) -> str | None:
    """The version holding ALIAS read straight from a local SQLite store ("" when the store or the alias does
    not exist), or None when this shortcut does not apply and MLflow must answer (not a plain sqlite:/// file,
    no alias table yet, several workspaces). Importing MLflow takes ~3-5 s of a one-line task's start-up
    (the pipeline's `champion` task); this read takes milliseconds."""
    import sqlite3

    if not uri.startswith("sqlite:///") or "?" in uri or os.environ.get("MLFLOW_WORKSPACE"):
        return None
    path = uri[len("sqlite:///"):]
    if not os.path.isfile(path):
        return ""  # MLflow would create an empty store here: no model, no champion
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
            columns = {row[1] for row in db.execute("PRAGMA table_info(registered_model_aliases)")}
            if not {"name", "alias", "version"} <= columns:
                return None
            workspace = ", workspace" if "workspace" in columns else ""
            rows = db.execute(f"SELECT version{workspace} FROM registered_model_aliases WHERE name = ? AND alias = ?",
                              (model_name, alias)).fetchall()
    except sqlite3.Error:
        return None
    if len(rows) > 1 or any(workspace and row[1] != "default" for row in rows):
        return None
    return str(rows[0][0]) if rows else ""


def fetch_champion(uri: str, model_name: str, dest: str, version_number: str) -> tuple[str, dict] | None:
    """Download the deployable of the champion version `champion_version` resolved (its ONNX export, or the
    Hugging Face directory of a version registered without one), or None when it found none ("").

    The gate compares candidate and champion the same way: each scored through what it ships, on the same
    test split."""
    if not version_number:
        return None
    resolved = tracking_uri(uri)
    check_server(resolved)
    with reachable(resolved, "downloading the champion"):
        c = client(resolved)
        version = c.get_model_version(model_name, version_number)
        _, local = download_part(c, version, dest, (ONNX_ARTIFACT, HF_ARTIFACT))
    info = {"model_name": model_name, "version": int(version.version), "run_id": version.run_id}
    return local, info


def resolve_model_ref(ref: str, dest: str, tracking: str = "") -> str:
    """A model reference -> a local path `inference.loading.load_predictor` understands.

    `models:/NAME@ALIAS` and `models:/NAME/N` download the version's ONNX export directory when it has one
    (so `predict` and `evaluate` run what is deployed, through onnxruntime, int8 when the export report says
    so), else its Hugging Face directory. Anything else is returned unchanged (a local path)."""
    if not ref.startswith("models:/"):
        return ref
    from mlflow.exceptions import MlflowException

    c = client(tracking)
    mv = resolve_version(c, ref)
    try:
        _, local = download_part(c, mv, dest, (ONNX_ARTIFACT, HF_ARTIFACT))
    except MlflowException as exc:
        raise BadInput(f"--model {ref}: {_first_line(exc)}") from None
    return local


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
