"""DDP overhead per optimizer step: the finetune stage in 2 processes (DistributedDataParallel under torchrun,
gloo on CPU) vs 1 process, at the same global batch, side by side on the same data.

    python -m bench.ddp_overhead --json OUT [--rows 1024] [--batch-size 32] [--rounds 2]

Threads: whatever OMP_NUM_THREADS says, per process (launch.py gives each of N processes cores / N when it
is unset). Run with OMP_NUM_THREADS=1 on a 2-core machine, each process has one core of its own, as each rank
has its own GPU: the ratio of step times is then DDP's scaling at 2 (0.5 would be perfect), i.e. half the
compute per rank plus what DDP adds: the gradient all-reduce (gloo over loopback here, NCCL on GPUs), the
sharded data loading and the per-step overhead of a smaller per-device batch.

Runs alternate (1, 2, 1, 2, ...) so a change of machine load hits both. Per step: the stage's own
`timing.step_seconds` (optimizer steps only: no evaluation, checkpoint, model load or process start) over
`global_steps`, and the CPU seconds of rank 0 beside it. Process start (torchrun + imports in each worker)
is reported separately: the whole `run_finetune` call minus its train time.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from bench import _common as C


def one_run(data: dict, work: str, processes: int, batch: int, tag: str) -> dict:
    from domaintune.components.finetune.stage import run_finetune

    params = C.finetune_params(epochs=1, batch_size=batch, num_processes=processes, early_stopping_patience=1)
    started = time.monotonic()
    history = run_finetune(data["tokens"], data["model_dir"], os.path.join(work, f"model-{tag}"),
                           os.path.join(work, f"history-{tag}.json"), params)
    wall = time.monotonic() - started
    steps = history["global_steps"]
    timing = history["timing"]
    return {"processes": processes, "world_size": history["distributed"]["world_size"],
            "per_device_batch": history["distributed"]["per_device_batch_size"], "steps": steps,
            "seconds_per_step": round(timing["step_seconds"] / steps, 4),
            "rank0_cpu_seconds_per_step": round(timing["step_cpu_seconds"] / steps, 4),
            "call_seconds": round(wall, 1), "outside_train_seconds": round(wall - timing["train_seconds"], 1),
            "validation_accuracy": history["validation"].get("accuracy"),
            "precision": history["params"]["precision_used"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=32, help="the global batch, the same in both")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as work:
        data = C.prepare_sst2(work, args.rows)
        runs = []
        for r in range(args.rounds):
            for n in (1, 2):
                runs.append(one_run(data, work, n, args.batch_size, f"{n}-{r}"))
                print(runs[-1], file=sys.stderr, flush=True)
    by = {n: [x for x in runs if x["processes"] == n] for n in (1, 2)}
    median = {n: statistics.median(x["seconds_per_step"] for x in by[n]) for n in by}
    result = {"machine": C.machine(), "rows": args.rows, "global_batch": args.batch_size, "runs": runs,
              "median_seconds_per_step": median,
              "ddp2_over_single_step_time": round(median[2] / median[1], 3),
              "median_outside_train_seconds": {n: statistics.median(x["outside_train_seconds"] for x in by[n])
                                               for n in by}}
    C.write_json(args.json, result)
    print(C.table([(n, median[n], result["median_outside_train_seconds"][n]) for n in (1, 2)],
                  ("processes", "s/step (median)", "s outside train()")))
    print(f"2 processes / 1 process, time per optimizer step: {result['ddp2_over_single_step_time']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
