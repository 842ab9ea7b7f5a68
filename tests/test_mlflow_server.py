"""MLflow as a real tracking server: PostgreSQL backend store, artifacts proxied to an S3 bucket on a local
S3 endpoint (moto), as on a cluster (k8s/). Two `domaintune run`s with a promotion between them, serving
`models:/NAME@champion`, and concurrent registrations.

Needs PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres): each session creates a fresh database and
drops it afterwards; skipped with the reason when PostgreSQL is not reachable. `MlflowServer` is reused by
bench/concurrent_register.py.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)
PG = {"host": os.environ.get("DOMAINTUNE_TEST_PGHOST", "127.0.0.1"),
      "port": int(os.environ.get("DOMAINTUNE_TEST_PGPORT", "5432")),
      "user": os.environ.get("DOMAINTUNE_TEST_PGUSER", "postgres")}
DUMMY_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET, PREFIX = "domaintune-mlflow", "artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_problem() -> str | None:
    """None when PostgreSQL answers, else why not (the skip reason)."""
    try:
        import psycopg2
    except ImportError:
        return "psycopg2 is not installed (pip install psycopg2-binary)"
    try:
        psycopg2.connect(dbname="postgres", connect_timeout=3, **PG).close()
    except psycopg2.OperationalError as exc:
        return f"PostgreSQL not reachable at {PG['host']}:{PG['port']} as {PG['user']} ({str(exc).strip().splitlines()[0]})"
    return None


class MlflowServer:
    """PostgreSQL database + moto S3 endpoint + `mlflow server` (proxied artifacts), started on free ports
    and stopped (database dropped) on exit. `uri` is the tracking URI; `log` the server's log file."""

    def __init__(self, workdir: str, name: str = "domaintune"):
        self.workdir = workdir
        self.db = f"{name}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.procs: list[subprocess.Popen] = []
        self.log = os.path.join(workdir, "mlflow-server.log")
        self.s3_log = os.path.join(workdir, "moto.log")
        self.uri = self.s3_endpoint = ""
        self.startup_seconds = 0.0

    def _admin(self):
        import psycopg2

        con = psycopg2.connect(dbname="postgres", connect_timeout=5, **PG)
        con.autocommit = True
        return con

    def _spawn(self, args, log_path, env=None) -> subprocess.Popen:
        log = open(log_path, "ab")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
                                start_new_session=True)  # its own process group: stopped together with its workers
        log.close()
        self.procs.append(proc)
        return proc

    @staticmethod
    def _wait_http(url: str, proc: subprocess.Popen, seconds: float, log_path: str) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}; log:\n{open(log_path).read()[-3000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status < 500:
                        return
            time.sleep(0.3)
        raise RuntimeError(f"{url} did not answer in {seconds:.0f} s; log:\n{open(log_path).read()[-3000:]}")

    def bucket_keys(self) -> list[str]:
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.s3_endpoint, **{k.lower(): v for k, v in DUMMY_AWS.items()
                                                                   if k != "AWS_DEFAULT_REGION"},
                          region_name=DUMMY_AWS["AWS_DEFAULT_REGION"])
        keys = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return keys

    def start(self) -> "MlflowServer":
        import boto3

        started = time.monotonic()
        os.makedirs(self.workdir, exist_ok=True)
        with contextlib.closing(self._admin()) as con, con.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.db}"')
        try:
            s3_port = free_port()
            self.s3_endpoint = f"http://127.0.0.1:{s3_port}"
            moto = self._spawn([os.path.join(BIN, "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)], self.s3_log)
            self._wait_http(self.s3_endpoint, moto, 60, self.s3_log)
            boto3.client("s3", endpoint_url=self.s3_endpoint, region_name="us-east-1",
                         aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)

            port = free_port()
            self.uri = f"http://127.0.0.1:{port}"
            env = {**os.environ, **DUMMY_AWS, "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
                   "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
            env.pop("MLFLOW_TRACKING_URI", None)
            server = self._spawn([os.path.join(BIN, "mlflow"), "server",
                                  "--backend-store-uri", f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{self.db}",
                                  "--artifacts-destination", f"s3://{BUCKET}/{PREFIX}",
                                  "--host", "127.0.0.1", "--port", str(port)], self.log, env=env)
            self._wait_http(f"{self.uri}/health", server, 180, self.log)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = round(time.monotonic() - started, 1)
        return self

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
        self.procs.clear()
        with contextlib.suppress(Exception), contextlib.closing(self._admin()) as con, con.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')

    def database_errors(self) -> list[str]:
        """Lines of the server log that report a database or server error (benign retry notices excluded)."""
        bad = ("Traceback", "IntegrityError", "OperationalError", "psycopg2", "sqlalchemy.exc", "deadlock",
               "Internal Server Error", " 500 ", "ERROR")
        with open(self.log, errors="replace") as f:
            return [line.rstrip() for line in f if any(b in line for b in bad)]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    reason = postgres_problem()
    if reason:
        pytest.skip(reason)
    with MlflowServer(str(tmp_path_factory.mktemp("mlflow-server"))) as s:
        yield s
    print(f"\nmlflow server (PostgreSQL + S3) started in {s.startup_seconds} s")


# ------------------------------------------------------------------------------ concurrent registration

def _register_in_process(args):
    """One register step in its own process, as a pipeline's register task runs (spawned: no shared state)."""
    root, export_dir, uri, name, run_id = args
    sys.path.insert(0, HERE)
    from test_registry import register_params, run_inputs

    from domaintune.components.register.stage import run_register

    out = {"root": root, "model": os.path.join(root, "model"), "export": export_dir}
    summary = run_register(run_inputs(out), os.path.join(root, f"summary-{run_id}.json"), register_params(uri, name), run_id)
    return summary["registry"]["version"], summary["registry"]["run_id"]


def test_concurrent_registrations_get_their_own_versions_and_retries_none(server, tmp_path_factory):
    from test_registry import stage_outputs

    from domaintune.components.register.stage import run_register  # noqa: F401  (import errors surface here, not in a worker)

    out = stage_outputs(tmp_path_factory.mktemp("stages"), export=True)
    jobs = [(out["root"], out["export"], server.uri, "concurrent", f"kfp-{i}") for i in range(4)]
    jobs.append(jobs[0])  # then a retried register step of pipeline run kfp-0
    with concurrent.futures.ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_register_in_process, jobs[:4]))
        results.append(pool.submit(_register_in_process, jobs[4]).result())
    versions = [v for v, _ in results]
    assert sorted(versions[:4]) == [1, 2, 3, 4], versions
    assert results[4] == results[0]  # the retry found kfp-0's run and version
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)
    assert sorted(int(v.version) for v in c.search_model_versions("name = 'concurrent'")) == [1, 2, 3, 4]
    assert int(c.get_model_version_by_alias("concurrent", "challenger").version) == 4  # the newest, whoever wrote last
    experiment = c.get_experiment_by_name("domaintune").experiment_id  # every run in the pipeline's experiment
    assert len(c.search_runs([experiment], "tags.model_name = 'concurrent'")) == 4
    assert {run_id for _, run_id in results} == {r.info.run_id for r in c.search_runs(
        [experiment], "tags.model_name = 'concurrent'")}
    assert not server.database_errors(), server.database_errors()[:20]


# ------------------------------------------------------------------------------ two pipeline runs

def run_args(name: str, uri: str) -> list[str]:
    from conftest import TINY

    return ["--train-data", TINY, "--epochs", "1", "--batch-size", "8", "--learning-rate", "3e-4",
            "--validation-fraction", "0.2", "--test-fraction", "0.2", "--min-macro-f1", "0", "--max-flip-rate", "1",
            "--max-slice-gap", "1", "--export-latency-runs", "0", "--model-name", name, "--mlflow-tracking-uri", uri]


def latest_summary(workdir) -> dict:
    runs = sorted(p for p in os.listdir(workdir / "domaintune-runs") if not p.startswith("."))
    return json.loads((workdir / "domaintune-runs" / runs[-1] / "summary.json").read_text())


def test_two_runs_promote_gate_against_champion_serve_and_artifacts_in_s3(server, tmp_path_factory, monkeypatch):
    from mlflow import MlflowClient
    from test_cli import cli
    from test_registry import check_run_record

    os.environ["PIP_NO_INDEX"] = "1"  # nothing may be installed or fetched at run time
    workdir = tmp_path_factory.mktemp("runs")  # one cwd: the second run reuses kfp.local's cache
    name = "tickets-server"
    c = MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)

    started = time.monotonic()
    code, out, err = cli("run", *run_args(name, server.uri), cwd=workdir)
    first_seconds = time.monotonic() - started
    assert code == 0, err[-3000:]
    first = latest_summary(workdir)
    assert first["status"] == "registered" and first["registry"]["version"] == 1
    assert first["registry"]["tracking_uri"] == server.uri
    run_dir = workdir / "domaintune-runs" / first["run_id"]
    missing = check_run_record(c, first["registry"]["run_id"],
                               json.loads((run_dir / "reports" / "history.json").read_text()),
                               json.loads((run_dir / "reports" / "data_report.json").read_text()),
                               export=bool(first.get("export")), params_last=True)
    assert c.get_run(first["registry"]["run_id"]).data.tags["pipeline_run_id"] == first["pipeline_run_id"]
    assert c.get_model_version(name, "1").description.startswith(f"# {name} v1 — model card")

    code, out, err = cli("promote", name, "--version", "1", "--reason", "first", "--tracking-uri", server.uri,
                         cwd=workdir)
    assert code == 0, err
    assert int(c.get_model_version_by_alias(name, "champion").version) == 1

    started = time.monotonic()
    code, out, err = cli("run", *run_args(name, server.uri), cwd=workdir)
    second_seconds = time.monotonic() - started
    assert code == 0, err[-3000:]
    second = latest_summary(workdir)
    # kfp.local's cache is keyed on the installed code: the second run reuses ingest/tokenize/finetune unless
    # the code changed in between (not asserted: an edit during the test would fail it for no fault of ours)
    stages = {s["name"]: s["status"] for s in second["stages"]}
    champion = second["gate"]["champion"]
    assert champion["version"] == 1 and champion["model_name"] == name
    assert abs(champion["macro_f1"] - first["metrics"]["test"]["macro_f1"]) < 1e-9  # same model, same test split
    check = next(ch for ch in second["gate"]["checks"] if ch["name"] == "no_regression")
    assert check["skipped"] is False and check["passed"] is True
    assert second["registry"]["version"] == 2 and second["registry"]["aliases"] == ["challenger"]
    assert c.get_run(second["registry"]["run_id"]).data.metrics["champion_macro_f1"] == pytest.approx(champion["macro_f1"])

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)  # predict has no --tracking-uri: the user's environment
    code, out, err = cli("predict", "--model", f"models:/{name}@champion", "--text", "I was charged twice",
                         "where is my parcel", cwd=workdir)
    assert code == 0, err[-2000:]
    lines = [line.split("\t") for line in out.strip().splitlines()]
    assert len(lines) == 2 and all(line[0] in first["data"]["labels"] for line in lines)

    keys = server.bucket_keys()
    for run_id in (first["registry"]["run_id"], second["registry"]["run_id"]):
        mine = [k for k in keys if f"/{run_id}/" in k]
        for f in ("model_card.md", "evaluation/confusion_matrix.png", "reports/data_report.json"):
            assert any(k.endswith(f) for k in mine), (f, mine)
    assert any(k.endswith("model.safetensors") for k in keys) and any(k.endswith("/MLmodel") for k in keys)
    assert not server.database_errors(), server.database_errors()[:20]
    print(f"\nfirst run {first_seconds:.1f} s, second run {second_seconds:.1f} s (finetune {stages.get('finetune')})")
    assert not missing, f"pipeline parameters that do not reach the MLflow run: {missing}"
