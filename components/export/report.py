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
    """The Markdown export report (KFP UI, MLflow), rendered from `templates/export_report.md.j2`."""
    from domaintune.components.core.templates import render

    columns = [c for c in next(iter(report["metrics"].values())) if c != "n"]
    backends = list(next(iter(report["latency"]["results"].values()))) if report.get("latency") else []
    return render("domaintune.components.export", "export_report.md.j2",
                  {"r": report, "s": report["settings"], "columns": columns, "backends": backends},
                  {"json": json.dumps})
