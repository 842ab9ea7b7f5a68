"""MFU: our finetune stage's achieved training FLOP/s as a fraction of this CPU's measured matmul peaks.

    python -m bench.mfu --json OUT [--rows 3000] [--recipe-steps 8]

1. Peaks: `torch.matmul` at a few sizes (square 512/1024/2048 and MiniLM's training shapes), fp32 and bf16,
   at the stage's thread count (torch default: 2 here); best of 3 timings per size, peak = best size.
   Measured before and after the training run; the mean of both is the reference (the machine is shared).
2. Training: `run_finetune` with the pipeline's defaults (epochs=1) on an SST-2 sample (ingest + tokenize
   with the stage functions beforehand). Its history counts the real and padded tokens of every training
   batch and the time spent in optimizer steps alone (`timing.step_seconds`, `timing.step_cpu_seconds`).
3. FLOPs, counted exactly like this (matmul FLOPs only; LayerNorm, softmax, GELU, dropout, embedding
   gathers and the optimizer are not counted, as usual for MFU):
   - N = matmul weights of the encoder layers = layers x (4 d^2 + 2 d d_ff) (Q, K, V, O, FFN in and out;
     MiniLM-L6: 6 x (4*384^2 + 2*384*1536) = 10,616,832). Embedding matrices are lookups: 0 FLOPs.
   - per token, forward + backward: 6 N (2 N forward, 2 N for input gradients, 2 N for weight gradients).
   - attention, per layer and sequence of (padded) length L: QK^T and AV are 2 L^2 d each forward,
     x3 for forward + backward: 12 L^2 d per layer.
   - pooler + classifier, per example: 6 (d^2 + d C).
   "Model FLOPs" use the real tokens (sum of l^2 from the dataset for attention); "hardware FLOPs" the
   padded batches the CPU actually computed (sum of B L^2 recorded by the stage).
   MFU = model FLOP/s / peak; HFU = hardware FLOP/s / peak. Both per wall second and per CPU second
   (FLOPs / process CPU seconds, vs the peak's FLOPs per CPU second): the latter moves far less with load.
4. Context: the tutorials' recipe (fp32, padded to 128, batch 16) for a few steps, same counting.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from bench import _common as C


def matmul_peaks(threads: int, seconds: float = 0.4) -> dict:
    import torch

    torch.set_num_threads(threads)
    shapes = {"512^3": (512, 512, 512), "1024^3": (1024, 1024, 1024), "2048^3": (2048, 2048, 2048),
              "ffn_in 512x384x1536": (512, 384, 1536), "ffn_out 512x1536x384": (512, 1536, 384),
              "qkv 512x384x384": (512, 384, 384), "ffn_in 2048x384x1536": (2048, 384, 1536)}
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).replace("torch.", "")
        out[name] = {}
        for label, (m, k, n) in shapes.items():
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            for _ in range(3):
                a @ b
            best_wall, best_cpu = 0.0, 0.0
            for _ in range(3):
                reps, w0, c0 = 0, time.perf_counter(), time.process_time()
                while time.perf_counter() - w0 < seconds / 3 or reps < 3:
                    a @ b
                    reps += 1
                w, c = time.perf_counter() - w0, time.process_time() - c0
                flops = 2 * m * k * n * reps
                best_wall = max(best_wall, flops / w)
                best_cpu = max(best_cpu, flops / c) if c > 0 else best_cpu
            out[name][label] = {"gflops": round(best_wall / 1e9, 1), "gflops_per_cpu_second": round(best_cpu / 1e9, 1)}
        out[name]["peak_gflops"] = max(v["gflops"] for k, v in out[name].items() if isinstance(v, dict))
        out[name]["peak_gflops_per_cpu_second"] = max(v["gflops_per_cpu_second"] for k, v in out[name].items()
                                                      if isinstance(v, dict))
    return out


def model_shape(model_dir: str) -> dict:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    d, ff, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    return {"d": d, "d_ff": ff, "layers": layers, "N_matmul": layers * (4 * d * d + 2 * d * ff)}


def training_flops(shape: dict, tokens: int, sum_len_sq: int, examples: int, classes: int) -> float:
    d, layers = shape["d"], shape["layers"]
    return 6 * shape["N_matmul"] * tokens + 12 * d * layers * sum_len_sq + 6 * (d * d + d * classes) * examples


def recipe_steps(model_dir: str, splits: str, steps: int, shape: dict, classes: int) -> dict:
    """A few steps of the tutorials' recipe for context (fp32, max_length padding 128, batch 16)."""
    import pandas as pd
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    train = pd.read_parquet(os.path.join(splits, "train.parquet")).head(16 * (steps + 1))
    enc = tok(train["text"].tolist(), padding="max_length", truncation=True, max_length=128, return_tensors="pt")
    y = torch.tensor(train["label"].to_numpy())
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=classes).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(i):
        s = slice(16 * i, 16 * (i + 1))
        model(input_ids=enc["input_ids"][s], attention_mask=enc["attention_mask"][s], labels=y[s]).loss.backward()
        opt.step()
        opt.zero_grad()

    step(0)  # warm-up
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(1, steps + 1):
        step(i)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    n = 16 * steps
    real = int(enc["attention_mask"][16:16 * (steps + 1)].sum())
    hw = training_flops(shape, n * 128, n * 128 ** 2, n, classes)
    lengths = enc["attention_mask"][16:16 * (steps + 1)].sum(1)
    useful = training_flops(shape, real, int((lengths ** 2).sum()), n, classes)
    return {"steps": steps, "examples_per_second": round(n / wall, 2), "examples_per_cpu_second": round(n / cpu, 2),
            "hardware_gflops": round(hw / wall / 1e9, 1), "model_gflops": round(useful / wall / 1e9, 1),
            "hardware_gflops_per_cpu_second": round(hw / cpu / 1e9, 1),
            "model_gflops_per_cpu_second": round(useful / cpu / 1e9, 1), "padding_fraction": round(1 - real / (n * 128), 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.mfu", description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--rows", type=int, default=3000, help="SST-2 train rows for the training run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recipe-steps", type=int, default=8, help="steps of the tutorials' recipe for context (0: skip)")
    args = ap.parse_args(argv)

    import json

    import torch
    from datasets import load_from_disk

    from domaintune.components.finetune.stage import run_finetune

    work = tempfile.mkdtemp(prefix="bench-mfu-")
    info = C.machine()
    threads = torch.get_num_threads()
    prep = C.prepare_sst2(work, args.rows, args.seed)
    shape = model_shape(prep["model_dir"])
    classes = len(json.load(open(os.path.join(prep["tokens"], "label_map.json")))["labels"])

    peaks_before = matmul_peaks(threads)
    h = run_finetune(prep["tokens"], prep["model_dir"], os.path.join(work, "model"), os.path.join(work, "history.json"),
                     C.finetune_params(epochs=1.0))
    torch.set_num_threads(threads)
    peaks_after = matmul_peaks(threads)
    recipe = recipe_steps(prep["model_dir"], prep["splits"], args.recipe_steps, shape, classes) if args.recipe_steps else None

    lengths = load_from_disk(os.path.join(prep["tokens"], "train"))["length"]
    lengths = list(lengths)
    epochs = h["examples_seen"] / len(lengths)
    tt = h["train_tokens"]
    examples = h["examples_seen"]
    model_flops = training_flops(shape, tt["real"], int(epochs * sum(x * x for x in lengths)), examples, classes)
    hw_flops = training_flops(shape, tt["padded"], tt["padded_squared"], examples, classes)
    step_s, step_cpu = h["timing"]["step_seconds"], h["timing"]["step_cpu_seconds"]
    precision = h["params"]["precision_used"]

    def peak(key):
        return {dt: (peaks_before[dt][key] + peaks_after[dt][key]) / 2 for dt in ("float32", "bfloat16")}

    pk, pk_cpu = peak("peak_gflops"), peak("peak_gflops_per_cpu_second")
    achieved = model_flops / step_s / 1e9
    achieved_hw = hw_flops / step_s / 1e9
    achieved_cpu = model_flops / step_cpu / 1e9
    achieved_hw_cpu = hw_flops / step_cpu / 1e9
    trained = "bfloat16" if precision == "bf16" else "float32"
    result = {
        "precision_trained": precision,
        "mfu_vs_trained_precision_peak": round(achieved / pk[trained], 4),
        "mfu_vs_trained_precision_peak_cpu_time": round(achieved_cpu / pk_cpu[trained], 4),
        "model_gflops_per_s": round(achieved, 1), "hardware_gflops_per_s": round(achieved_hw, 1),
        "model_gflops_per_cpu_s": round(achieved_cpu, 1), "hardware_gflops_per_cpu_s": round(achieved_hw_cpu, 1),
        "peak_gflops": {k: round(v, 1) for k, v in pk.items()},
        "peak_gflops_per_cpu_s": {k: round(v, 1) for k, v in pk_cpu.items()},
        "mfu": {dt: round(achieved / pk[dt], 4) for dt in pk},
        "hfu": {dt: round(achieved_hw / pk[dt], 4) for dt in pk},
        "mfu_cpu_time": {dt: round(achieved_cpu / pk_cpu[dt], 4) for dt in pk},
        "hfu_cpu_time": {dt: round(achieved_hw_cpu / pk_cpu[dt], 4) for dt in pk},
        "training": {"examples": examples, "step_seconds": step_s, "step_cpu_seconds": step_cpu,
                     "examples_per_second_steps": h["examples_per_second_steps"], "train_tokens": tt,
                     "tokens_per_second_real": round(tt["real"] / step_s, 1), "batch_size": h["params"]["batch_size"],
                     "model_flops": model_flops, "hardware_flops": hw_flops,
                     "flops_per_real_token": round(model_flops / tt["real"])},
        "flop_counting": {**shape, "per_token": "6*N_matmul", "attention": "12*L^2*d per layer per sequence",
                          "head": "6*(d^2 + d*C) per example", "not_counted": "LayerNorm, softmax, GELU, dropout, "
                          "embedding gathers, optimizer, casts"},
        "peaks_before": peaks_before, "peaks_after": peaks_after, "recipe": recipe,
        "machine": {**info, "threads": threads, "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
    }
    if recipe:
        result["recipe"]["mfu_fp32"] = round(recipe["model_gflops"] / pk["float32"], 4)
        result["recipe"]["hfu_fp32"] = round(recipe["hardware_gflops"] / pk["float32"], 4)
        result["recipe"]["hfu_fp32_cpu_time"] = round(recipe["hardware_gflops_per_cpu_second"] / pk_cpu["float32"], 4)
    C.write_json(args.json, result)
    rows = [
        ("matmul peak fp32", f"{pk['float32']:.0f}", f"{pk_cpu['float32']:.0f}", "", ""),
        ("matmul peak bf16", f"{pk['bfloat16']:.0f}", f"{pk_cpu['bfloat16']:.0f}", "", ""),
        (f"our stage ({precision}), model FLOPs", f"{achieved:.0f}", f"{achieved_cpu:.0f}",
         f"{achieved / pk[trained]:.1%}", f"{achieved_cpu / pk_cpu[trained]:.1%}"),
        (f"our stage ({precision}), hardware FLOPs", f"{achieved_hw:.0f}", f"{achieved_hw_cpu:.0f}",
         f"{achieved_hw / pk[trained]:.1%}", f"{achieved_hw_cpu / pk_cpu[trained]:.1%}"),
    ]
    if recipe:
        rows.append(("recipe (fp32, pad 128), hardware FLOPs", f"{recipe['hardware_gflops']:.0f}",
                     f"{recipe['hardware_gflops_per_cpu_second']:.0f}", f"{recipe['hardware_gflops'] / pk['float32']:.1%}",
                     f"{recipe['hardware_gflops_per_cpu_second'] / pk_cpu['float32']:.1%}"))
    print(C.table(rows, ("", "GFLOP/s", "GFLOP/cpu-s", "of peak", "of peak (CPU time)")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
