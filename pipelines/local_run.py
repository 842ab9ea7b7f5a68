"""`domaintune run`: the pipeline through kfp.local (SubprocessRunner in this environment, or with `--runner docker`
every task in the component image: pipelines/docker_run.py; caching on).

kfp.local streams every task's raw output; we keep all of it in `DIR/pipeline.log` and show the user
which stage is running, its elapsed time, a progress bar during training and a final table.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
import shutil
import tempfile
import time
import uuid
import warnings

from domaintune.components.io import storage
from domaintune.components.core.runtime import set_offline_defaults
from domaintune.pipelines.preflight import RUN_DIR_ENTRIES, param_errors, preflight  # noqa: F401 (re-exported)
from domaintune.pipelines.progress_view import ANSI, Monitor



def runs_root() -> str:
    return os.path.abspath(os.environ.get("DOMAINTUNE_RUNS_DIR", "domaintune-runs"))


def new_run_id() -> str:
    return f"{dt.datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def code_fingerprint() -> str:
    """The local cache keys on the component shells and arguments, not on the stage code behind them;
    keying the cache directory on the installed code keeps an upgraded or edited install from reusing
    outputs of older code."""
    import domaintune.components as components
    import domaintune.pipelines as pipelines

    h = hashlib.sha256()
    for package in (components, pipelines):
        root = os.path.dirname(package.__file__)
        for folder, dirs, files in sorted(os.walk(root)):
            dirs.sort()
            for name in sorted(files):
                if name.endswith((".py", ".yaml", ".j2")):
                    with open(os.path.join(folder, name), "rb") as f:
                        h.update(os.path.relpath(os.path.join(folder, name), root).encode() + f.read())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def local_retries(pipeline):
    """kfp.local honours the compiled retry policy (30 s backoff, doubling); on one machine use the local
    one (pipelines/platform.py LOCAL_RETRIES) for the duration of the run, then restore the spec."""
    from domaintune.pipelines.platform import LOCAL_BACKOFF_SECONDS, LOCAL_RETRIES

    spec = pipeline.pipeline_spec
    dags = [spec.root.dag] + [c.dag for c in spec.components.values() if c.HasField("dag")]
    saved = []
    for dag in dags:
        for task in dag.tasks.values():
            if task.HasField("retry_policy"):
                saved.append((task, task.retry_policy.max_retry_count, task.retry_policy.backoff_duration.seconds))
                task.retry_policy.max_retry_count = LOCAL_RETRIES.get(task.task_info.name, 0)
                task.retry_policy.backoff_duration.seconds = LOCAL_BACKOFF_SECONDS
    try:
        yield
    finally:
        for task, count, backoff in saved:
            task.retry_policy.max_retry_count = count
            task.retry_policy.backoff_duration.seconds = backoff


@contextlib.contextmanager
def kfp_runner(kind: str, values: dict, run_id: str):
    """(kfp.local runner, cache directory suffix, what the summary records) for `--runner KIND`."""
    from kfp import local

    if kind == "docker":
        from domaintune.components.core.images import IMAGE
        from domaintune.pipelines.docker_run import docker_runner

        with docker_runner(values, run_id, code_fingerprint()) as (runner, tag):
            yield runner, f"-{tag}", {"name": "docker", "image": IMAGE, "cache": tag}
    else:
        yield local.SubprocessRunner(use_venv=False), "", {"name": "subprocess"}


def run_local(values: dict, output_dir: str | None, verbose: bool = False,
              runner: str = "subprocess") -> tuple[dict | None, int, str]:
    """Run the pipeline; returns (summary or None, exit code, message).

    `--output DIR` may exist or not (refused when it already holds a run's results); it is claimed at the start
    (a lock file inside: a second run given the same DIR is refused, a killed run's stale lock is taken over) and
    the results are built beside it and moved in at the end, so nothing a user puts there is replaced or deleted.
    On failure nothing of this run is left in it."""
    from kfp import local

    from domaintune.pipelines.training_pipeline import training_pipeline

    set_offline_defaults()
    values = preflight(values, output_dir)
    run_id = new_run_id()
    out = os.path.abspath(output_dir or os.path.join(runs_root(), run_id))
    with kfp_runner(runner, values, run_id) as chosen:  # a docker setup that cannot work fails here, before the claim
        claim = storage.claim_dir(out, {"run_id": run_id, "started": dt.datetime.now().isoformat(timespec="seconds")},
                                  reserved=RUN_DIR_ENTRIES) if output_dir else None
        try:
            return _run(training_pipeline, local, values, out, run_id, verbose, chosen)
        finally:
            if claim is not None:
                claim.release()


def _run(training_pipeline, local, values: dict, out: str, run_id: str, verbose: bool, chosen: tuple):
    runner, cache_suffix, runner_info = chosen
    kfp_root = os.path.join(runs_root(), ".kfp")
    os.makedirs(kfp_root, exist_ok=True)
    log_path = os.path.join(kfp_root, f"{run_id}.log")
    local.init(runner=runner, pipeline_root=kfp_root, raise_on_error=True, enable_caching=True,
               cache_root=os.path.join(kfp_root, f"cache-{code_fingerprint()}{cache_suffix}"))

    monitor = Monitor(log_path, verbose)
    handler = logging.StreamHandler(monitor)
    root_logger = logging.getLogger()
    old_level = root_logger.level
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.INFO)
    started = time.monotonic()
    failure = None
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(monitor), local_retries(training_pipeline):
            warnings.simplefilter("ignore")  # kfp warns per task about our (non-"python") image name
            task = training_pipeline(**values)
    except RuntimeError as exc:
        failure = str(exc)
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(old_level)
        monitor.close()
    seconds = time.monotonic() - started

    if failure is not None:
        if monitor.error:
            return None, int(monitor.error["code"]), f"{monitor.error['stage']}: {monitor.error['message']}"
        return None, 1, f"{ANSI.sub('', failure)}; full log: {log_path}"

    summary = storage.read_json(task.output)  # the summary's path, returned by register
    summary["runner"] = runner_info
    write_run_dir(out, summary, log_path, run_id, seconds, monitor.stages, values)
    os.remove(log_path)
    code = 0 if summary["status"] == "registered" else 3
    return summary, code, ""


def write_run_dir(out: str, summary: dict, log_path: str, run_id: str, seconds: float, stages: list[dict],
                  values: dict) -> None:
    """The run directory: copies (never links into the kfp.local cache, which later runs reuse) of the model,
    the deployable the gate judged, the evaluation, the reports, the card and the log; then summary.json.
    Built in a directory beside OUT and moved into it entry by entry: OUT may already exist (an --output this
    run claimed) and whatever else is in it stays untouched."""
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.{run_id}-", dir=parent)
    try:
        _fill_run_dir(tmp, out, summary, log_path, run_id, seconds, stages, values)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.makedirs(out, exist_ok=True)
    storage.move_into(tmp, out)  # a name taken there meanwhile: nothing moved, the error says where the results are


def _fill_run_dir(tmp: str, out: str, summary: dict, log_path: str, run_id: str, seconds: float,
                  stages: list[dict], values: dict) -> None:
    artifacts = summary.pop("artifacts", {})
    shutil.copytree(artifacts["model"], os.path.join(tmp, "model"))
    if artifacts.get("export"):
        shutil.copytree(artifacts["export"], os.path.join(tmp, "deployable"))
    shutil.copytree(artifacts["evaluation"], os.path.join(tmp, "evaluation"))
    os.makedirs(os.path.join(tmp, "reports"))
    for name in ("data_report", "history"):
        shutil.copy(artifacts[name], os.path.join(tmp, "reports", f"{name}.json"))
    shutil.copy(log_path, os.path.join(tmp, "pipeline.log"))
    card = summary.pop("model_card", None)
    if card:
        with open(os.path.join(tmp, "model_card.md"), "w") as f:
            f.write(card)
    export = summary.get("export") or {}
    deployable = os.path.join(out, "deployable", export["deployable_file"]) if export.get("deployable_file") else None
    summary.update({"model_dir": os.path.join(out, "model"), "deployable_path": deployable,
                    "output_dir": out, "run_id": run_id, "wall_seconds": round(seconds, 1), "stages": [
                        {k: (round(v, 2) if k == "seconds" else v) for k, v in s.items() if k in ("name", "status", "seconds")}
                        for s in stages], "parameters": values})
    storage.write_json(os.path.join(tmp, "summary.json"), summary)
