"""MLflow tracking and registry access shared by the stages and the CLI (aliases, never stages)."""
from __future__ import annotations

import os

from domaintune.components.errors import BadInput

CHAMPION, CHALLENGER = "champion", "challenger"
HF_SUBDIR = "artifacts/model"  # where the Hugging Face directory sits inside a logged pyfunc model


def tracking_uri(uri: str = "") -> str:
    """Explicit parameter, else MLFLOW_TRACKING_URI, else MLflow's own local default (./mlflow.db), made
    absolute so every stage subprocess and `mlflow ui` in the same directory see the same store."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    return uri or f"sqlite:///{os.path.abspath('mlflow.db')}"


def client(uri: str = ""):
    import mlflow
    from mlflow import MlflowClient

    resolved = tracking_uri(uri)
    mlflow.set_tracking_uri(resolved)
    mlflow.set_registry_uri(resolved)
    return MlflowClient(tracking_uri=resolved, registry_uri=resolved)


def alias_version(c, model_name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None  # no such model or alias yet


def fetch_champion(uri: str, model_name: str, dest: str) -> tuple[str, dict] | None:
    """Download the champion's Hugging Face directory, or None when there is no champion yet."""
    import mlflow

    c = client(uri)
    version = alias_version(c, model_name, CHAMPION)
    if version is None:
        return None
    local = mlflow.artifacts.download_artifacts(f"models:/{model_name}@{CHAMPION}", dst_path=dest)
    info = {"model_name": model_name, "version": int(version.version), "run_id": version.run_id}
    return os.path.join(local, HF_SUBDIR), info


def resolve_model_ref(ref: str, dest: str) -> str:
    """models:/NAME@ALIAS or models:/NAME/N → a local directory `load_classifier` understands."""
    if not ref.startswith("models:/"):
        return ref
    import mlflow
    from mlflow.exceptions import MlflowException

    client()
    try:
        local = mlflow.artifacts.download_artifacts(ref, dst_path=dest)
    except MlflowException as exc:
        raise BadInput(f"--model {ref}: {str(exc).splitlines()[0]}") from None
    return os.path.join(local, HF_SUBDIR)
