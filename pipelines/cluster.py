"""`domaintune submit` and `domaintune schedule`: the compiled pipeline on a Kubeflow Pipelines cluster,
through `kfp.Client`. Only parameters the user set are sent; the rest keep the compiled defaults."""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile

from domaintune.components.core.errors import BadInput

# The KFP backend substitutes this in a recurring run's parameters with each run's scheduled time,
# so every scheduled retraining gets a fresh cache key for its data (kfp caches on arguments, not on data).
SCHEDULED_TIME = "[[ScheduledTime]]"


def _client(host: str, namespace: str | None):
    import kfp

    try:
        return kfp.Client(host=host, namespace=namespace)
    except Exception as exc:  # the client raises many transport error types
        raise BadInput(f"--host {host}: cannot reach the KFP API ({str(exc).splitlines()[0][:200]})") from None


def _compiled() -> tuple[str, str]:
    """Compile now (the YAML must match the code being submitted) and name the version by its content."""
    from domaintune.pipelines.compile import compile_pipeline

    path = compile_pipeline(os.path.join(tempfile.mkdtemp(prefix="domaintune-"), "pipeline.yaml"))
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    from importlib.metadata import version

    return path, f"{version('domaintune')}-{digest}"


def upload(client, pipeline_name: str) -> tuple[str, str]:
    """Upload the pipeline, or a new version of it when the name exists (the same content is reused)."""
    path, version_name = _compiled()
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(path, pipeline_name=pipeline_name)
        pipeline_id = pipeline.pipeline_id
        versions = client.list_pipeline_versions(pipeline_id=pipeline_id).pipeline_versions or []
        return pipeline_id, versions[0].pipeline_version_id
    existing = client.list_pipeline_versions(pipeline_id=pipeline_id, page_size=100).pipeline_versions or []
    for v in existing:
        if v.display_name == version_name:
            return pipeline_id, v.pipeline_version_id
    version = client.upload_pipeline_version(path, pipeline_version_name=version_name, pipeline_id=pipeline_id)
    return pipeline_id, version.pipeline_version_id


@contextlib.contextmanager
def _chatter_to_stderr():
    """kfp.Client prints its own links; stdout stays the one URL a script can capture."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


@_chatter_to_stderr()
def submit(host: str, params: dict, experiment: str, pipeline_name: str, run_name: str | None,
           namespace: str | None = None, service_account: str = "") -> str:
    client = _client(host, namespace)
    pipeline_id, version_id = upload(client, pipeline_name)
    exp = client.create_experiment(experiment, namespace=namespace)
    run = client.run_pipeline(experiment_id=exp.experiment_id, job_name=run_name or f"{pipeline_name}-run",
                              params=params, pipeline_id=pipeline_id, version_id=version_id,
                              service_account=service_account or None)
    return f"{host.rstrip('/')}/#/runs/details/{run.run_id}"


def cron_6_fields(expr: str) -> str:
    """KFP's scheduler uses robfig/cron with a seconds field; accept the usual 5-field form too."""
    fields = expr.split()
    if len(fields) == 5:
        return "0 " + expr.strip()
    if len(fields) == 6:
        return expr.strip()
    raise BadInput(f"--cron {expr!r}: expected 5 fields (min hour day month weekday) or 6 (with seconds first)")


@_chatter_to_stderr()
def schedule(host: str, cron: str, params: dict, experiment: str, pipeline_name: str, job_name: str | None,
             namespace: str | None = None, service_account: str = "") -> str:
    cron = cron_6_fields(cron)
    if params.get("data_version"):
        raise BadInput("--data-version is set per run by the schedule (the scheduled time); don't pass it")
    client = _client(host, namespace)
    pipeline_id, version_id = upload(client, pipeline_name)
    exp = client.create_experiment(experiment, namespace=namespace)
    job = client.create_recurring_run(
        experiment_id=exp.experiment_id, job_name=job_name or f"{pipeline_name}-retrain", cron_expression=cron,
        max_concurrency=1, no_catchup=True, params={**params, "data_version": SCHEDULED_TIME},
        pipeline_id=pipeline_id, version_id=version_id, service_account=service_account or None)
    return f"{host.rstrip('/')}/#/recurringrun/details/{job.recurring_run_id}"
