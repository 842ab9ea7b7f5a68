"""The finetune task's side of a Kubeflow Trainer run: submit the TrainJob (training/trainjob.py), stream its
status into the task log, collect the model and history rank 0 left in the run's object storage, and delete
the job however the wait ends (done, failed, or the task stopped: cancelling the KFP run sends SIGTERM).

Retries: the job's name is fixed by the task execution's output location, so a retried task that finds the
job of its previous attempt still there waits for that one instead of training twice (and the job is gone
after any attempt that ended, so a retry after a failure trains afresh).

The Kubernetes API is reached the ordinary way: the pod's service account in the cluster (RBAC in
k8s/base/pipeline/role.yaml), a kubeconfig (KUBECONFIG) elsewhere.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time

from domaintune.components.core.errors import BadInput, DomaintuneError
from domaintune.components.io import storage
from domaintune.components.training import trainjob as tj

POLL_ENV = "DOMAINTUNE_TRAINER_POLL_SECONDS"
STAGING_SUFFIX = ".trainjob"  # beside the task's own output: <model uri>.trainjob/{model/,history.json,error-*}


class TrainJobFailed(DomaintuneError):
    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def log(message: str) -> None:
    print(f"finetune: {message}", file=sys.stderr, flush=True)


def kubernetes_api():
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:  # KUBECONFIG read now (the library reads it once, at import)
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
    return client.CustomObjectsApi()


def _api_error(exc, what: str, name: str) -> DomaintuneError:
    if exc.status == 404:
        return BadInput(f"TrainJob {name}: the cluster has no {tj.GROUP}/{tj.VERSION} TrainJob API (install "
                        f"Kubeflow Trainer v2 and the runtime in k8s/trainer/; README, Cluster)")
    if exc.status == 403:
        return BadInput(f"TrainJob {name}: the task's service account may not {what} trainjobs.{tj.GROUP} "
                        f"(apply k8s/base/pipeline/role.yaml)")
    return DomaintuneError(f"TrainJob {name}: {what} failed: {exc.status} {exc.reason}")


def submit(api, body: dict) -> None:
    from kubernetes.client.exceptions import ApiException

    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    try:
        api.create_namespaced_custom_object(tj.GROUP, tj.VERSION, namespace, tj.PLURAL, body)
        trainer = body["spec"]["trainer"]
        ref = body["spec"]["runtimeRef"]
        log(f"submitted TrainJob {namespace}/{name}: {trainer['numNodes']} node(s) x {trainer['numProcPerNode']} "
            f"GPU(s), runtime {ref['kind']}/{ref['name']}, image {trainer['image']}")
    except ApiException as exc:
        if exc.status != 409:
            raise _api_error(exc, "create", name) from None
        log(f"TrainJob {namespace}/{name} exists (an earlier attempt of this task submitted it): waiting for it")


def status_lines(obj: dict) -> list[str]:
    """What the log says about the job's state: each condition, and each child job's pod counts."""
    status = obj.get("status") or {}
    lines = [f"TrainJob {obj['metadata']['name']}: {c.get('type')}={c.get('status')}"
             + (f" ({c.get('reason')}: {c.get('message')})" if c.get("reason") or c.get("message") else "")
             for c in status.get("conditions") or []]
    lines += [f"TrainJob {obj['metadata']['name']}: job {j.get('name')}: " + ", ".join(
              f"{k} {j.get(k, 0)}" for k in ("active", "ready", "succeeded", "failed", "suspended"))
              for j in status.get("jobsStatus") or []]
    return lines


def wait(api, name: str, namespace: str, staging: str, poll: float) -> dict:
    """Polls the job until it is Complete (returns it) or Failed (raises the failing rank's own error when it
    left one, else the job's condition); every new status line goes to the log."""
    from kubernetes.client.exceptions import ApiException

    seen: set[str] = set()
    while True:
        try:
            obj = api.get_namespaced_custom_object(tj.GROUP, tj.VERSION, namespace, tj.PLURAL, name)
        except ApiException as exc:
            raise _api_error(exc, "get", name) from None
        for line in status_lines(obj):
            if line not in seen:
                seen.add(line)
                log(line)
        conditions = {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}
        if conditions.get("Complete", {}).get("status") == "True":
            return obj
        if conditions.get("Failed", {}).get("status") == "True":
            raise worker_error(staging) or TrainJobFailed(
                f"TrainJob {name} failed: {conditions['Failed'].get('reason')}: {conditions['Failed'].get('message')}")
        time.sleep(poll)


def worker_error(staging: str) -> TrainJobFailed | None:
    """The error a trainer process left beside the outputs (trainjob_worker.py), lowest rank first."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            found = storage.fetch(staging + "/errors", cache_dir=tmp)
        except BadInput:
            return None
        names = sorted(os.listdir(found), key=lambda n: int("".join(filter(str.isdigit, n)) or 0))
        if not names:
            return None
        error = storage.read_json(os.path.join(found, names[0]))
    prefix = "" if error["code"] == BadInput.exit_code else f"TrainJob rank {error['rank']}: "
    return TrainJobFailed(prefix + error["message"], error["code"])


def delete(api, name: str, namespace: str) -> None:
    from kubernetes.client.exceptions import ApiException

    try:  # foreground: the JobSet and its pods go before the job itself
        api.delete_namespaced_custom_object(tj.GROUP, tj.VERSION, namespace, tj.PLURAL, name,
                                            propagation_policy="Foreground")
        log(f"deleted TrainJob {namespace}/{name}")
    except ApiException as exc:
        if exc.status != 404:
            log(f"could not delete TrainJob {namespace}/{name}: {exc.status} {exc.reason}")


class Stopped(DomaintuneError):
    """The task was told to stop (SIGTERM: the KFP run was cancelled, or the pod evicted)."""


@contextlib.contextmanager
def deleted_afterwards(api, name: str, namespace: str):
    """Deletes the job when the block ends, also when the task is stopped by SIGTERM meanwhile."""
    def stop(signum, frame):
        raise Stopped(f"stopped by {signal.Signals(signum).name}: TrainJob {namespace}/{name} deleted")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the deletion itself is not interrupted
        try:
            delete(api, name, namespace)
        finally:
            signal.signal(signal.SIGTERM, previous)


def collect(staging: str, output_dir: str, history_path: str) -> dict:
    """The model directory and history.json rank 0 uploaded, into the task's own outputs (atomically)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model = storage.fetch(staging + "/model", cache_dir=tmp)
        history = storage.fetch(staging + "/history.json", cache_dir=tmp)
        with storage.atomic_dir(output_dir) as target:
            shutil.copytree(model, target, dirs_exist_ok=True)
        os.makedirs(os.path.dirname(os.path.abspath(history_path)), exist_ok=True)
        shutil.copy(history, history_path)
    return storage.read_json(history_path)


def run_on_trainer(tokens_uri: str, model_ref: str, output_dir: str, history_path: str, params,
                   output_uri: str) -> dict:
    """Fine-tune through a TrainJob: TOKENS_URI and MODEL_REF (a base model name or an s3:// model) in,
    the model into OUTPUT_DIR and the history into HISTORY_PATH; OUTPUT_URI (the task's model artifact)
    names the job and the staging location beside it. Returns the history."""
    s = tj.settings()
    if not storage.is_s3(storage.object_uri(tokens_uri)):
        raise BadInput(f"the tokens artifact {tokens_uri} is not in object storage: a TrainJob's pods can only "
                       f"read the run's artifacts from S3 (a pipeline root on s3:// or minio://)")
    staging = storage.object_uri(output_uri).rstrip("/") + STAGING_SUFFIX
    name = tj.job_name(staging)
    body = tj.manifest(name, s, tj.worker_spec(tokens_uri, model_ref, staging, params))
    poll = float(os.environ.get(POLL_ENV) or 10)
    api = kubernetes_api()
    with deleted_afterwards(api, name, s.namespace):
        submit(api, body)
        wait(api, name, s.namespace, staging, poll)
    history = collect(staging, output_dir, history_path)
    log(f"collected the model from {staging}/model ({history.get('distributed', {}).get('world_size')} processes)")
    return history
