"""Sharing the cores: MiniLM training steps alone, two jobs side by side on all cores each, and two side by side
with OMP_NUM_THREADS giving each its share.

    python -m bench.shared_cores --json OUT [--steps 10] [--batch 8] [--length 16] [--jobs 2]

Each job is a fresh process doing most of what a training step of the finetune stage does (sequence
classification, the stage's precision choice, fused AdamW, word embeddings fixed; torch's own dropout, not the
stage's cheaper one), on random token ids of BATCH x LENGTH:
3 warm-up steps, then STEPS timed. Reported: ms per step of every job in each arrangement. This is why the
test suite's xdist workers (tests/conftest.py) and onnxruntime (inference/onnx_backend.physical_cores) obey
OMP_NUM_THREADS.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from bench import _common as C

JOB = r"""
import json, sys, time, torch
from transformers import AutoModelForSequenceClassification
from domaintune.components.io.base_models import resolve_model
from domaintune.components.training.precision import pick_precision
steps, batch, length = map(int, sys.argv[1:4])
model = AutoModelForSequenceClassification.from_pretrained(resolve_model("all-MiniLM-L6-v2"), num_labels=2).train()
model.get_input_embeddings().weight.requires_grad_(False)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
ids = torch.randint(1000, 5000, (batch, length)); labels = torch.randint(0, 2, (batch,))
bf16 = pick_precision("auto") == "bf16"
def step():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
    loss.backward(); opt.step(); opt.zero_grad()
for _ in range(3):
    step()
times = []
for _ in range(steps):
    t = time.perf_counter(); step(); times.append((time.perf_counter() - t) * 1000)
print(json.dumps({"ms_per_step": times, "threads": torch.get_num_threads(), "bf16": bf16}))
"""


def run_jobs(n: int, args, threads: int | None) -> list[dict]:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    procs = [subprocess.Popen([sys.executable, "-c", JOB, str(args.steps), str(args.batch), str(args.length)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env) for _ in range(n)]
    results = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            sys.exit(f"a job failed (exit {p.returncode})")
        r = json.loads(out.strip().splitlines()[-1])
        results.append({"median_ms": round(statistics.median(r["ms_per_step"]), 1), "threads": r["threads"],
                        "bf16": r["bf16"]})
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.shared_cores", description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=16)
    ap.add_argument("--jobs", type=int, default=2, help="jobs side by side")
    args = ap.parse_args(argv)
    from domaintune.components.training.launch import threads_per_process

    cores, share = threads_per_process(1), threads_per_process(args.jobs)
    arrangements = {"alone": run_jobs(1, args, None),
                    f"{args.jobs} side by side, all cores each": run_jobs(args.jobs, args, None),
                    f"{args.jobs} side by side, OMP_NUM_THREADS={share}": run_jobs(args.jobs, args, share)}
    result = {"batch": args.batch, "length": args.length, "steps": args.steps, "cores": cores,
              "arrangements": arrangements, "machine": C.machine()}
    C.write_json(args.json, result)
    rows = [(name, ", ".join(f"{j['median_ms']:.0f}" for j in jobs), jobs[0]["threads"])
            for name, jobs in arrangements.items()]
    print(C.table(rows, ("arrangement", "ms per step (each job)", "threads per job")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
