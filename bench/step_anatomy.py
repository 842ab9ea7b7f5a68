"""Where one training step of the finetune stage goes, and how close its matrix multiplies run to the peak.

    python -m bench.step_anatomy --json OUT [--rows 4000] [--batch 16 --batch 32] [--steps 60] [--compile]

The model is set up as the stage sets it up (`prepare_model`: cheap CPU dropout, fixed word embeddings, packed
batches for BERT's heads) and trained on random SST-2 batches packed by the stage's collator, bf16 autocast
where `precision=auto` picks it, fused AdamW, gradient clipping at 1.0: the stage's step without the Trainer
around it. Per batch size:

1. Phases (wall clock, synchronous on the CPU): forward, backward, clipping, optimizer, zeroing, ms per step.
2. torch.profiler over 10 steps: self CPU time by kind of operator (matrix multiplies, casts, dropout's random
   numbers, the fused AdamW, the rest), and the matmuls' own rate: the step's model FLOPs (bench.mfu's
   counting, padded tokens) over the matmul operators' time, against `bench.mfu.matmul_peaks`.
   MFU = (matmul rate / peak) x (matmul share of the step): this says which factor holds it back.
3. With --compile: the same step through `torch.compile(dynamic=True)` (torch's own dropout, which Inductor
   fuses, instead of the cheap one, which graph-breaks): the compile time (warm-up steps, Inductor's caches
   off) and the ms per step.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

from bench import _common as C
from bench import mfu as M

KINDS = {"matmul": ("aten::mm", "aten::addmm", "aten::bmm"), "casts": ("aten::copy_",),
         "dropout_random": ("aten::bernoulli_", "aten::random_"), "adamw": ("aten::_fused_adamw_",)}


def setup(prep: dict, batch: int, steps: int, seed: int, native_dropout: bool = False):
    """The stage's model (train mode) and STEPS + 5 packed random batches of BATCH from PREP's tokens."""
    import torch
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from domaintune.components.finetune.stage import prepare_model
    from domaintune.components.tasks import task_of
    from domaintune.components.training.dropout import CheapCpuDropout
    from domaintune.components.training.packing import PackingCollator

    tokens = prep["tokens"]
    torch.manual_seed(seed)
    model, _ = prepare_model(task_of(tokens), prep["model_dir"], prep["labels"], C.finetune_params())
    if native_dropout:
        for module in model.modules():
            if type(module) is CheapCpuDropout:
                module.__class__ = torch.nn.Dropout
    train = load_from_disk(os.path.join(tokens, "train"))
    columns = [c for c in ("input_ids", "token_type_ids", "labels") if c in train.column_names]
    rows = train.select_columns(columns).to_list()
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(tokens, "tokenizer"))
    collate = PackingCollator.for_model(model, tokenizer.pad_token_id)
    batches = [collate([rows[i] for i in order[k:k + batch]]) for k in range(0, batch * (steps + 5), batch)]
    return model.train(), batches


def make_step(model, precision: str, compiled: bool = False):
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=True)
    forward = torch.compile(model, dynamic=True) if compiled else model
    marks = {"forward": 0.0, "backward": 0.0, "clip": 0.0, "optimizer": 0.0, "zero": 0.0}

    def step(batch: dict) -> None:
        inputs = {k: v for k, v in batch.items() if k != "real_tokens"}
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = forward(**inputs).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        t3 = time.perf_counter()
        optimizer.step()
        t4 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for key, seconds in zip(marks, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, time.perf_counter() - t4)):
            marks[key] += seconds

    return step, marks


def phases(step, marks: dict, batches: list, warmup: int) -> dict:
    """ms per step of each phase over the batches after WARMUP (and the warm-up's own seconds)."""
    t0 = time.perf_counter()
    for batch in batches[:warmup]:
        step(batch)
    warm = time.perf_counter() - t0
    for key in marks:
        marks[key] = 0.0
    timed = batches[warmup:]
    for batch in timed:
        step(batch)
    total = sum(marks.values())
    return {"warmup_steps": warmup, "warmup_seconds": round(warm, 1), "steps": len(timed),
            "ms_per_step": round(1000 * total / len(timed), 2),
            "ms": {k: round(1000 * v / len(timed), 2) for k, v in marks.items()},
            "share": {k: round(v / total, 3) for k, v in marks.items()}}


def profile(step, batches: list, shape: dict, classes: int) -> dict:
    """Self CPU time by operator kind over BATCHES, and the matmuls' rate on the step's (padded) FLOPs."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches:
            step(batch)
    by_op = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    total = sum(by_op.values())
    kinds = {kind: sum(by_op.get(op, 0.0) for op in ops) for kind, ops in KINDS.items()}
    kinds["other"] = total - sum(kinds.values())
    padded = sum(b["input_ids"].numel() for b in batches)
    squared = sum(b["input_ids"].shape[0] * b["input_ids"].shape[1] ** 2 for b in batches)
    examples = sum(len(b["labels"]) for b in batches)
    flops = M.training_flops(shape, padded, squared, examples, classes)
    return {"steps": len(batches), "self_cpu_seconds": round(total, 3),
            "share": {k: round(v / total, 3) for k, v in kinds.items()},
            "matmul_gflops": round(flops / kinds["matmul"] / 1e9, 1), "step_gflops": round(flops / total / 1e9, 1),
            "top_ops": {k: round(v, 4) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])[:12]}}


def measure(prep: dict, batch: int, steps: int, seed: int, precision: str, shape: dict, compiled: bool) -> dict:
    classes = len(prep["labels"])
    model, batches = setup(prep, batch, steps + 10, seed)
    step, marks = make_step(model, precision)
    out = {"batch": batch, "mean_rows_x_width": [round(sum(b["input_ids"].shape[i] for b in batches) / len(batches), 1)
                                                 for i in (0, 1)],
           "eager": phases(step, marks, batches[:steps + 5], warmup=5),
           "profile": profile(step, batches[steps + 5:], shape, classes)}
    if compiled:
        model, batches = setup(prep, batch, steps + 15, seed, native_dropout=True)
        step, marks = make_step(model, precision, compiled=True)
        out["compiled"] = phases(step, marks, batches, warmup=20)
    return out


def compiled_cell(compiled: dict | None) -> str:
    return f"{compiled['ms_per_step']} ({compiled['warmup_seconds']} s)" if compiled else "-"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.step_anatomy", description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--rows", type=int, default=4000, help="SST-2 train rows to draw the batches from")
    ap.add_argument("--batch", type=int, action="append", default=[], help="batch size (repeatable; default 16, 32)")
    ap.add_argument("--steps", type=int, default=60, help="timed steps per batch size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile(dynamic=True) (~1 min to compile)")
    args = ap.parse_args(argv)
    if args.compile:  # the compile time a new process pays: not Inductor's on-disk cache of an earlier run
        os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"

    import torch

    from domaintune.components.training.precision import pick_precision

    prep = C.prepare_sst2(tempfile.mkdtemp(prefix="bench-anatomy-"), args.rows, args.seed)
    shape = M.model_shape(prep["model_dir"])
    prep["labels"] = json.load(open(os.path.join(prep["tokens"], "label_map.json")))["labels"]
    precision = pick_precision("auto")
    threads = torch.get_num_threads()
    peaks = M.matmul_peaks(threads)
    runs = [measure(prep, b, args.steps, args.seed, precision, shape, args.compile)
            for b in args.batch or [16, 32]]
    torch.set_num_threads(threads)
    trained = "bfloat16" if precision == "bf16" else "float32"
    for run in runs:
        p = run["profile"]
        p["matmul_of_peak"] = round(p["matmul_gflops"] / peaks[trained]["peak_gflops"], 3)
        p["step_of_peak"] = round(p["step_gflops"] / peaks[trained]["peak_gflops"], 3)
    C.write_json(args.json, {"precision": precision, "peaks": peaks, "runs": runs,
                             "machine": {**C.machine(), "threads": threads}})
    rows = []
    for run in runs:
        e, p = run["eager"], run["profile"]
        rows.append((run["batch"], "x".join(map(str, run["mean_rows_x_width"])), e["ms_per_step"],
                     " / ".join(f"{e['ms'][k]:.1f}" for k in e["ms"]),
                     " / ".join(f"{p['share'][k]:.0%}" for k in p["share"]),
                     f"{p['matmul_of_peak']:.0%}", f"{p['step_of_peak']:.0%}",
                     compiled_cell(run.get("compiled"))))
    print(f"{precision}, matmul peak {peaks[trained]['peak_gflops']} GFLOP/s")
    print(C.table(rows, ("batch", "rows x width", "ms/step", "fwd / bwd / clip / opt / zero ms",
                         "matmul / casts / dropout rng / adamw / other", "matmul rate of peak",
                         "step of peak (HFU)", "compiled ms/step (compile)")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
