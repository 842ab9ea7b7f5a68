"""Idempotent, concurrency-safe model versions: a retried register step finds what its first attempt made,
and concurrent registrations of one name each get their own version."""
from __future__ import annotations

import random
import time

from domaintune.components.registry import client as registry

REGISTER_ATTEMPTS = 8


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
