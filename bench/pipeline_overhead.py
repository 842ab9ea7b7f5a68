"""Pipeline overhead: `domaintune run` (embedded default) wall time vs the stages' own compute; a cached rerun; `--help` start-up.

    python -m bench.pipeline_overhead --json OUT [--help-runs 5] [--keep]

In a scratch working directory (its own ./domaintune-runs, ./mlflow.db), runs `domaintune run` with no
arguments twice. The first run's wall time is split into: each task's time as the CLI saw it (summary.json
`stages`), what the stage functions themselves report (finetune: `run_finetune`'s own timing from the
training history; evaluate: the export report's seconds where present) and the rest (process start,
imports, kfp.local orchestration, copying results). The second, identical run should hit kfp.local's
cache for ingest, tokenize and finetune (evaluate and register never cache); target: <= 15% of the first.
`domaintune --help` start-up: median of N runs (target <= 1 s).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bench import _common as C


def cli() -> str:
    return os.path.join(os.path.dirname(sys.executable), "domaintune")


def run_pipeline(cwd: str) -> dict:
    before = set(glob.glob(os.path.join(cwd, "domaintune-runs", "*", "summary.json")))
    t0 = time.perf_counter()
    proc = subprocess.run([cli(), "run"], cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    new = sorted(set(glob.glob(os.path.join(cwd, "domaintune-runs", "*", "summary.json"))) - before)
    if not new:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"domaintune run exited {proc.returncode} without a summary.json")
    summary = json.load(open(new[-1]))
    run_dir = os.path.dirname(new[-1])
    history = os.path.join(run_dir, "reports", "history.json")
    history = json.load(open(history)) if os.path.isfile(history) else {}
    stages = {s["name"]: s for s in summary.get("stages", [])}
    own = {}
    if history.get("timing"):
        t = history["timing"]
        own["finetune"] = {"run_finetune_seconds": t.get("stage_seconds"), "train_seconds": t.get("train_seconds"),
                           "step_seconds": t.get("step_seconds"), "eval_seconds": t.get("eval_seconds"),
                           "checkpoint_seconds": t.get("checkpoint_seconds")}
    export = summary.get("export") or {}
    if isinstance(export, dict) and isinstance(export.get("seconds"), dict):
        own["evaluate"] = {"export_seconds": round(sum(export["seconds"].values()), 2), "export_parts": export["seconds"]}
    task_sum = sum(s.get("seconds", 0) for s in stages.values())
    return {"exit_code": proc.returncode, "status": summary.get("status"), "wall_seconds": round(wall, 2),
            "cli_reported_wall_seconds": summary.get("wall_seconds"), "stages": stages,
            "sum_task_seconds": round(task_sum, 2), "outside_tasks_seconds": round(wall - task_sum, 2),
            "stage_own_compute": own, "run_dir": run_dir, "loadavg": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pipeline_overhead", description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--help-runs", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args(argv)

    info = C.machine()
    scratch = tempfile.mkdtemp(prefix="bench-pipeline-")
    env_note = {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "DOMAINTUNE_RUNS_DIR", "MLFLOW_TRACKING_URI")}
    os.environ.pop("DOMAINTUNE_RUNS_DIR", None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    help_times = []
    for _ in range(args.help_runs):
        t0 = time.perf_counter()
        subprocess.run([cli(), "--help"], cwd=scratch, capture_output=True, check=True)
        help_times.append(time.perf_counter() - t0)
    py_times = []
    for _ in range(args.help_runs):  # the floor: a bare interpreter start in the same environment
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], cwd=scratch, check=True)
        py_times.append(time.perf_counter() - t0)

    first = run_pipeline(scratch)
    print(f"first run: {first['wall_seconds']} s, status {first['status']}", file=sys.stderr, flush=True)
    second = run_pipeline(scratch)
    print(f"second run: {second['wall_seconds']} s", file=sys.stderr, flush=True)

    ft = first["stage_own_compute"].get("finetune", {})
    own_total = sum(v for v in [ft.get("run_finetune_seconds"),
                                first["stage_own_compute"].get("evaluate", {}).get("export_seconds")] if v)
    result = {
        "first_run_seconds": first["wall_seconds"], "second_run_seconds": second["wall_seconds"],
        "second_over_first": round(second["wall_seconds"] / first["wall_seconds"], 3),
        "help_seconds_median": round(statistics.median(help_times), 3), "help_seconds_min": round(min(help_times), 3),
        "python_start_seconds_median": round(statistics.median(py_times), 3),
        "first_sum_task_seconds": first["sum_task_seconds"],
        "first_outside_tasks_seconds": first["outside_tasks_seconds"],
        "first_reported_stage_compute_seconds": round(own_total, 2),
        "targets": {"second_over_first_max": 0.15, "help_seconds_max": 1.0},
        "first": first, "second": second, "help_seconds": [round(x, 3) for x in help_times],
        "environment": env_note, "machine": {**info, "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
    }
    C.write_json(args.json, result)
    rows = []
    for name, s in first["stages"].items():
        s2 = second["stages"].get(name, {})
        rows.append((name, f"{s.get('seconds', 0):.1f}", s.get("status"), f"{s2.get('seconds', 0):.1f}", s2.get("status")))
    rows.append(("(outside tasks)", f"{first['outside_tasks_seconds']:.1f}", "", f"{second['outside_tasks_seconds']:.1f}", ""))
    rows.append(("total wall", f"{first['wall_seconds']:.1f}", first["status"], f"{second['wall_seconds']:.1f}", second["status"]))
    print(C.table(rows, ("stage", "run 1 s", "", "run 2 s", "")))
    print(f"second/first {result['second_over_first']:.1%} (target <= 15%);  --help {result['help_seconds_median']:.2f} s "
          f"median (target <= 1 s; bare python {result['python_start_seconds_median']:.2f} s)")
    if ft:
        print(f"finetune task {first['stages'].get('finetune', {}).get('seconds')} s, of which run_finetune "
              f"{ft.get('run_finetune_seconds')} s (steps {ft.get('step_seconds')} s, eval {ft.get('eval_seconds')} s)")
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        print(f"scratch: {scratch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
