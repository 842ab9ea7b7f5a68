"""Serving under load on loopback: `domaintune serve` vs `mlflow models serve` vs the tutorials' recipe.

    python -m bench.serving_load --json OUT [--work DIR] [--model models:/NAME/N --tracking-uri URI]
        [--clients 1,4,16] [--seconds 20] [--max-requests 20000] [--warmup-seconds 2]

The same registered version behind three servers, started side by side on free 127.0.0.1 ports:
- **ours**: `domaintune serve --model models:/NAME/N` (ONNX deployable, dynamic batching);
- **mlflow**: `mlflow models serve -m models:/NAME/N --env-manager local` (the version's pyfunc: one
  `predict` per request, on the same ONNX deployable through the same predictor, MLflow's defaults);
- **recipe**: the tutorials' FastAPI app calling a transformers `pipeline("text-classification")` per
  request on the version's Hugging Face model (PyTorch): bench/serving_recipe.py.

Without `--model`, a model is made first: `domaintune run` on the bundled support tickets (1 epoch, the
packaged MiniLM, gate thresholds at 0 so it registers) into `--work` (reused on a second call).

Each client sends one ticket text per request (seeded random order from examples/support_tickets.csv)
and waits for the answer before the next (closed loop); ours and mlflow get the same `/invocations`
body (`dataframe_split`), the recipe its `{"text": ...}`. Per configuration (server x clients): a warm-up
that is not counted, then at most `--seconds` seconds and `--max-requests` requests. Servers are measured
one at a time (the others idle), configurations interleaved so that machine load drifts hit all three.
Reports requests/s, p50/p99 latency, errors, and the server's CPU seconds per 1,000 requests.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

from bench import _common as C

REPO = os.path.dirname(C.HERE)
TICKETS = os.path.join(REPO, "examples", "support_tickets.csv")
BIN = os.path.dirname(sys.executable)
MODEL_NAME = "bench-serving"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------- the model

def make_model(work: str) -> tuple[str, str]:
    """(tracking URI, models:/NAME/N) of a version `domaintune run` registered in WORK (made once)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{os.path.join(work, 'mlflow.db')}"
    os.makedirs(work, exist_ok=True)
    if os.path.isfile(os.path.join(work, "mlflow.db")):
        versions = MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions(f"name = '{MODEL_NAME}'")
        if versions:
            return uri, f"models:/{MODEL_NAME}/{max(int(v.version) for v in versions)}"
    print("making the model: domaintune run, 1 epoch on the bundled tickets ...", file=sys.stderr, flush=True)
    proc = subprocess.run([os.path.join(BIN, "domaintune"), "run", "--epochs", "1", "--min-macro-f1", "0",
                           "--max-flip-rate", "1", "--max-slice-gap", "1", "--model-name", MODEL_NAME,
                           "--mlflow-tracking-uri", uri, "--output", os.path.join(work, "run")],
                          cwd=work, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"domaintune run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.load(open(os.path.join(work, "run", "summary.json")))
    return uri, f"models:/{MODEL_NAME}/{summary['registry']['version']}"


def hf_directory(uri: str, ref: str, dest: str) -> tuple[str, str]:
    """The version's Hugging Face model (what the recipe loads) and which ONNX file it ships."""
    from domaintune.components.registry.client import ONNX_ARTIFACT, HF_ARTIFACT, client, download_part, resolve_version

    c = client(uri)
    mv = resolve_version(c, ref)
    _, hf = download_part(c, mv, dest, (HF_ARTIFACT,))
    _, onnx = download_part(c, mv, dest, (ONNX_ARTIFACT,))
    report = json.load(open(os.path.join(onnx, "export_report.json")))
    return hf, report.get("deployable", "?")


# ------------------------------------------------------------------------------------------- servers

class Proc:
    def __init__(self, name: str, args: list[str], ready_path: str, log_dir: str, env: dict | None = None):
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_path = ready_path
        self.log = os.path.join(log_dir, f"{name}.log")
        args = [a.replace("{port}", str(self.port)) for a in args]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, **(env or {})})
        self.started = time.monotonic()
        self.startup_seconds = None

    def wait(self, seconds: float = 300) -> "Proc":
        import urllib.request

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"{self.name} exited {self.proc.returncode}:\n{open(self.log).read()[-3000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as r:
                    if r.status == 200:
                        self.startup_seconds = round(time.monotonic() - self.started, 1)
                        return self
            time.sleep(0.3)
        sys.exit(f"{self.name}: {self.url}{self.ready_path} not ready in {seconds:.0f} s")

    def cpu_seconds(self) -> float:
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0.0
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def body_for(server: str, text: str) -> tuple[str, bytes]:
    if server == "recipe":
        return "/predict", json.dumps({"text": text}).encode()
    return "/invocations", json.dumps({"dataframe_split": {"columns": ["text"], "data": [[text]]}}).encode()


# ------------------------------------------------------------------------------------------- load

async def _load(url: str, server: str, texts: list[str], clients: int, warmup: float, seconds: float,
                max_requests: int, seed: int, on_measure) -> dict:
    import aiohttp

    rng = random.Random(seed)
    order = [rng.choice(texts) for _ in range(max_requests + clients * 1000)]
    latencies, errors, counter = [], [], {"next": 0, "done": 0}
    phase = {"measuring": False, "stop": False}
    headers = {"content-type": "application/json"}

    async def client(session):
        while not phase["stop"]:
            i = counter["next"]
            counter["next"] += 1
            path, body = body_for(server, order[i % len(order)])
            started = time.perf_counter()
            try:
                async with session.post(url + path, data=body, headers=headers) as r:
                    await r.read()
                    ok = r.status == 200
                    status = r.status
            except aiohttp.ClientError as exc:
                ok, status = False, repr(exc)
            elapsed = time.perf_counter() - started
            if phase["measuring"]:
                if ok:
                    latencies.append(elapsed)
                else:
                    errors.append(status)
                counter["done"] += 1
                if counter["done"] >= max_requests:
                    phase["stop"] = True

    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        tasks = [asyncio.create_task(client(session)) for _ in range(clients)]
        await asyncio.sleep(warmup)
        cpu0 = on_measure()
        phase["measuring"], t0 = True, time.perf_counter()
        while not phase["stop"] and time.perf_counter() - t0 < seconds:
            await asyncio.sleep(0.05)
        phase["stop"] = True
        wall = time.perf_counter() - t0
        await asyncio.gather(*tasks)
    return {"latencies": latencies, "errors": errors, "wall": wall, "cpu": on_measure() - cpu0}


def measure(proc: Proc, texts: list[str], clients: int, args) -> dict:
    import numpy as np

    raw = asyncio.run(_load(proc.url, proc.name, texts, clients, args.warmup_seconds, args.seconds,
                            args.max_requests, seed=clients, on_measure=proc.cpu_seconds))
    cpu = raw["cpu"]  # the measured window's (and the last in-flight requests')
    lat = np.asarray(raw["latencies"]) * 1000
    n = len(lat)
    return {"server": proc.name, "clients": clients, "requests": n, "errors": len(raw["errors"]),
            "error_examples": [str(e) for e in raw["errors"][:3]], "seconds": round(raw["wall"], 2),
            "throughput_rps": round(n / raw["wall"], 1) if raw["wall"] else 0.0,
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if n else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if n else None,
            "server_cpu_s": round(cpu, 2), "loadavg_after": [round(x, 2) for x in os.getloadavg()]}


def answers(proc: Proc, texts: list[str]) -> list[str]:
    import requests

    labels = []
    for text in texts:
        path, body = body_for(proc.name, text)
        r = requests.post(proc.url + path, data=body, headers={"content-type": "application/json"}, timeout=60)
        r.raise_for_status()
        out = r.json()
        labels.append(out["label"] if proc.name == "recipe" else out["predictions"][0]["label"])
    return labels


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.serving_load", description=__doc__.split("\n")[0])
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--work", default=os.path.join(REPO, "bench", "results", "serving"),
                    help="where the model is made (and found again) when --model is not given")
    ap.add_argument("--model", help="models:/NAME/N (default: make one in --work)")
    ap.add_argument("--tracking-uri", default="")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per configuration (at most)")
    ap.add_argument("--max-requests", type=int, default=20000, help="measured requests per configuration (at most)")
    ap.add_argument("--warmup-seconds", type=float, default=2.0)
    ap.add_argument("--servers", default="ours,mlflow,recipe")
    args = ap.parse_args(argv)
    import pandas as pd

    if args.model:
        uri, ref = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", ""), args.model
    else:
        uri, ref = make_model(os.path.abspath(args.work))
    logs = os.path.join(os.path.abspath(args.work), "logs")
    os.makedirs(logs, exist_ok=True)
    hf, deployable = hf_directory(uri, ref, os.path.join(os.path.abspath(args.work), "hf"))
    texts = pd.read_csv(TICKETS)["text"].astype(str).tolist()
    env = {"MLFLOW_TRACKING_URI": uri, "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}  # mlflow execs uvicorn
    specs = {
        "ours": ([os.path.join(BIN, "domaintune"), "serve", "--model", ref, "--port", "{port}", "--no-access-log"],
                 "/v2/health/ready"),
        "mlflow": ([os.path.join(BIN, "mlflow"), "models", "serve", "-m", ref, "--env-manager", "local",
                    "-h", "127.0.0.1", "-p", "{port}"], "/ping"),
        "recipe": ([sys.executable, "-m", "bench.serving_recipe", hf, "{port}"], "/ping"),
    }
    names = [s for s in args.servers.split(",") if s]
    procs = {}
    try:
        for name in names:  # one at a time, so each start-up is measured on a quiet machine
            procs[name] = Proc(name, specs[name][0], specs[name][1], logs, env).wait()
            print(f"{name} ready in {procs[name].startup_seconds} s", file=sys.stderr, flush=True)
        labels = {name: answers(p, texts[:40]) for name, p in procs.items()}
        results = []
        for i, clients in enumerate(int(c) for c in args.clients.split(",")):
            for name in names[i % len(names):] + names[:i % len(names)]:  # rotate the order per level
                row = measure(procs[name], texts, clients, args)
                results.append(row)
                print(f"{name:7s} {clients:3d} clients  {row['throughput_rps']:8.1f} req/s  p50 {row['p50_ms']} ms  "
                      f"p99 {row['p99_ms']} ms  errors {row['errors']}", file=sys.stderr, flush=True)
    finally:
        for p in procs.values():
            p.stop()
    agreement = {name: round(sum(a == b for a, b in zip(labels["ours"], other)) / len(other), 3)
                 for name, other in labels.items() if "ours" in labels}
    out = {"machine": C.machine(), "model": ref, "deployable": deployable, "recipe_model": "PyTorch fp32 (HF model/)",
           "params": vars(args), "startup_seconds": {n: p.startup_seconds for n, p in procs.items()},
           "label_agreement_with_ours": agreement, "results": results}
    C.write_json(args.json, out)
    print(C.table([(r["server"], r["clients"], r["throughput_rps"], r["p50_ms"], r["p99_ms"], r["errors"],
                    round(1000 * r["server_cpu_s"] / max(r["requests"], 1), 2)) for r in results],
                  ("server", "clients", "req/s", "p50 ms", "p99 ms", "errors", "server CPU s / 1k req")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
