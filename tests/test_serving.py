"""`domaintune serve` over real HTTP on 127.0.0.1 (components/serving/).

Two versions of a tiny random BERT are registered on a SQLite MLflow store (tests/test_registry.py's
helpers): v1 as made, v2 with its head biased to `shipping`, so the two answer differently. The servers
are the installed `domaintune serve` in a subprocess, as a user or a pod runs it, on a free port; answers
are compared with `domaintune predict` on the same texts, and the V2 protocol is spoken by tritonclient
(NVIDIA's client, another project's code), MLflow's by MLflow's own scoring-server client.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
import requests
from conftest import TINY, served_without_torch
from test_cli import cli, one_clear_line
from test_mlflow_server import free_port
from test_registry import register_params, run_inputs, stage_outputs

BIN = os.path.dirname(sys.executable)
NAME = "served"
TEXTS = pd.read_csv(TINY)["text"].astype(str).tolist()[:24]


# ------------------------------------------------------------------------------------------- fixtures

def biased_copy(out: dict, root: str) -> dict:
    """OUT's stage outputs with the model's head biased to `shipping`, re-exported to ONNX."""
    import torch
    from transformers import BertForSequenceClassification

    from domaintune.components.export.stage import ExportParams, run_export

    shutil.copytree(out["root"], root)
    shutil.rmtree(os.path.join(root, "export"))
    model_dir = os.path.join(root, "model")
    model = BertForSequenceClassification.from_pretrained(model_dir)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 0.0, 5.0]))
    model.save_pretrained(model_dir)
    run_export(model_dir, os.path.join(root, "splits", "test.parquet"), os.path.join(root, "export"),
               ExportParams(max_int8_drop=0.99, export_latency_runs=0), typical_tokens=8)
    return {"root": root, "model": model_dir, "export": os.path.join(root, "export")}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """v1 (random head) and v2 (biased to shipping) of NAME; champion -> v1; v1's run directory."""
    from mlflow import MlflowClient

    from domaintune.components.register.stage import run_register

    root = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    first = stage_outputs(root / "v1")
    second = biased_copy(first, str(root / "v2"))
    run_dir = root / "run"
    cwd = os.getcwd()
    os.chdir(root)  # the experiment's artifacts (./mlruns) go to the temporary directory, not the checkout
    try:
        summary = run_register(run_inputs(first), str(run_dir / "summary.json"), register_params(uri, NAME), "kfp-v1")
        run_register(run_inputs(second), str(root / "v2-summary.json"), register_params(uri, NAME), "kfp-v2")
    finally:
        os.chdir(cwd)
    shutil.copytree(first["export"], run_dir / "deployable")
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    c.set_registered_model_alias(NAME, "champion", "1")
    assert summary["registry"]["version"] == 1
    return {"root": root, "uri": uri, "client": c, "run_dir": str(run_dir), "v1": first, "v2": second}


class Serve:
    """`domaintune serve ARGS` on a free loopback port; `stop()` sends SIGTERM and returns the exit code."""

    def __init__(self, tmp, *args, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = os.path.join(str(tmp), f"serve-{self.port}.log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([os.path.join(BIN, "domaintune"), "serve", *args, "--port", str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                         start_new_session=True)

    def wait_ready(self, seconds: float = 120) -> "Serve":
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.text()[-3000:]}")
            try:
                if requests.get(self.url + "/v2/health/ready", timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"not ready in {seconds} s:\n{self.text()[-3000:]}")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            raise

    def text(self) -> str:
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return f.read()

    def lines(self) -> list[dict]:
        out = []
        for line in self.text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"message": line, "not_json": True})
        return out


@pytest.fixture(scope="module")
def run_server(store, tmp_path_factory):
    server = Serve(tmp_path_factory.mktemp("logs"), "--model", store["run_dir"], "--max-body-bytes", "2000000")
    yield server.wait_ready()
    assert server.stop() == 0, server.text()[-3000:]


def expected_answers(ref: str, texts: list[str], tmp) -> list[dict]:
    """What `domaintune predict` answers for TEXTS (label, score rounded to 4 places)."""
    code, _, err = cli("predict", "--model", ref, "--json", str(tmp / "predicted.json"), "--text", *texts)
    assert code == 0, err[-2000:]
    return json.loads((tmp / "predicted.json").read_text())


def _text(value) -> str:
    """A BYTES element as tritonclient gives it: bytes from binary data, str from JSON data."""
    return value.decode() if isinstance(value, bytes) else str(value)


def same_answers(got: list[dict], want: list[dict]) -> None:
    assert [a["label"] for a in got] == [w["label"] for w in want]
    assert np.allclose([a["score"] for a in got], [w["score"] for w in want], atol=1e-4)


# ------------------------------------------------------------------------------------ three protocols

def test_answers_equal_predict_over_plain_mlflow_and_v2_protocols(run_server, store, tmp_path):
    import tritonclient.http as triton
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    want = expected_answers(os.path.join(store["run_dir"], "deployable"), TEXTS, tmp_path)
    r = requests.post(run_server.url + "/predict", json={"texts": TEXTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model_name"], body["model_version"]) == (NAME, "1")
    assert (r.headers["x-model-name"], r.headers["x-model-version"]) == (NAME, "1")
    same_answers(body["predictions"], want)

    frame = pd.DataFrame({"text": TEXTS})  # MLflow's own client: dataframe_split
    mlflow_answers = ScoringServerClient("127.0.0.1", run_server.port).invoke(frame).get_predictions()
    same_answers(mlflow_answers.to_dict(orient="records"), want)
    for payload in ({"dataframe_records": [{"text": t} for t in TEXTS]}, {"inputs": {"text": TEXTS}},
                    {"instances": TEXTS}):
        r = requests.post(run_server.url + "/invocations", json=payload)
        assert r.status_code == 200 and r.json()["model_version"] == "1", r.text
        same_answers(r.json()["predictions"], want)
    csv_body = "text\n" + "\n".join(json.dumps(t) for t in TEXTS)
    r = requests.post(run_server.url + "/invocations", data=csv_body.encode(), headers={"content-type": "text/csv"})
    same_answers(r.json()["predictions"], want)

    client = triton.InferenceServerClient(f"127.0.0.1:{run_server.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
    meta = client.get_model_metadata(NAME)
    assert meta["versions"] == ["1"] and meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "score", "scores"]
    for binary_in in (True, False):
        tensor = triton.InferInput("text", [len(TEXTS)], "BYTES")
        tensor.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object), binary_data=binary_in)
        for outputs in (None, [triton.InferRequestedOutput("label", binary_data=False),
                               triton.InferRequestedOutput("score", binary_data=True),
                               triton.InferRequestedOutput("scores", binary_data=not binary_in)]):
            result = client.infer(NAME, [tensor], outputs=outputs, request_id="r-1")
            response = result.get_response()
            assert (response["model_name"], response["model_version"], response["id"]) == (NAME, "1", "r-1")
            labels = [_text(v) for v in result.as_numpy("label")]
            same_answers([{"label": lab, "score": s} for lab, s in zip(labels, result.as_numpy("score"))], want)
            scores = result.as_numpy("scores")
            assert (scores is None) == (outputs is None)
            if scores is not None:
                assert scores.shape == (len(TEXTS), 3) and np.allclose(scores.sum(axis=1), 1, atol=1e-4)
    client.close()

    r = requests.post(run_server.url + "/predict", json={"texts": TEXTS[:2], "details": True})
    first = r.json()["predictions"][0]
    assert set(first["scores"]) == {"account_access", "billing", "shipping"}
    assert first["score"] == max(first["scores"].values())


def test_concurrent_requests_share_batches_and_get_their_own_answers(run_server):
    single = {t: requests.post(run_server.url + "/predict", json={"texts": [t]}).json()["predictions"][0]
              for t in TEXTS[:8]}
    results, errors = [], []

    def client(i: int) -> None:
        with requests.Session() as s:
            for j in range(12):
                texts = [TEXTS[(i + j) % 8], TEXTS[(i * 3 + j) % 8]]
                r = s.post(run_server.url + "/predict", json={"texts": texts})
                (results if r.status_code == 200 else errors).append((texts, r))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(results) == 16 * 12
    for texts, r in results:
        for text, answer in zip(texts, r.json()["predictions"]):  # int8 activations are scaled per batch
            assert answer["label"] == single[text]["label"] and abs(answer["score"] - single[text]["score"]) < 1e-3
    metrics = requests.get(run_server.url + "/metrics").text
    count = float(_metric(metrics, "domaintune_serving_batch_requests_count"))
    total = float(_metric(metrics, "domaintune_serving_batch_requests_sum"))
    assert total > count, f"no model run served more than one request ({total} requests in {count} runs)"
    for name in ('domaintune_serving_request_duration_seconds_bucket{endpoint="/predict"',
                 "domaintune_serving_batch_size_bucket", "domaintune_serving_in_flight_requests",
                 f'domaintune_serving_model_info{{file="model.int8.onnx",model="{NAME}",version="1"}} 1.0',
                 "domaintune_serving_errors_total"):
        assert name in metrics, name


def _metric(text: str, name: str) -> str:
    return next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " "))


BINARY_HEADER = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                        "parameters": {"binary_data_size": 7}}]}).encode()
BAD = [  # (method, path, body bytes or JSON, headers, status, words the error must contain)
    ("POST", "/predict", b"{not json", {}, 400, ["not valid JSON"]),
    ("POST", "/predict", b"", {}, 400, ["empty request body"]),
    ("POST", "/predict", {"texts": "one text"}, {}, 400, ["texts must be a list", "a string"]),
    ("POST", "/predict", {"texts": ["ok", 3]}, {}, 400, ["texts[1] must be a string"]),
    ("POST", "/predict", {"texts": []}, {}, 400, ["texts is empty"]),
    ("POST", "/predict", {"text": ["a"]}, {}, 400, ["unknown field 'text'"]),
    ("POST", "/predict", ["a"], {}, 400, ["JSON object"]),
    ("POST", "/predict", {"texts": ["a"] * 257}, {}, 413, ["257 texts", "--max-texts"]),
    ("POST", "/predict", {"texts": ["x" * 1_000_000]}, {}, 413, ["texts[0] has 1000000 characters", "--max-text-chars"]),
    ("POST", "/predict", b'{"texts": ["' + b"y" * 2_100_000 + b'"]}', {}, 413, ["--max-body-bytes"]),
    ("POST", "/predict", {"texts": ["a"], "details": "yes"}, {}, 400, ["details must be true or false"]),
    ("POST", "/invocations", {"dataframe_split": {"columns": ["body"], "data": [["a"]]}}, {}, 400,
     ["dataframe_split.columns", "'text'"]),
    ("POST", "/invocations", {"dataframe_records": [{"txt": "a"}]}, {}, 400, ["dataframe_records[0]", "'text'"]),
    ("POST", "/invocations", {"dataframe_split": {"columns": ["text"], "data": [[1]]}}, {}, 400,
     ["dataframe_split.data[0][0] must be a string"]),
    ("POST", "/invocations", {"inputs": ["a"], "instances": ["b"]}, {}, 400, ["exactly one of"]),
    ("POST", "/invocations", b"text\na", {"content-type": "application/xml"}, 415, ["application/xml"]),
    ("POST", "/v2/models/nope/infer", {"inputs": []}, {}, 404, ["unknown model 'nope'", f"'{NAME}'"]),
    ("GET", "/v2/models/nope", None, {}, 404, ["unknown model 'nope'"]),
    ("POST", f"/v2/models/{NAME}/versions/7/infer", {"inputs": []}, {}, 404, ["version 7"]),
    ("POST", f"/v2/models/{NAME}/infer", {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1],
                                                      "data": [1.0]}]}, {}, 400, ["inputs[0].datatype", "BYTES"]),
    ("POST", f"/v2/models/{NAME}/infer", {"inputs": [{"name": "input-0", "datatype": "BYTES", "shape": [1],
                                                      "data": ["a"]}]}, {}, 400, ["inputs[0].name must be 'text'"]),
    ("POST", f"/v2/models/{NAME}/infer", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                                                      "data": ["a"]}]}, {}, 400, ["shape [2]", "data has 1"]),
    ("POST", f"/v2/models/{NAME}/infer", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                                      "data": ["a"]}], "outputs": [{"name": "logits"}]}, {}, 400,
     ["unknown output 'logits'"]),
    ("POST", f"/v2/models/{NAME}/infer", BINARY_HEADER + b"\x05\x00\x00\x00abc",
     {"inference-header-content-length": str(len(BINARY_HEADER))}, 400, ["inputs[0]", "runs past the end"]),
    ("GET", "/v3/anything", None, {}, 404, ["no such endpoint"]),
    ("GET", "/predict", None, {}, 405, ["no such endpoint: GET /predict"]),
]


def test_malformed_requests_get_a_clear_4xx_and_the_server_keeps_serving(run_server):
    for method, path, body, headers, status, needles in BAD:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        r = requests.request(method, run_server.url + path, data=data, headers=headers, timeout=30)
        assert r.status_code == status, (path, body if not isinstance(body, bytes) else body[:80], r.text[:300])
        error = r.json()["error"]
        for needle in needles:
            assert needle in error, (needle, error)
        ok = requests.post(run_server.url + "/predict", json={"texts": ["still there?"]}, timeout=30)
        assert ok.status_code == 200, (path, ok.text)
    lines = run_server.lines()
    assert not [line for line in lines if "Traceback" in json.dumps(line) or line.get("level") == "error"]
    rejected = [line for line in lines if line.get("message") == "request" and line["status"] >= 400
                and line["path"] != "/v2/health/ready"]  # not ready while loading: no error, a state
    assert len(rejected) >= len(BAD) and all(line.get("error") for line in rejected), rejected


# ------------------------------------------------------------------------------------ hot swap

def test_promotion_hot_swaps_with_zero_failed_or_mixed_requests(store, tmp_path):
    import tritonclient.http as triton

    server = Serve(tmp_path, "--model", f"models:/{NAME}@champion", "--tracking-uri", store["uri"],
                   "--poll-seconds", "0.5").wait_ready()
    texts = TEXTS[:3]
    try:
        want = {"1": requests.post(server.url + "/predict", json={"texts": texts}).json()["predictions"]}
        seen, failures, stop = {"predict": [], "v2": []}, [], threading.Event()

        def plain() -> None:
            with requests.Session() as s:
                while not stop.is_set():
                    r = s.post(server.url + "/predict", json={"texts": texts}, timeout=30)
                    if r.status_code != 200:
                        failures.append(r.text)
                        continue
                    body = r.json()
                    seen["predict"].append((time.monotonic(), body["model_version"], body["predictions"]))

        def kserve() -> None:
            client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
            tensor = triton.InferInput("text", [len(texts)], "BYTES")
            tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
            while not stop.is_set():
                try:
                    result = client.infer(NAME, [tensor])
                except Exception as exc:  # noqa: BLE001 - a failed request is what the test counts
                    failures.append(repr(exc))
                    continue
                labels = [_text(v) for v in result.as_numpy("label")]
                answers = [{"label": lab, "score": float(s)} for lab, s in zip(labels, result.as_numpy("score"))]
                seen["v2"].append((time.monotonic(), result.get_response()["model_version"], answers))
            client.close()

        loops = [threading.Thread(target=plain), threading.Thread(target=kserve)]
        for t in loops:
            t.start()
        time.sleep(1.0)
        promoted = time.monotonic()
        store["client"].set_registered_model_alias(NAME, "champion", "2")
        deadline = promoted + 30
        while time.monotonic() < deadline and not all(any(v == "2" for _, v, _ in seen[k]) for k in seen):
            time.sleep(0.1)
        time.sleep(0.5)
        stop.set()
        for t in loops:
            t.join(60)
    finally:
        store["client"].set_registered_model_alias(NAME, "champion", "1")
        code = server.stop()
    assert code == 0, server.text()[-3000:]
    assert not failures, failures[:5]
    lines = server.lines()
    ready = [line for line in lines if line.get("message") == "model_ready"]
    assert [line["version"] for line in ready] == ["1", "2"] and not any(line["torch_imported"] for line in ready)
    swapped = next(line for line in lines if line.get("message") == "model_swapped")
    assert (swapped["from"], swapped["to"]) == ("1", "2")
    assert any(line.get("message") == "model_released" and line["version"] == "1" for line in lines)
    for kind, results in seen.items():
        versions = [v for _, v, _ in results]
        assert versions[0] == "1" and versions[-1] == "2", (kind, versions[:3], versions[-3:])
        first_new = versions.index("2")
        assert set(versions[first_new:]) == {"2"}, f"{kind}: an answer of v1 after v2's"
        switched = results[first_new][0] - promoted
        # one poll interval, plus loading and warming the new version (measured by the server), plus slack
        assert switched <= 0.5 + ready[1]["load_seconds"] + 1.0, (kind, switched, ready[1]["load_seconds"])
        for _, version, answers in results:
            if version == "1":
                same_answers(answers, want["1"])
            else:
                assert [a["label"] for a in answers] == ["shipping"] * 3 and min(a["score"] for a in answers) > 0.95
    print(f"\nswitched {results[first_new][0] - promoted:.2f} s after the promotion; "
          f"{sum(len(r) for r in seen.values())} requests, 0 failed")


# ------------------------------------------------------------------------------------ start and stop

def test_the_served_classifier_imports_neither_torch_nor_transformers(store):
    assert served_without_torch(store["run_dir"] + "/deployable", "my parcel never arrived").startswith("array([[")


def test_bad_references_and_parameters_exit_2_with_one_line(store, tmp_path, capsys):
    from domaintune.pipelines.cli import main

    early = [(["--model", str(tmp_path / "nowhere")], ["nowhere", "no such file"]),  # before listening
             (["--model", "models:/served/Production"], ["not a version number"]),
             (["--model", store["run_dir"], "--max-batch-size", "0"], ["--max-batch-size"]),
             (["--model", store["run_dir"], "--model-name", "a/b"], ["--model-name"])]
    for args, needles in early:
        assert main(["serve", *args, "--port", str(free_port())]) == 2, args
        one_clear_line(capsys.readouterr().err, *needles)
    at_load = [([f"models:/{NAME}/9", "--tracking-uri", store["uri"]], [f"models:/{NAME}/9"]),  # the server stops
               ([f"models:/{NAME}@nobody", "--tracking-uri", store["uri"]], ["alias 'nobody'"]),
               ([store["v1"]["model"]], ["has no ONNX export"])]
    for args, needles in at_load:
        code, _, err = cli("serve", "--model", *args, "--port", str(free_port()))
        assert code == 2, (args, code, err[-2000:])
        one_clear_line(err, *needles)
        assert '"message": "model_load_failed"' in err and "Traceback" not in err


def test_sigterm_drains_in_flight_requests(store, tmp_path):
    server = Serve(tmp_path, "--model", store["v1"]["export"], "--max-batch-size", "8").wait_ready()
    long_texts = [" ".join(TEXTS) + f" {i}" for i in range(256)]
    results = []

    def request() -> None:
        try:
            r = requests.post(server.url + "/predict", json={"texts": long_texts}, timeout=60)
            results.append(r.status_code)
        except requests.RequestException as exc:
            results.append(repr(exc))

    threads = [threading.Thread(target=request) for _ in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # SIGTERM once the requests are queued behind the model
        queued = float(_metric(requests.get(server.url + "/metrics").text, "domaintune_serving_queued_texts"))
        if queued >= 256 * 3:
            break
        time.sleep(0.01)
    code = server.stop()
    for t in threads:
        t.join(60)
    assert code == 0 and results == [200] * 6, (code, results, server.text()[-3000:])
    messages = [line.get("message") for line in server.lines()]
    assert "shutdown" in messages and not any("Traceback" in line for line in server.text().splitlines())
    shutdown = next(line for line in server.lines() if line.get("message") == "shutdown")
    assert shutdown["torch_imported"] is False


# ------------------------------------------------------------------------------------ in-process units

class FakeModel:
    def __init__(self, version: str):
        self.version, self.runs = version, []

    def predict(self, texts, batch_size):
        self.runs.append(list(texts))
        return np.array([[len(t), float(self.version)] for t in texts])


class SlowModel(FakeModel):
    def predict(self, texts, batch_size):
        time.sleep(0.3)
        return super().predict(texts, batch_size)


def test_batcher_groups_by_model_and_waits_only_under_load():
    from domaintune.components.serving.batcher import Batcher, Overloaded
    from domaintune.components.serving.observe import Metrics

    async def scenario():
        batcher = Batcher(max_batch_size=8, max_latency_ms=200, max_queue=10, metrics=Metrics())
        batcher.start()
        one, two = FakeModel("1"), FakeModel("2")
        started = time.monotonic()
        alone = await batcher.submit(one, ["a"])  # a lone request is not held back for the window
        assert time.monotonic() - started < 0.15 and alone.tolist() == [[1, 1]]
        jobs = [batcher.submit(one if i % 2 else two, [f"t{i}", "xx"]) for i in range(4)]
        results = await asyncio.gather(*jobs)
        assert [r[:, 1].tolist() for r in results] == [[2, 2], [1, 1], [2, 2], [1, 1]]
        assert all(len(run) == 4 for run in one.runs[1:] + two.runs)  # each model's jobs ran together
        try:
            await batcher.submit(one, ["x"] * 11)
            raise AssertionError("no back-pressure")
        except Overloaded as exc:
            assert "--max-queue" in str(exc)
        await batcher.drain(5)

    asyncio.run(scenario())


def test_holder_closes_a_swapped_out_model_after_its_last_request():
    from domaintune.components.serving.models import LoadedModel, ModelHolder

    closed = []

    class Predictor:
        def __init__(self, name):
            self.name = name

        def close(self):
            closed.append(self.name)

    holder = ModelHolder()
    holder.swap(LoadedModel("m", "1", None, Predictor("v1"), "/nowhere"))
    in_flight = holder.acquire()
    old = holder.swap(LoadedModel("m", "2", None, Predictor("v2"), "/nowhere"))
    assert old is in_flight and holder.current.version == "2" and closed == []
    holder.release(in_flight)
    assert closed == ["v1"]
    holder.swap(LoadedModel("m", "3", None, Predictor("v3"), "/nowhere"))  # idle: closed at once
    assert closed == ["v1", "v2"]


def test_batcher_runs_batches_on_parallel_workers():
    from domaintune.components.serving.batcher import Batcher
    from domaintune.components.serving.observe import Metrics

    async def scenario():
        batcher = Batcher(max_batch_size=1, max_latency_ms=0, max_queue=10, metrics=Metrics(), workers=2)
        batcher.start()
        model = SlowModel("1")
        started = time.monotonic()
        await asyncio.gather(batcher.submit(model, ["a"]), batcher.submit(model, ["b"]))
        elapsed = time.monotonic() - started
        await batcher.drain(5)
        return elapsed, model.runs

    elapsed, runs = asyncio.run(scenario())
    assert sorted(map(tuple, runs)) == [("a",), ("b",)] and elapsed < 0.55, elapsed


def test_a_gathered_batch_is_spread_over_the_idle_workers_in_length_order():
    """Requests that arrive together are gathered at once; with two idle workers they run as two batches in
    parallel (one batch would leave a core idle), the short texts together and the long ones together."""
    from domaintune.components.serving.batcher import Batcher
    from domaintune.components.serving.observe import Metrics

    async def scenario():
        batcher = Batcher(max_batch_size=32, max_latency_ms=0, max_queue=100, metrics=Metrics(), workers=2)
        batcher.start()
        model = SlowModel("1")
        texts = ["x" * n for n in (9, 1, 8, 2, 7, 3, 6, 4)]
        started = time.monotonic()
        results = await asyncio.gather(*(batcher.submit(model, [t]) for t in texts))
        elapsed = time.monotonic() - started
        await batcher.drain(5)
        return texts, results, elapsed, model.runs

    texts, results, elapsed, runs = asyncio.run(scenario())
    assert [r[0, 0] for r in results] == [len(t) for t in texts]  # each request got its own row
    assert sorted(sorted(map(len, run)) for run in runs) == [[1, 2, 3, 4], [6, 7, 8, 9]], runs
    assert elapsed < 0.55, elapsed  # the two ran at the same time
