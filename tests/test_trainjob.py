"""Multi-node fine-tuning through Kubeflow Trainer, against a local HTTP endpoint that records the Kubernetes
API calls it gets (no cluster runs here) and S3 in moto: the TrainJob validates against the CRD's schema
(tests/fixtures), is submitted, its status streams into the log, the model rank 0 left is collected, and the
job is deleted afterwards: after success, after a failure (with the failing rank's own error), and when the
task is stopped by SIGTERM (a cancelled KFP run)."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer

import jsonschema
import pytest
from conftest import JsonApiHandler, finetune_params

from domaintune.components.io import storage
from domaintune.components.training import trainjob, trainjob_run, trainjob_worker

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA = json.load(open(os.path.join(HERE, "fixtures", "trainjob_v1alpha1_schema.json")))
JOBS = re.compile(r"^/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/trainjobs(?:/([^/?]+))?")
NAMESPACE = "team-a"
TOKENS_URI = "minio://mlpipeline/v2/artifacts/domaintune-training/run-1/tokenize-op/7/tokens"
MODEL_URI = "minio://mlpipeline/v2/artifacts/domaintune-training/run-1/finetune-op/9/model"


class FakeKube(JsonApiHandler):
    """The TrainJob API: create (409 when the name exists), get (the job with its status), delete. `run` is
    what "the cluster" does with a created job (in a thread): it returns the final condition type."""
    calls: list = []
    jobs: dict = {}
    run = None

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length)) if length else None

    def do_POST(self):
        body = self._body()
        self.calls.append(("POST", self.path, body))
        name = body["metadata"]["name"]
        if name in self.jobs:
            return self._reply({"kind": "Status", "code": 409, "reason": "AlreadyExists"}, 409)
        self.jobs[name] = {**body, "status": {}}
        threading.Thread(target=self._run, args=(name,), daemon=True).start()
        return self._reply(body, 201)

    def _run(self, name):
        job = self.jobs[name]
        job["status"] = {"conditions": [], "jobsStatus": [{"name": "node", "active": 2, "ready": 2, "succeeded": 0,
                                                           "failed": 0, "suspended": 0}]}
        try:
            outcome, reason, message = type(self).run(job) if type(self).run else ("Running", None, None)
        except BaseException as exc:  # noqa: BLE001 - the job fails, as a pod that raised would
            outcome, reason, message = "Failed", "WorkerRaised", f"{type(exc).__name__}: {exc}"
        if outcome != "Running":
            job["status"]["conditions"].append({"type": outcome, "status": "True", "reason": reason,
                                                "message": message, "lastTransitionTime": "2026-12-02T00:00:00Z"})

    def do_GET(self):
        self.calls.append(("GET", self.path, None))
        m = JOBS.match(self.path)
        if m and m[2] in self.jobs:
            return self._reply(self.jobs[m[2]])
        return self._reply({"kind": "Status", "code": 404, "reason": "NotFound"}, 404)

    def do_DELETE(self):
        self.calls.append(("DELETE", self.path, self._body()))
        m = JOBS.match(self.path)
        if m and self.jobs.pop(m[2], None) is not None:
            return self._reply({"kind": "Status", "status": "Success"})
        return self._reply({"kind": "Status", "code": 404, "reason": "NotFound"}, 404)


@pytest.fixture
def kube(tmp_path, monkeypatch):
    FakeKube.calls, FakeKube.jobs, FakeKube.run = [], {}, None
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKube)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = tmp_path / "kubeconfig"
    config.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": NAMESPACE}}]}))
    env = {"KUBECONFIG": str(config), trainjob.NODES_ENV: "2", trainjob.GPUS_ENV: "4",
           trainjob.IMAGE_ENV: "ghcr.io/domaintune/domaintune:0.1.0-cuda", trainjob.NAMESPACE_ENV: NAMESPACE,
           trainjob.RESOURCES_ENV: json.dumps({"requests": {"cpu": "4", "memory": "16Gi"},
                                               "limits": {"cpu": "8", "memory": "32Gi"}}),
           trainjob_run.POLL_ENV: "0.1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    yield FakeKube, env
    server.shutdown()


@pytest.fixture
def s3(monkeypatch):
    from moto import mock_aws

    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        storage.s3_client().create_bucket(Bucket="mlpipeline")
        yield


def created(calls) -> dict:
    posts = [body for method, path, body in calls if method == "POST"]
    assert len(posts) == 1, posts
    return posts[0]


def test_the_trainjob_is_valid_and_says_what_the_task_runs(kube):
    api, _ = kube
    params = finetune_params(epochs=2, batch_size=32)
    staging = storage.object_uri(MODEL_URI) + trainjob_run.STAGING_SUFFIX
    body = trainjob.manifest(trainjob.job_name(staging), trainjob.settings(),
                             trainjob.worker_spec(TOKENS_URI, "all-MiniLM-L6-v2", staging, params))
    jsonschema.validate(body, SCHEMA)
    spec = body["spec"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime",
                                  "name": "domaintune-torch-distributed"}
    trainer = spec["trainer"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 4
    assert trainer["resourcesPerNode"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "4"}
    assert trainer["command"] == ["torchrun", "--module", "domaintune.components.training.trainjob_worker"]
    worker = json.loads(trainer["args"][0])
    assert worker["params"]["batch_size"] == 32 and worker["tokens"] == TOKENS_URI and worker["staging"] == staging
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in trainer["env"] if "valueFrom" in e}
    assert secrets["AWS_SECRET_ACCESS_KEY"] == {"name": "domaintune-s3", "key": "AWS_SECRET_ACCESS_KEY", "optional": True}
    assert secrets["MLFLOW_TRACKING_URI"]["name"] == "domaintune-mlflow"
    # the schema catches what the server would silently drop
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**body, "spec": {**spec, "trainer": {**trainer, "numNode": 2}}}, SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**body, "metadata": {"name": "Domaintune_FT"}}, SCHEMA)


def test_submitted_trained_collected_and_deleted(kube, s3, tiny_tokens, tmp_path, capfd):
    """The fake cluster runs the job's worker for real (one process: the rank-0 path), in object storage."""
    api, _ = kube
    storage.upload(tiny_tokens["tokens"], TOKENS_URI)

    def run(job):
        code = trainjob_worker.main(job["spec"]["trainer"]["args"])
        return ("Complete", "JobCompleted", "done") if code == 0 else ("Failed", "JobFailed", f"exit {code}")

    api.run = run
    params = finetune_params(epochs=1, batch_size=8, learning_rate=3e-4)
    history = trainjob_run.run_on_trainer(TOKENS_URI, "all-MiniLM-L6-v2", str(tmp_path / "model"),
                                          str(tmp_path / "history.json"), params, MODEL_URI)
    body = created(api.calls)
    jsonschema.validate(body, SCHEMA)
    name = body["metadata"]["name"]
    assert [m for m, _, _ in api.calls][0] == "POST" and api.calls[-1][0] == "DELETE"
    assert f"/namespaces/{NAMESPACE}/trainjobs/{name}" in api.calls[-1][1]
    assert "propagationPolicy=Foreground" in api.calls[-1][1]  # its JobSet and pods go with it
    assert not api.jobs  # deleted
    assert history["validation"]["macro_f1"] >= 0 and history["global_steps"] > 0
    assert os.path.isfile(tmp_path / "model" / "model.safetensors") and os.path.isfile(tmp_path / "history.json")
    err = capfd.readouterr().err
    assert f"submitted TrainJob {NAMESPACE}/{name}: 2 node(s) x 4 GPU(s)" in err
    assert f"TrainJob {name}: job node: active 2, ready 2, succeeded 0, failed 0, suspended 0" in err
    assert f"TrainJob {name}: Complete=True (JobCompleted: done)" in err and f"deleted TrainJob {NAMESPACE}/{name}" in err


def test_a_failed_job_reports_the_ranks_own_error_and_is_deleted(kube, s3, tmp_path):
    api, _ = kube
    staging = storage.object_uri(MODEL_URI) + trainjob_run.STAGING_SUFFIX
    error = tmp_path / "rank-3.json"
    error.write_text(json.dumps({"rank": 3, "code": 1, "message": "RuntimeError: CUDA out of memory"}))
    storage.upload(str(error), staging + "/errors/rank-3.json")
    api.run = lambda job: ("Failed", "JobFailed", "Job node failed")
    with pytest.raises(trainjob_run.TrainJobFailed, match=r"^TrainJob rank 3: RuntimeError: CUDA out of memory$"):
        trainjob_run.run_on_trainer(TOKENS_URI, "all-MiniLM-L6-v2", str(tmp_path / "model"),
                                    str(tmp_path / "h.json"), finetune_params(), MODEL_URI)
    assert api.calls[-1][0] == "DELETE" and not api.jobs
    assert not (tmp_path / "model").exists() and not (tmp_path / "h.json").exists()


def test_a_retried_task_waits_for_the_job_its_earlier_attempt_submitted(kube, tmp_path):
    api, _ = kube
    staging = storage.object_uri(MODEL_URI) + trainjob_run.STAGING_SUFFIX
    name = trainjob.job_name(staging)
    api.jobs[name] = {"metadata": {"name": name}, "status": {"conditions": [
        {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "too slow"}]}}
    with pytest.raises(trainjob_run.TrainJobFailed, match="TrainJob .* failed: DeadlineExceeded: too slow"):
        with pytest.MonkeyPatch.context() as m:  # no error left in object storage: the condition is the message
            m.setattr(trainjob_run, "worker_error", lambda staging: None)
            trainjob_run.run_on_trainer(TOKENS_URI, "x", str(tmp_path / "m"), str(tmp_path / "h"), finetune_params(),
                                        MODEL_URI)
    methods = [m for m, _, _ in api.calls]
    assert methods[0] == "POST" and "GET" in methods and methods[-1] == "DELETE"  # 409 -> adopted, waited, deleted


SUBMITTING = """
import sys
sys.path.insert(0, {tests!r})
from conftest import finetune_params
from domaintune.components.core.runtime import run_stage
from domaintune.components.training.trainjob_run import run_on_trainer
run_stage("finetune", run_on_trainer, {tokens!r}, "all-MiniLM-L6-v2", {out!r}, {history!r}, finetune_params(), {model!r})
"""


def test_cancelling_the_task_deletes_the_job(kube, tmp_path):
    api, env = kube  # the job never finishes: only a SIGTERM ends the wait
    script = SUBMITTING.format(tests=HERE, tokens=TOKENS_URI, out=str(tmp_path / "model"),
                               history=str(tmp_path / "h.json"), model=MODEL_URI)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})
    try:
        deadline = time.monotonic() + 120
        while not any(m == "GET" for m, _, _ in api.calls) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    name = created(api.calls)["metadata"]["name"]
    assert api.calls[-1][0] == "DELETE" and f"/trainjobs/{name}" in api.calls[-1][1] and not api.jobs
    errors = [json.loads(line.split(" ", 1)[1]) for line in stdout.splitlines() if line.startswith("domaintune:error")]
    assert proc.returncode == 1, stderr[-3000:]
    assert errors == [{"stage": "finetune", "code": 1,
                       "message": f"stopped by SIGTERM: TrainJob {NAMESPACE}/{name} deleted"}]


def test_the_runtime_schedules_like_the_pipelines_gpu_tasks():
    """k8s/trainer/training-runtime.yaml is what the TrainJob names; its pods get the pipeline's GPU settings."""
    import yaml

    from domaintune.pipelines import platform

    path = os.path.join(HERE, "..", "k8s", "trainer", "training-runtime.yaml")
    runtime = yaml.safe_load(open(path))
    kind, _, name = trainjob.DEFAULT_RUNTIME.partition("/")
    assert (runtime["apiVersion"], runtime["kind"], runtime["metadata"]["name"]) == (
        f"{trainjob.GROUP}/{trainjob.VERSION}", kind, name)
    assert "torch" in runtime["spec"]["mlPolicy"]
    (node,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == dict([platform.GPU_NODE_LABEL])
    assert pod["tolerations"] == [{"key": platform.GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["securityContext"]["runAsUser"] == platform.IMAGE_UID and pod["securityContext"]["runAsNonRoot"]
    (container,) = pod["containers"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert {v["name"]: v for v in pod["volumes"]}["dshm"]["emptyDir"]["medium"] == "Memory"
