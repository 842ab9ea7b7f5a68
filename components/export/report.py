"""The export report's environment facts (sizes, CPU flags, versions) and its Markdown rendering."""
from __future__ import annotations

import json
import os
import platform

from domaintune.components.inference.onnx_backend import physical_cores


def _size_mb(path: str) -> float:
    size = os.path.getsize(path)
    if os.path.exists(path + ".data"):
        size += os.path.getsize(path + ".data")
    return round(size / 1e6, 2)


def _cpu_flags() -> dict:
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {"machine": platform.machine(), "processor": platform.processor() or None,
            "avx512_vnni": "avx512_vnni" in flags, "avx_vnni": "avx_vnni" in flags,
            "avx512_bf16": "avx512_bf16" in flags, "amx_int8": "amx_int8" in flags,
            "physical_cores_used": physical_cores()}


def _versions() -> dict:
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def render_report(report: dict) -> str:
    m, s, p = report["metrics"], report["sizes"], report["parity"]
    q = report["settings"]["quantization"]
    columns = [c for c in next(iter(m.values())) if c != "n"]
    lines = [
        "# Export report", "",
        f"**Deployable: {report['deployable']}** (`{report['deployable_file']}`): {report['reason']}.", "",
        "## Quality on the test split", "",
        "| model | " + " | ".join(columns) + " | n |", "|---|" + "---|" * (len(columns) + 1),
        *[f"| {name} | " + " | ".join(f"{v[c]:.4f}" for c in columns) + f" | {v['n']} |" for name, v in m.items()],
        "",
        f"int8 {report['quality_metric']} drop vs PyTorch fp32: {report['int8_quality_drop'] * 100:.2f} points "
        f"(allowed {report['max_int8_drop'] * 100:.2f}); int8 and PyTorch agree on "
        f"{p['int8_label_agreement'] * 100:.1f}% of predictions.", "",
        "## Parity", "",
        f"Max |logit| difference ONNX fp32 vs PyTorch fp32: {p['max_abs_logit_diff']:.2e} on {p['n']} texts "
        f"(threshold {p['threshold']:g}); int8 vs PyTorch: {p['int8_max_abs_logit_diff']:.2e}.", "",
        "## Size", "",
        f"fp32 {s['onnx_fp32_mb']:.1f} MB, int8 {s['onnx_int8_mb']:.1f} MB ({s['int8_over_fp32'] * 100:.0f}% of fp32).",
        "",
    ]
    lat = report.get("latency")
    if lat:
        backends = list(next(iter(lat["results"].values())))
        lines += ["## Latency (ms per batch, median / p90)", "",
                  f"{lat['runs']} timed runs per backend in {lat['rounds']} blocks, each after {lat['warmup']} warm-up runs; threads: torch "
                  f"{lat['threads']['torch']}, onnxruntime {lat['threads']['onnxruntime']}.", "",
                  "| batch x tokens | " + " | ".join(backends) + " |", "|---|" + "---|" * len(backends)]
        for shape, r in lat["results"].items():
            lines.append(f"| {shape} | " + " | ".join(f"{r[b]['median_ms']:.1f} / {r[b]['p90_ms']:.1f}" for b in backends) + " |")
        lines += ["", "Speed-ups (median): " + "; ".join(
            f"{shape}: " + ", ".join(f"{k.replace('_vs_', ' vs ')} {v:.2f}x" for k, v in sp.items())
            for shape, sp in lat["speedups"].items()), ""]
    opt = report["settings"]["optimize"]
    lines += ["## Settings", "",
              f"- exporter: {report['settings']['exporter']}, opset {report['settings']['opset']}, "
              f"inputs {', '.join(report['settings']['inputs'])}, max_length {report['settings']['max_length']}",
              f"- graph fusions: {json.dumps(opt['fused_operators']) if opt else 'none in the file (the session applies its level-ALL fusions at load time)'}",
              f"- quantization: dynamic, weights {q['weight_type']}, activations {q['activation_type']}, "
              f"per_channel {q['per_channel']}, reduce_range {q['reduce_range']}; {json.dumps(q['quantized_operators'])}",
              f"- session: {json.dumps(report['settings']['session'])}",
              f"- cpu: {json.dumps(report['settings']['cpu'])}",
              f"- versions: {json.dumps(report['settings']['versions'])}", ""]
    return "\n".join(lines)
