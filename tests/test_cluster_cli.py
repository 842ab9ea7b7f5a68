"""`submit` and `schedule` against a local HTTP endpoint that records the KFP v2beta1 API calls it gets
(no KFP backend can run here): the right requests, in the right order, with the right parameters."""
import json
import re
import threading
from http.server import ThreadingHTTPServer

import pytest
from conftest import JsonApiHandler

from domaintune.pipelines.cli import main


class FakeKfp(JsonApiHandler):
    calls: list = []
    pipelines: dict = {}

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw)
        except ValueError:
            return {"_raw_bytes": len(raw), "_has_pipeline_yaml": b"pipelineInfo" in raw}

    def do_GET(self):
        self.calls.append(("GET", self.path, None))
        path = self.path.split("?")[0]
        if path.endswith("/healthz"):
            return self._reply({"multi_user": False})
        if path == "/apis/v2beta1/pipelines":
            found = [{"pipeline_id": pid, "display_name": name} for name, pid in self.pipelines.items()
                     if name in self.path.replace("%22", '"') or name.replace("-", "%2D") in self.path]
            return self._reply({"pipelines": found, "total_size": len(found)})
        m = re.match(r"/apis/v2beta1/pipelines/([^/]+)/versions", path)
        if m:
            return self._reply({"pipeline_versions": [{"pipeline_version_id": f"{m[1]}-v1", "display_name": "old"}]})
        if path == "/apis/v2beta1/experiments":
            return self._reply({"experiments": [], "total_size": 0})
        return self._reply({})

    def do_POST(self):
        body = self._body()
        self.calls.append(("POST", self.path, body))
        path = self.path.split("?")[0]
        if path == "/apis/v2beta1/pipelines/upload":
            self.pipelines["domaintune-training"] = "p-1"
            return self._reply({"pipeline_id": "p-1", "display_name": "domaintune-training"})
        if path == "/apis/v2beta1/pipelines/upload_version":
            return self._reply({"pipeline_id": "p-1", "pipeline_version_id": "v-2", "display_name": "new"})
        if path == "/apis/v2beta1/experiments":
            return self._reply({"experiment_id": "e-1", "display_name": body.get("display_name")})
        if path == "/apis/v2beta1/runs":
            return self._reply({"run_id": "r-1", "display_name": body.get("display_name")})
        if path == "/apis/v2beta1/recurringruns":
            return self._reply({"recurring_run_id": "rr-1", "display_name": body.get("display_name")})
        return self._reply({})


@pytest.fixture
def kfp_api():
    FakeKfp.calls, FakeKfp.pipelines = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKfp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", FakeKfp
    server.shutdown()


def posts(api, suffix):
    return [body for method, path, body in api.calls if method == "POST" and path.split("?")[0].endswith(suffix)]


def test_submit_uploads_then_runs_with_only_the_parameters_given(kfp_api, capsys):
    host, api = kfp_api
    assert main(["submit", "--host", host, "--epochs", "2", "--train-data", "s3://bucket/tickets.csv",
                 "--lora", "--run-name", "nightly"]) == 0
    assert capsys.readouterr().out.strip() == f"{host}/#/runs/details/r-1"
    uploads = [path for method, path, _ in api.calls if method == "POST" and "/pipelines/upload" in path]
    assert len(uploads) == 1 and "name=domaintune-training" in uploads[0]
    run = posts(api, "/runs")[0]
    assert run["display_name"] == "nightly"
    assert run["pipeline_version_reference"]["pipeline_id"] == "p-1"
    assert run["runtime_config"]["parameters"] == {"epochs": 2.0, "train_data": "s3://bucket/tickets.csv", "lora": True}
    assert run["service_account"] == "domaintune-pipeline-runner"


def test_submit_versions_an_existing_pipeline(kfp_api):
    host, api = kfp_api
    api.pipelines["domaintune-training"] = "p-9"
    assert main(["submit", "--host", host]) == 0
    versions = [path for method, path, _ in api.calls if method == "POST" and "upload_version" in path]
    assert len(versions) == 1 and "pipelineid=p-9" in versions[0].lower()
    assert posts(api, "/runs")[0]["runtime_config"]["parameters"] == {}


def test_schedule_is_a_recurring_run_one_at_a_time_without_catchup(kfp_api, capsys):
    host, api = kfp_api
    assert main(["schedule", "--host", host, "--cron", "0 3 * * 1", "--train-data", "s3://b/t.csv"]) == 0
    assert capsys.readouterr().out.strip() == f"{host}/#/recurringrun/details/rr-1"
    job = posts(api, "/recurringruns")[0]
    assert job["max_concurrency"] == "1" or job["max_concurrency"] == 1
    assert job["no_catchup"] is True
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 1"
    assert job["runtime_config"]["parameters"] == {"train_data": "s3://b/t.csv", "data_version": "[[ScheduledTime]]"}


def test_schedule_bad_cron_and_explicit_data_version_are_usage_errors(kfp_api, capsys):
    host, api = kfp_api
    assert main(["schedule", "--host", host, "--cron", "every night"]) == 2
    assert "--cron" in capsys.readouterr().err
    assert main(["schedule", "--host", host, "--cron", "0 3 * * *", "--data-version", "v1"]) == 2
    assert not posts(api, "/recurringruns")
