"""Export: the fine-tuned model as ONNX fp32 and dynamic-int8, checked before anything ships.

In: a fine-tuned Hugging Face model directory and the test split; the task (tasks/) writes the graph(s)
(`export_graph`: one for the classifiers and taggers, an encoder `model.onnx` and a decoder
`model.decoder.onnx` for seq2seq), names the ONNX outputs and the quality metric the int8 check compares
(accuracy for classification, ROUGE-L of greedy summaries for seq2seq).
Out (one directory, written beside and renamed into place, so a failure leaves nothing behind):
`model.onnx` (fp32), `model.int8.onnx`, tokenizer files, `config.json`, `domaintune.json`,
`export_report.json`, `export_report.md`.

Checks (docs/ARCHITECTURE.md, "The gate", rule 4):
- parity: max |logit| difference, onnxruntime fp32 vs PyTorch fp32, on the whole test split in the same
  padded batches. Over `max_parity_diff` is a broken export, not bad data: `ExportParityError`.
- int8: the task's quality metrics of PyTorch fp32, ORT fp32 and ORT int8 on the whole test split;
  drop = PyTorch fp32 quality - int8 quality. int8 ships only when `gate.int8_acceptable` holds (the one
  int8 rule: the drop is a finite number <= `max_int8_drop`); for a deployable of several graphs the
  task's partial-int8 subsets are tried next (export/int8_rule.py: a seq2seq pair with only its decoder
  int8); otherwise the fp32 ONNX is the deployable and the report says why (gate 4, `int8_files`,
  `int8_per_file`).
- size, and a short latency probe (median and p90) of ORT fp32 and ORT int8 at batch 1 x typical length,
  measured in one process, in alternating blocks (`export_latency_runs` timed runs; 0 skips it). The full
  matrix (PyTorch fp32 and bf16 too, and 32 x 128) is `python -m bench.inference_latency`: run by every
  pipeline run it cost more than the training on the bundled sample.

How it is fast (measured on the 2-core AVX-512 VNNI EPYC this was built on, MiniLM-L6 SST-2 classifier,
onnxruntime 1.31; the report's `settings` records what was used):
- the legacy TorchScript exporter at opset 17 (the dynamo exporter's graph breaks `quantize_dynamic`),
  eager attention traced: a plain, portable graph;
- dynamic int8 with per-channel weights: per-tensor loses 0.7-1.3 points of SST-2 accuracy, per-channel
  none (it keeps the few outlier columns of the FFN weights from flattening the rest), at no measurable
  speed cost; `reduce_range` (7-bit weights) is for CPUs without VNNI, where u8 x s8 products saturate;
  with VNNI it only costs accuracy;
- no Python-level transformer fusions by default (`optimize=False`): onnxruntime's session optimiser at
  level ALL already fuses LayerNorm, GELU and MatMul+bias and turns the quantized MatMuls into
  DynamicQuantizeMatMul / MatMulIntegerToFloat (one activation quantization shared by Q, K and V).
  `onnxruntime.transformers.optimizer` fusions (Attention, SkipLayerNormalization, BiasGelu,
  EmbedLayerNormalization) bought nothing for fp32 and made int8 ~20-25% slower at 32 x 128: they bake
  SkipLayerNormalization into the file, and onnxruntime 1.31's CPU kernel for it is ~10x slower than the
  Add + LayerNormalization it replaces. `optimize=True` keeps them available (other runtimes, GPUs);
- sessions (`onnx_inference.session_options`) with intra-op threads = physical cores (capped by affinity
  and cgroup quota), one inter-op thread, graph optimisation level ALL minus SkipLayerNormFusion (same
  reason: -20% int8 time at 32 x 128).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from domaintune.components.core.errors import BadInput, DomaintuneError, non_negative, positive
from domaintune.components.export.int8_rule import decide_int8
from domaintune.components.export.latency import measure_latencies, typical_length
from domaintune.components.export.onnx_build import (EVAL_BATCH_SIZE, OPSET, export_onnx, load_torch_model,
                                                     model_labels, optimize_onnx, quantize_onnx, torch_logits)
from domaintune.components.io.labeled import label_ids, read_labeled  # noqa: F401 (re-exported for bench/)
from domaintune.components.export.report import _cpu_flags, _size_mb, _versions, render_report
from domaintune.components.inference.batching import saved_max_length
from domaintune.components.inference.onnx_backend import (DISABLED_OPTIMIZERS, FP32_FILE, INT8_FILE, REPORT_FILE,
                                                          physical_cores)
from domaintune.components.io import storage
from domaintune.components.tasks import task_of


@dataclass
class ExportParams:
    max_int8_drop: float = 0.01
    max_parity_diff: float = 0.001
    int8_per_channel: bool = True
    int8_reduce_range: bool = False
    export_latency_runs: int = 20

    def __post_init__(self):
        positive("max-parity-diff", self.max_parity_diff, kind=float)
        non_negative("max-int8-drop", self.max_int8_drop)
        if self.max_int8_drop >= 1:
            raise BadInput(f"--max-int8-drop must be a number below 1 (got {self.max_int8_drop!r})")
        non_negative("export-latency-runs", self.export_latency_runs, kind=int)


class ExportError(DomaintuneError):
    """The export itself is wrong (exit 1, with the message): not the user's data, not a gate."""


class ExportParityError(ExportError):
    """onnxruntime fp32 logits differ from PyTorch fp32 logits by more than the threshold."""


class Laps:
    """Seconds per named step of the export, for the report."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.clock = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self.clock, 2)
        self.clock = now


def check_parity(task, reference, ort_fp32, test, max_parity_diff: float, raw_path: str | None) -> float:
    """Max |logit| difference ORT fp32 vs PyTorch fp32, and their agreement (labels, tags, generated tokens)
    against the task's floor; over the threshold or under the floor the export is broken (exit 1)."""
    parity = task.max_abs_diff(ort_fp32, reference)
    agreement = task.agreement(ort_fp32, reference)
    if agreement < task.min_parity_agreement:
        raise ExportParityError(f"ONNX fp32 and PyTorch agree on {agreement:.4f} of {len(test)} test inputs "
                                f"(at least {task.min_parity_agreement} needed; max logit difference {parity:.3g})")
    if np.isfinite(parity) and parity <= max_parity_diff:
        return parity
    detail = ""
    if raw_path:
        raw = task.max_abs_diff(task.onnx_outputs_of(raw_path, test), reference)
        detail = (f"; the unoptimized export differs by {raw:.3g}, so the graph fusions are at fault "
                  f"(retry with optimize=False)" if raw <= max_parity_diff
                  else f"; the unoptimized export differs by {raw:.3g} as well")
    raise ExportParityError(f"ONNX fp32 logits differ from PyTorch by up to {parity:.3g} on {len(test)} test texts "
                            f"(max_parity_diff {max_parity_diff:g}){detail}")


def write_model_files(tmp: str, model_dir: str, model, tokenizer, max_length: int, labels: list[str]) -> None:
    """What a deployable needs beside the graph: tokenizer, config (id2label) and domaintune.json (task)."""
    tokenizer.save_pretrained(tmp)
    model.config.save_pretrained(tmp)
    meta_path = os.path.join(model_dir, "domaintune.json")
    meta = storage.read_json(meta_path) if os.path.isfile(meta_path) else {}
    storage.write_json(os.path.join(tmp, "domaintune.json"), {**meta, "max_length": max_length, "labels": labels})


def settings(inputs, max_length: int, optimization, quantization) -> dict:
    return {"exporter": "torch.onnx.export legacy TorchScript (dynamo=False)", "opset": OPSET,
            "inputs": inputs, "max_length": max_length, "optimize": optimization, "quantization": quantization,
            "session": {"intra_op_threads": physical_cores(), "inter_op_threads": 1,
                        "graph_optimization_level": "ORT_ENABLE_ALL", "execution_mode": "sequential",
                        "disabled_optimizers": list(DISABLED_OPTIMIZERS)},
            "cpu": _cpu_flags(), "versions": _versions()}


def build_onnx(tmp: str, model_dir: str, task, model, tokenizer, test, max_length: int, labels, p: ExportParams,
               optimize: bool, lap: Laps) -> dict:
    """fp32 ONNX (optionally fused), parity-checked against PyTorch on the test texts, then int8. Returns the
    files, the logits of the three backends and what each step recorded."""
    fp32_path, int8_path = os.path.join(tmp, FP32_FILE), os.path.join(tmp, INT8_FILE)
    raw_path = os.path.join(tmp, "model.raw.onnx")
    inputs = task.export_graph(model_dir, raw_path if optimize else fp32_path)
    lap("export")
    optimization = optimize_onnx(raw_path, fp32_path, model.config) if optimize else None
    if optimize:
        lap("optimize")
    write_model_files(tmp, model_dir, model, tokenizer, max_length, labels)
    # Parity on the whole test split, same padded batches on both sides.
    reference = task.reference_outputs(model, tokenizer, test, max_length)
    ort_fp32 = task.onnx_outputs_of(fp32_path, test)
    parity = check_parity(task, reference, ort_fp32, test, p.max_parity_diff, raw_path if optimize else None)
    lap("parity")
    if optimize:
        os.remove(raw_path)
    quantization = task.quantize_graph(fp32_path, int8_path, p.int8_per_channel, p.int8_reduce_range)
    lap("quantize")
    ort_int8 = task.onnx_outputs_of(int8_path, test)
    lap("int8_eval")
    return {"fp32_path": fp32_path, "int8_path": int8_path, "inputs": inputs, "optimization": optimization,
            "quantization": quantization, "parity": parity,
            "logits": {"pytorch_fp32": reference, "onnx_fp32": ort_fp32, "onnx_int8": ort_int8}}


def parity_report(task, built: dict, p: ExportParams) -> dict:
    reference, ort_int8 = built["logits"]["pytorch_fp32"], built["logits"]["onnx_int8"]
    return {"max_abs_logit_diff": built["parity"], "threshold": p.max_parity_diff, "n": len(reference),
            "fp32_agreement": task.agreement(built["logits"]["onnx_fp32"], reference),
            "int8_max_abs_logit_diff": task.max_abs_diff(ort_int8, reference),
            "int8_label_agreement": task.agreement(ort_int8, reference)}


def latency_probe(task, model, tokenizer, built: dict, texts, max_length: int, runs: int, typical_tokens,
                  warmup: int):
    """A short side-by-side latency probe, the task's (0 runs: none)."""
    if not runs:
        return None
    return task.latency(model, tokenizer, {"onnx_fp32": built["fp32_path"], "onnx_int8": built["int8_path"]},
                        texts, max_length, runs, warmup, typical_tokens)


def run_export(model_dir: str, test_data: str, output_dir: str, p: ExportParams | None = None, *,
               optimize: bool = False, max_length: int | None = None, typical_tokens: int | None = None,
               latency_warmup: int = 3) -> dict:
    """Export MODEL_DIR to OUTPUT_DIR as ONNX fp32 + int8, check parity and the int8 quality drop on
    TEST_DATA, measure size and latency; returns the report (also written as export_report.json/.md).

    `max_length`: truncation for the checks and for serving (saved in domaintune.json beside the
    model); default: the model dir's domaintune.json, else 128. `typical_tokens`: the batch-1 latency
    length; default: the test split's median token count. `latency_warmup` untimed calls precede each
    block of timed ones. Raises BadInput (exit 2) for a bad path, file or parameter, ExportParityError
    when ORT fp32 and PyTorch fp32 logits differ by more than `max_parity_diff`.
    """
    p = p or ExportParams()
    if not os.path.isdir(model_dir):
        raise BadInput(f"{model_dir}: no such model directory")
    max_length = max_length or saved_max_length(model_dir) or 128
    positive("max-length", max_length)
    if typical_tokens is not None:
        positive("typical-tokens", typical_tokens)
    non_negative("latency-warmup", latency_warmup, kind=int)
    task, lap = task_of(model_dir), Laps()
    model, tokenizer = load_torch_model(model_dir)
    labels = task.model_labels(model)
    test = task.read_test(test_data, labels)
    texts = test["text"].tolist()
    lap("load")

    with storage.atomic_dir(output_dir) as tmp:
        built = build_onnx(tmp, model_dir, task, model, tokenizer, test, max_length, labels, p, optimize, lap)
        metrics = {name: task.deployable_metrics(logits, test, labels) for name, logits in built["logits"].items()}
        int8 = decide_int8(task, built, test, labels, metrics, p.max_int8_drop)
        deployable, drop, reason = int8["deployable"], int8["drop"], int8["reason"]
        sizes = {"onnx_fp32_mb": sum(_size_mb(f) for f in task.onnx_files(built["fp32_path"])),
                 "onnx_int8_mb": sum(_size_mb(f) for f in task.onnx_files(built["int8_path"]))}
        sizes["int8_over_fp32"] = round(sizes["onnx_int8_mb"] / sizes["onnx_fp32_mb"], 3)
        latency = latency_probe(task, model, tokenizer, built, texts, max_length, p.export_latency_runs, typical_tokens,
                                latency_warmup)
        if latency:
            lap("latency")
        report = {"params": asdict(p), "task": task.name, "deployable": deployable,
                  "deployable_file": INT8_FILE if deployable == "int8" else FP32_FILE, "reason": reason,
                  "parity": parity_report(task, built, p), "metrics": metrics, "quality_metric": task.quality_metric,
                  "int8_quality_drop": drop, "max_int8_drop": p.max_int8_drop,
                  "int8_files": int8["int8_files"], "int8_per_file": int8["per_file"], "sizes": sizes, "latency": latency,
                  "settings": settings(built["inputs"], max_length, built["optimization"], built["quantization"]),
                  "model_dir": os.path.abspath(model_dir), "test_data": os.path.abspath(test_data),
                  "seconds": lap.seconds}
        storage.write_json(os.path.join(tmp, REPORT_FILE), report)
        with open(os.path.join(tmp, "export_report.md"), "w") as f:
            f.write(render_report(report))
    return report


__all__ = ["ExportParams", "ExportError", "ExportParityError", "run_export", "EVAL_BATCH_SIZE", "OPSET",
           "export_onnx", "load_torch_model", "model_labels", "optimize_onnx", "quantize_onnx", "torch_logits",
           "measure_latencies", "typical_length", "read_labeled", "label_ids", "_cpu_flags", "_size_mb", "_versions"]
