"""Inference latency: PyTorch fp32 / bf16 autocast vs onnxruntime fp32 / int8, with the export stage's code.

    python -m bench.inference_latency --model-dir DIR --data PARQUET_OR_TSV --json OUT
        [--onnx-dir EXPORT_DIR] [--runs 20] [--typical-tokens N] [--max-length 128] [--ablation]

`--model-dir` is the Hugging Face model (PyTorch runs it). The ONNX models come from `--onnx-dir` (an
export stage output) or are built here into a temporary directory with the export's defaults.
`--ablation` also builds and times the variants the export's defaults were chosen from (onnxruntime's
transformer fusions, per-tensor weights = plain `quantize_dynamic`, reduce_range, session optimisation
levels, SkipLayerNormFusion left on, 1 thread, no spinning) and scores each model's accuracy on the data. Prints a table; writes everything as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from domaintune.components.core.errors import DomaintuneError
from domaintune.components.core.runtime import set_offline_defaults
from domaintune.components.export import stage as E
from domaintune.components.inference.onnx_backend import FP32_FILE, INT8_FILE, OnnxClassifier, open_session
from domaintune.components.io import storage
from domaintune.components.tasks import task_of


def build(model_dir: str, out: str, model, tokenizer, ablation: bool) -> dict[str, str]:
    """ONNX variants into OUT (with the tokenizer and config beside them): the export's defaults always,
    the ablation's variants on request."""
    tokenizer.save_pretrained(out)
    model.config.save_pretrained(out)
    paths = {"onnx_fp32": os.path.join(out, FP32_FILE), "onnx_int8": os.path.join(out, INT8_FILE)}
    E.export_onnx(model_dir, paths["onnx_fp32"], task_of(model_dir).onnx_outputs())
    defaults = E.ExportParams()
    E.quantize_onnx(paths["onnx_fp32"], paths["onnx_int8"], per_channel=defaults.int8_per_channel,
                    reduce_range=defaults.int8_reduce_range)
    if ablation:
        fused = os.path.join(out, "fused.onnx")
        E.optimize_onnx(paths["onnx_fp32"], fused, model.config)
        paths["onnx_fp32_fused"] = fused
        variants = {
            "onnx_int8_fused": (fused, dict(per_channel=True, reduce_range=False)),
            "onnx_int8_per_tensor": (paths["onnx_fp32"], dict(per_channel=False, reduce_range=False)),
            "onnx_int8_reduce_range": (paths["onnx_fp32"], dict(per_channel=False, reduce_range=True)),
            "onnx_int8_per_channel_reduce_range": (paths["onnx_fp32"], dict(per_channel=True, reduce_range=True)),
        }
        for name, (src, opts) in variants.items():
            paths[name] = os.path.join(out, f"{name}.onnx")
            E.quantize_onnx(src, paths[name], **opts)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.inference_latency", description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", required=True, help="Hugging Face sequence-classification directory")
    ap.add_argument("--data", required=True, help="labeled texts: Parquet, TSV, CSV or JSONL (text/sentence, label)")
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--onnx-dir", help="an export stage output (model.onnx, model.int8.onnx); default: build one")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--typical-tokens", type=int, default=None,
                    help="batch-1 length; default: the data's median token count")
    ap.add_argument("--max-length", type=int, default=128, help="the large shape is 32 x MAX_LENGTH")
    ap.add_argument("--ablation", action="store_true", help="also time and score the variants")
    args = ap.parse_args(argv)
    set_offline_defaults()
    try:
        return run(args)
    except DomaintuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def run(args) -> int:
    model, tokenizer = E.load_torch_model(args.model_dir)
    frame = E.read_labeled(args.data)
    texts = frame["text"].tolist()
    typical = args.typical_tokens or E.typical_length(tokenizer, texts, args.max_length)
    shapes = [(1, typical), (32, args.max_length)]
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        if args.onnx_dir and not args.ablation:
            paths = {"onnx_fp32": os.path.join(args.onnx_dir, FP32_FILE),
                     "onnx_int8": os.path.join(args.onnx_dir, INT8_FILE)}
        else:
            paths = build(args.model_dir, tmp, model, tokenizer, args.ablation)
        sessions = {}
        if args.ablation:
            for level in ("disable", "basic", "extended"):
                sessions[f"onnx_int8_level_{level}"] = open_session(paths["onnx_int8"], level=level)
            sessions["onnx_int8_1_thread"] = open_session(paths["onnx_int8"], intra_op_threads=1)
            sessions["onnx_int8_skip_layer_norm_fusion"] = open_session(paths["onnx_int8"], disabled_optimizers=())
            sessions["onnx_fp32_skip_layer_norm_fusion"] = open_session(paths["onnx_fp32"], disabled_optimizers=())
            sessions["onnx_int8_no_spinning"] = open_session(paths["onnx_int8"], spinning=False)
        result = {"model_dir": os.path.abspath(args.model_dir), "data": os.path.abspath(args.data),
                  "typical_tokens": typical, "sizes_mb": {k: E._size_mb(p) for k, p in paths.items()},
                  "latency": E.measure_latencies(model, tokenizer, paths, texts, shapes=shapes, runs=args.runs,
                                                 warmup=args.warmup, sessions=sessions)}
        if args.ablation:
            y = E.label_ids(frame, E.model_labels(model), args.data)
            ref = E.torch_logits(model, tokenizer, texts, args.max_length)
            accuracy = {"pytorch_fp32": float((ref.argmax(1) == y).mean())}
            for name, path in paths.items():
                logits = OnnxClassifier(path, max_length=args.max_length).predict_logits(texts, E.EVAL_BATCH_SIZE)
                accuracy[name] = float((logits.argmax(1) == y).mean())
            result["accuracy"] = accuracy
    result["settings"] = {"cpu": E._cpu_flags(), "versions": E._versions()}
    print(format_table(result))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)) or ".", exist_ok=True)
    storage.write_json(args.json, result)
    return 0


def format_table(result: dict) -> str:
    lat = result["latency"]
    shapes = lat["shapes"]
    backends = list(lat["results"][shapes[0]])
    head = f"{'backend':<36}" + "".join(f"{s + ' med/p90 ms':>22}" for s in shapes)
    if "accuracy" in result:
        head += f"{'accuracy':>10}"
    lines = [head]
    for b in backends:
        row = f"{b:<36}" + "".join(
            f"{lat['results'][s][b]['median_ms']:>12.2f} /{lat['results'][s][b]['p90_ms']:>8.2f}" for s in shapes)
        base = b.split("_level_")[0]
        for suffix in ("_1_thread", "_no_spinning", "_skip_layer_norm_fusion"):
            base = base.replace(suffix, "")
        acc = result.get("accuracy", {}).get(base)
        if "accuracy" in result:
            row += f"{acc:>10.4f}" if acc is not None else f"{'':>10}"
        lines.append(row)
    lines.append("speed-ups: " + json.dumps(lat["speedups"]))
    lines.append(f"sizes MB: {json.dumps(result['sizes_mb'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
