"""LoRA vs full fine-tuning with our finetune stage: examples/s, peak RSS, trainable parameters, saved size, dev accuracy.

    python -m bench.lora_vs_full --json OUT [--rows 4000] [--repeats 2] [--lora-lr 5e-4]

Ingest + tokenize an SST-2 sample once (stage functions; dev.tsv is validation and test), then run
`run_finetune` with the pipeline's defaults (epochs=1) as: full, LoRA (`lora=True`, everything else
default), and LoRA at `--lora-lr` (the pipeline's docs: "LoRA usually wants about 5e-4"). Each run is a
separate subprocess (its own peak RSS, from getrusage) and the variants alternate, `--repeats` times.
Peak RSS includes the process's imports (torch, transformers: reported separately as `rss_after_imports`).
Saved size: the model directory the stage writes (LoRA is merged into it, so both are a plain model) and
the trainable weights in fp32 (what an unmerged adapter or a delta would need).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from bench import _common as C

CHILD = r"""
import json, os, resource, sys, time
from bench import _common as C
import torch, transformers, peft  # noqa: F401  (the imports the stage needs, so RSS after imports is comparable)
rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
from domaintune.components.finetune.stage import run_finetune
tokens, model_dir, out, overrides = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
t0, c0 = time.perf_counter(), time.process_time()
h = run_finetune(tokens, model_dir, os.path.join(out, "model"), os.path.join(out, "history.json"),
                 C.finetune_params(**overrides))
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(os.path.join(out, "model")) for f in fs)
weights = os.path.getsize(os.path.join(out, "model", "model.safetensors"))
print("RESULT " + json.dumps({
    "examples": h["examples_seen"], "examples_per_second_steps": h["examples_per_second_steps"],
    "examples_per_second_train": h["examples_per_second"], "examples_per_second_stage": round(h["examples_seen"] / wall, 2),
    "examples_per_cpu_second_steps": round(h["examples_seen"] / h["timing"]["step_cpu_seconds"], 2),
    "timing": h["timing"], "parameters": h["parameters"], "accuracy": h["validation"]["accuracy"],
    "macro_f1": h["validation"]["macro_f1"], "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "rss_after_imports_bytes": rss_imports, "model_dir_bytes": size, "model_weights_bytes": weights,
    "trainable_bytes_fp32": 4 * h["parameters"]["trainable"], "loadavg": os.getloadavg()[0]}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.lora_vs_full", description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--lora-lr", type=float, default=5e-4, help="learning rate of the third variant (0: skip it)")
    args = ap.parse_args(argv)

    work = tempfile.mkdtemp(prefix="bench-lora-")
    info = C.machine()
    prep = C.prepare_sst2(work, args.rows, args.seed)
    variants = {"full": {"epochs": 1.0}, "lora": {"epochs": 1.0, "lora": True}}
    if args.lora_lr:
        variants[f"lora_lr{args.lora_lr:g}"] = {"epochs": 1.0, "lora": True, "learning_rate": args.lora_lr}
    repo = os.path.dirname(C.HERE)
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    for r in range(args.repeats):
        order = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for name in order:
            out = os.path.join(work, f"{name}-{r}")
            proc = subprocess.run([sys.executable, "-c", CHILD, prep["tokens"], prep["model_dir"], out,
                                   json.dumps(variants[name])], cwd=repo, capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.stderr.write(proc.stderr[-3000:])
                return 1
            res = json.loads(line[len("RESULT "):])
            runs[name].append(res)
            print(f"{name} #{r + 1}: {res['examples_per_second_steps']} ex/s, acc {res['accuracy']:.4f}, "
                  f"peak RSS {res['peak_rss_bytes'] / 2**20:.0f} MiB", file=sys.stderr, flush=True)

    def med(name, key):
        return statistics.median(x[key] for x in runs[name])

    summary = {}
    for name in variants:
        first = runs[name][0]
        summary[name] = {
            "examples_per_second_steps": round(med(name, "examples_per_second_steps"), 2),
            "examples_per_second_train": round(med(name, "examples_per_second_train"), 2),
            "examples_per_cpu_second_steps": round(med(name, "examples_per_cpu_second_steps"), 2),
            "peak_rss_mib": round(med(name, "peak_rss_bytes") / 2**20, 1),
            "rss_after_imports_mib": round(med(name, "rss_after_imports_bytes") / 2**20, 1),
            "trainable_parameters": first["parameters"]["trainable"], "total_parameters": first["parameters"]["total"],
            "saved_model_dir_mib": round(first["model_dir_bytes"] / 2**20, 1),
            "trainable_weights_mib_fp32": round(first["trainable_bytes_fp32"] / 2**20, 2),
            "accuracy": first["accuracy"], "accuracy_per_run": [x["accuracy"] for x in runs[name]],
            "examples_per_second_steps_per_run": [x["examples_per_second_steps"] for x in runs[name]],
        }
    result = {"summary": summary, "runs": runs, "variants": variants,
              "data": {"rows_sampled": args.rows, "rows": prep["rows"]},
              "machine": {**info, "loadavg_end": [round(x, 2) for x in os.getloadavg()]}}
    C.write_json(args.json, result)
    rows = [(n, s["examples_per_second_steps"], s["examples_per_cpu_second_steps"], s["peak_rss_mib"],
             f"{s['trainable_parameters']:,}", s["saved_model_dir_mib"], s["trainable_weights_mib_fp32"], f"{s['accuracy']:.4f}")
            for n, s in summary.items()]
    print(C.table(rows, ("", "ex/s (steps)", "ex/cpu-s", "peak RSS MiB", "trainable", "saved MiB", "trainable MiB", "dev acc")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
