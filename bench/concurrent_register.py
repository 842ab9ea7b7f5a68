"""Concurrent pipeline runs registering the same model name on a real MLflow server.

    python -m bench.concurrent_register --json OUT [--runs 4] [--mode warm|cold]

Starts the stack the tests use (tests/test_mlflow_server.py `MlflowServer`: PostgreSQL on 127.0.0.1:5432,
a fresh database, artifacts proxied to an S3 bucket on a moto endpoint, `mlflow server` on a free port),
then starts RUNS `domaintune run`s at once (tiny data, 1 epoch) that all register the model
`bench-concurrent`, and checks: every run exits 0 and registers, the versions are RUNS distinct numbers
1..RUNS, no HTTP 5xx and no traceback in the server log. PostgreSQL's own log is read too (when readable):
unique-key violations there are races that MLflow or register resolve (listed per constraint, with what
resolves them); any other database error fails the benchmark.

Modes (kfp.local cache sharing):
- warm (default): one working directory. A first run (model `bench-warmup`) fills kfp.local's cache, then
  the RUNS concurrent runs share it: ingest, tokenize and finetune are cache hits (only read), evaluate
  and register run concurrently — what the benchmark is about. Sharing a *cold* cache would make every
  run miss and train the same model RUNS times, each writing the same cache entries (kfp.local writes
  them atomically, last writer wins): correct, but wasted work.
- cold: one working directory per run, nothing cached: RUNS whole pipelines at once (training included),
  the worst case for the machine; registrations then arrive spread out by the training jitter.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
TINY = os.path.join(TESTS, "fixtures", "tiny.csv")
PG_LOG = "/var/log/postgresql/postgresql-15-main.log"
MODEL = "bench-concurrent"
HANDLED = {  # PostgreSQL unique violations that are races resolved by design, and who resolves them
    "metric_pk": "MLflow: log_model re-logs the run's metrics linked to the model and skips existing rows",
    "registered_model_pk": "register/MLflow: the loser of creating the registered model uses the winner's",
    "registered_model_alias_pk": "register: the first set of an alias raced; retried (registry.set_alias)",
    "model_version_pk": "MLflow: version number collision; retried with the next number",
    "dataset_pk": "register: the same dataset input logged at once; retried",
    "uq_experiments_workspace_name": "register: the experiment created at once; the loser uses the winner's "
                                     "(registry.experiment_id)",
    "inputs_pk": "register: the same dataset input logged at once; retried",
}


def stage_of(task: str) -> str:
    """`evaluate-op-2` (a task inside a dsl.If branch) -> `evaluate`."""
    return re.sub(r"-op(-\d+)?$", "", task)


def domaintune() -> str:
    return os.path.join(os.path.dirname(sys.executable), "domaintune")


def run_args(uri: str, model: str) -> list[str]:
    return ["run", "--train-data", TINY, "--epochs", "1", "--batch-size", "8", "--learning-rate", "3e-4",
            "--validation-fraction", "0.2", "--test-fraction", "0.2", "--min-macro-f1", "0", "--max-flip-rate", "1",
            "--max-slice-gap", "1", "--export-latency-runs", "0", "--model-name", model, "--mlflow-tracking-uri", uri]


def env() -> dict:
    e = {**os.environ, "PIP_NO_INDEX": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
         "TOKENIZERS_PARALLELISM": "false"}
    for key in ("MLFLOW_TRACKING_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        e.pop(key, None)  # clients need neither S3 credentials nor an endpoint: the server proxies artifacts
    return e


def new_summaries(cwd: str, after: set[str]) -> list[dict]:
    root = os.path.join(cwd, "domaintune-runs")
    new = sorted(p for p in os.listdir(root) if not p.startswith(".") and p not in after) if os.path.isdir(root) else []
    summaries = []
    for name in new:
        path = os.path.join(root, name, "summary.json")
        if os.path.isfile(path):
            with open(path) as f:
                summaries.append(json.load(f))
    return summaries


def server_log_problems(path: str) -> dict:
    statuses = collections.Counter()
    tracebacks = 0
    errors = []
    with open(path, errors="replace") as f:
        for line in f:
            m = re.search(r'"(?:GET|POST|PATCH|DELETE|PUT) (\S+) HTTP/[\d.]+" (\d{3})', line)
            if m:
                statuses[(m.group(2), re.sub(r"\?.*", "", m.group(1)))] += 1
            if "Traceback" in line:
                tracebacks += 1
            if re.search(r"\b(ERROR|CRITICAL)\b|OperationalError|IntegrityError|psycopg2\.", line):
                errors.append(line.strip()[:300])
    return {"http_5xx": sum(n for (s, _), n in statuses.items() if s.startswith("5")),
            "http_4xx": {f"{s} {p}": n for (s, p), n in sorted(statuses.items()) if s.startswith("4")},
            "requests": sum(statuses.values()), "tracebacks": tracebacks, "error_lines": errors[:20]}


def postgres_errors(path: str, offset: int, db: str) -> dict:
    if not os.access(path, os.R_OK):
        return {"readable": False, "path": path}
    by_constraint = collections.Counter()
    other = []
    with open(path, errors="replace") as f:
        f.seek(offset)
        for line in f:
            if f"@{db} " not in line or " ERROR: " not in line:
                continue
            m = re.search(r'violates unique constraint "([^"]+)"', line)
            if m:
                by_constraint[m.group(1)] += 1
            else:
                other.append(line.strip()[:300])
    unhandled = {k: n for k, n in by_constraint.items() if k not in HANDLED}
    return {"readable": True, "path": path, "unique_violations": dict(by_constraint),
            "resolved_by": {k: HANDLED[k] for k in by_constraint if k in HANDLED},
            "unhandled_unique_violations": unhandled, "other_errors": other[:20]}


def start_run(cwd: str, uri: str, model: str, log_path: str) -> tuple[subprocess.Popen, float]:
    log = open(log_path, "w")
    proc = subprocess.Popen([domaintune(), *run_args(uri, model)], cwd=cwd, env=env(), stdout=log,
                            stderr=subprocess.STDOUT)
    log.close()
    return proc, time.monotonic()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="write the result here")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--mode", choices=("warm", "cold"), default="warm")
    parser.add_argument("--pg-log", default=PG_LOG, help="PostgreSQL's log file (read for database errors)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs) afterwards")
    args = parser.parse_args(argv)

    sys.path.insert(0, TESTS)
    from test_mlflow_server import MlflowServer, postgres_problem

    problem = postgres_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="bench-concurrent-")
    result: dict = {"runs": args.runs, "mode": args.mode, "model_name": MODEL, "cpu_count": os.cpu_count(),
                    "load_average_before": os.getloadavg()}
    pg_offset = os.path.getsize(args.pg_log) if os.access(args.pg_log, os.R_OK) else 0
    ok = False
    try:
        with MlflowServer(os.path.join(work, "server")) as server:
            result["server_startup_seconds"] = server.startup_seconds
            cwds = [os.path.join(work, "runs")] * args.runs if args.mode == "warm" else [
                os.path.join(work, f"runs-{i}") for i in range(args.runs)]
            for cwd in set(cwds):
                os.makedirs(cwd, exist_ok=True)
            if args.mode == "warm":
                started = time.monotonic()
                proc, _ = start_run(cwds[0], server.uri, "bench-warmup", os.path.join(work, "warmup.log"))
                result["warmup_exit_code"] = proc.wait()
                result["warmup_seconds"] = round(time.monotonic() - started, 1)
                if result["warmup_exit_code"] != 0:
                    raise RuntimeError(f"warm-up run failed; see {work}/warmup.log")
                warm = new_summaries(cwds[0], set())[0]
                result["warmup_stages"] = {stage_of(st["name"]): [st["status"], st["seconds"]] for st in warm["stages"]}
            before = {cwd: set(os.listdir(os.path.join(cwd, "domaintune-runs")))
                      if os.path.isdir(os.path.join(cwd, "domaintune-runs")) else set() for cwd in set(cwds)}

            started = time.monotonic()
            procs = [start_run(cwd, server.uri, MODEL, os.path.join(work, f"run-{i}.log")) for i, cwd in enumerate(cwds)]
            runs = []
            for i, (proc, t0) in enumerate(procs):
                code = proc.wait()
                runs.append({"exit_code": code, "seconds": round(time.monotonic() - t0, 1)})
            result["wall_seconds"] = round(time.monotonic() - started, 1)

            summaries = [s for cwd in set(cwds) for s in new_summaries(cwd, before[cwd])]
            summaries.sort(key=lambda s: s["registry"]["version"] or 0)
            result["pipeline_runs"] = [{"status": s["status"], "version": s["registry"]["version"],
                                        "aliases": s["registry"]["aliases"], "wall_seconds": s["wall_seconds"],
                                        "stages": {stage_of(st["name"]): [st["status"], st["seconds"]] for st in s["stages"]},
                                        "mlflow_run_id": s["registry"]["run_id"]} for s in summaries]
            result["exit_codes"] = [r["exit_code"] for r in runs]
            for stage in ("evaluate", "register"):
                times = [r["stages"][stage][1] for r in result["pipeline_runs"] if stage in r["stages"]]
                result[f"{stage}_seconds"] = {"min": min(times), "max": max(times)} if times else None
            versions = sorted(s["registry"]["version"] for s in summaries if s["registry"]["version"])

            from mlflow import MlflowClient

            c = MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)
            registered = sorted(int(v.version) for v in c.search_model_versions(f"name = '{MODEL}'"))
            experiment = c.get_experiment_by_name("domaintune")
            mlflow_runs = c.search_runs([experiment.experiment_id], f"tags.model_name = '{MODEL}'") if experiment else []
            result["versions"] = versions
            result["registered_versions"] = registered
            result["mlflow_runs"] = len(mlflow_runs)
            result["aliases"] = {k: int(v) for k, v in c.get_registered_model(MODEL).aliases.items()} if registered else {}
            result["server_log"] = server_log_problems(server.log)
            result["bucket_objects"] = len(server.bucket_keys())
        result["postgres_log"] = postgres_errors(args.pg_log, pg_offset, server.db)
        pg = result["postgres_log"]
        ok = (result["exit_codes"] == [0] * args.runs and versions == list(range(1, args.runs + 1))
              and result["aliases"].get("challenger") == args.runs  # the newest blessed version
              and registered == versions and result["mlflow_runs"] == args.runs
              and result["server_log"]["http_5xx"] == 0 and result["server_log"]["tracebacks"] == 0
              and (not pg.get("readable") or (not pg["unhandled_unique_violations"] and not pg["other_errors"])))
    finally:
        result["ok"] = ok
        result["workdir"] = work if args.keep or not ok else None
        os.makedirs(os.path.dirname(os.path.abspath(args.json)) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: result.get(k) for k in ("ok", "mode", "runs", "wall_seconds", "warmup_seconds", "versions",
                                                 "exit_codes", "evaluate_seconds", "register_seconds")}, indent=None))
    if not ok:
        print(f"concurrent registration failed; logs in {work}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
