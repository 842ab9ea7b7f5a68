"""Export: the fine-tuned model as ONNX fp32 and dynamic-int8, checked before anything ships.

In: a Hugging Face sequence-classification directory and the test split (Parquet, `text`, `label`).
Out (one directory, written beside and renamed into place, so a failure leaves nothing behind):
`model.onnx` (fp32), `model.int8.onnx`, tokenizer files, `config.json`, `domaintune.json`,
`export_report.json`, `export_report.md`.

Checks (DESIGN.md §2-3):
- parity: max |logit| difference, onnxruntime fp32 vs PyTorch fp32, on the whole test split in the same
  padded batches. Over `max_parity_diff` is a broken export, not bad data: `ExportParityError`.
- int8: accuracy and macro-F1 of PyTorch fp32, ORT fp32 and ORT int8 on the whole test split;
  drop = PyTorch fp32 accuracy - int8 accuracy. Over `max_int8_drop` the fp32 ONNX is the deployable one
  and the report says why (gate 4).
- size and latency (median and p90) of PyTorch fp32, PyTorch bf16 autocast, ORT fp32 and ORT int8 at
  batch 1 x typical length and 32 x 128, measured in one process, in alternating blocks.

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

import inspect
import json
import os
import platform
import statistics
import time
import warnings
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from domaintune.components.io import storage
from domaintune.components.core.errors import BadInput, DomaintuneError, positive
from domaintune.components.inference.torch_backend import length_sorted_batches, saved_max_length
from domaintune.components.evaluation.metrics import classification_metrics
from domaintune.components.inference.onnx_backend import (
    DISABLED_OPTIMIZERS, FP32_FILE, INT8_FILE, REPORT_FILE, OnnxClassifier, open_session, physical_cores,
)

OPSET = 17
EVAL_BATCH_SIZE = 32


class ExportError(DomaintuneError):
    """The export itself is wrong (exit 1, with the message): not the user's data, not a gate."""


class ExportParityError(ExportError):
    """onnxruntime fp32 logits differ from PyTorch fp32 logits by more than the threshold."""


# --------------------------------------------------------------------------------------------- inputs

def read_labeled(path: str, text_column: str = "text", label_column: str = "label") -> pd.DataFrame:
    """A labeled file (Parquet, or CSV/TSV/JSONL for the bench) as a frame with `text` and `label`.
    A TSV with a `sentence` column (GLUE) is accepted as text."""
    if not os.path.isfile(path):
        raise BadInput(f"{path}: no such file")
    lower = path.lower()
    try:
        if lower.endswith((".parquet", ".pq")):
            frame = pd.read_parquet(path)
        elif lower.endswith(".tsv"):
            frame = pd.read_csv(path, sep="\t", quoting=3, keep_default_na=False)
        elif lower.endswith(".csv"):
            frame = pd.read_csv(path, keep_default_na=False)
        elif lower.endswith((".jsonl", ".json")):
            frame = pd.read_json(path, lines=lower.endswith(".jsonl"))
        else:
            raise BadInput(f"{path}: unsupported file type (Parquet, CSV, TSV or JSONL)")
    except BadInput:
        raise
    except Exception as exc:
        raise BadInput(f"{path}: unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if text_column not in frame.columns and "sentence" in frame.columns:
        text_column = "sentence"
    missing = [c for c in (text_column, label_column) if c not in frame.columns]
    if missing:
        raise BadInput(f"{path}: missing column(s) {missing} (has {list(frame.columns)})")
    frame = frame.rename(columns={text_column: "text", label_column: "label"})[["text", "label"]]
    if frame.empty:
        raise BadInput(f"{path}: no rows")
    frame["text"] = frame["text"].astype(str)
    return frame.reset_index(drop=True)


def label_ids(frame: pd.DataFrame, labels: list[str], path: str) -> np.ndarray:
    """Labels as class ids of the model's id2label: ints in range, or the label names themselves."""
    values = frame["label"]
    if pd.api.types.is_integer_dtype(values):
        ids = values.to_numpy()
    else:
        index = {name: i for i, name in enumerate(labels)}
        unknown = sorted({str(v) for v in values if str(v) not in index})
        if unknown:
            raise BadInput(f"{path}: labels {unknown[:5]} are not class ids or names of the model's labels {labels}")
        ids = np.array([index[str(v)] for v in values])
    bad = ids[(ids < 0) | (ids >= len(labels))]
    if len(bad):
        raise BadInput(f"{path}: label {int(bad[0])} outside the model's {len(labels)} classes {labels}")
    return ids.astype(np.int64)


def load_torch_model(model_dir: str, attn_implementation: str | None = None):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise BadInput(f"{model_dir}: not a model directory (no config.json)")
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as exc:
        raise BadInput(f"{model_dir}: cannot load the model or its tokenizer ({str(exc).splitlines()[0]})") from None
    return model.eval(), tokenizer


def model_labels(model) -> list[str]:
    id2label = model.config.id2label
    return [str(id2label[i]) for i in range(len(id2label))]


def model_input_names(model, tokenizer) -> list[str]:
    """The tokenizer's inputs that the model's forward takes, in forward's order."""
    params = list(inspect.signature(model.forward).parameters)
    names = [n for n in params if n in set(tokenizer.model_input_names)]
    if "input_ids" not in names:
        raise BadInput(f"{model.name_or_path}: the model's forward takes no input_ids; only text encoders export here")
    return names


# --------------------------------------------------------------------------------------------- build

def _logits_module(model, names: list[str]):
    """The HF model with positional inputs and one output, `logits`, for the tracer."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):
            return self.model(**dict(zip(names, args)), return_dict=True).logits

    return LogitsOnly().eval()


def export_onnx(model_dir: str, path: str) -> list[str]:
    """Legacy (TorchScript) export at opset 17, dynamic batch and sequence axes, output `logits`.

    The model is loaded with eager attention for the trace: its MatMul/Softmax pattern is the one
    onnxruntime's attention fusion recognises. The dummy batch has padding so the mask path is traced.
    """
    import torch

    model, tokenizer = load_torch_model(model_dir, attn_implementation="eager")
    names = model_input_names(model, tokenizer)
    dummy = tokenizer(["a short one", "a somewhat longer example sentence, with padding in the other"],
                      padding=True, return_tensors="pt")
    args = tuple(dummy[n] if n in dummy else torch.zeros_like(dummy["input_ids"]) for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch"}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_logits_module(model, names), args, path, input_names=names, output_names=["logits"],
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)
    return names


def optimize_onnx(src: str, dst: str, config) -> dict:
    """onnxruntime's transformer fusions, written as a portable graph (opt_level 0: Python fusions only,
    nothing specific to this CPU; the session applies its level-ALL rewrites at load time)."""
    from onnxruntime.transformers.optimizer import optimize_model

    num_heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", 0) or 0
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", 0) or 0
    optimized = optimize_model(src, model_type="bert", num_heads=num_heads, hidden_size=hidden, opt_level=0)
    optimized.save_model_to_file(dst)
    stats = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    return {"model_type": "bert", "num_heads": num_heads, "hidden_size": hidden, "fused_operators": stats}


def quantize_onnx(src: str, dst: str, *, per_channel: bool, reduce_range: bool) -> dict:
    """Dynamic int8: weights int8 (symmetric), activations uint8 quantized per batch at run time."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quant_logger = logging.getLogger()
    level = quant_logger.level
    quant_logger.setLevel(logging.ERROR)  # "consider pre-processing" warning: not applicable to dynamic mode here
    try:
        # onnx's shape inference cannot type the outputs of the fused com.microsoft ops; every activation
        # in this graph is float32, so that is the type to assume for the MatMuls that consume them.
        quantize_dynamic(src, dst, per_channel=per_channel, reduce_range=reduce_range, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        quant_logger.setLevel(level)
    ops: dict[str, int] = {}
    for node in onnx.load(dst, load_external_data=False).graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    quantized = {k: v for k, v in ops.items() if k in {"QAttention", "DynamicQuantizeMatMul", "MatMulInteger",
                                                      "QEmbedLayerNormalization", "DynamicQuantizeLinear",
                                                      "DequantizeLinear", "QGemm"}}
    return {"method": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8 (symmetric)",
            "activation_type": "QUInt8 (dynamic, per tensor)", "per_channel": per_channel,
            "reduce_range": reduce_range, "quantized_operators": quantized}


# --------------------------------------------------------------------------------------------- run

def torch_logits(model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = EVAL_BATCH_SIZE,
                 bf16: bool = False) -> np.ndarray:
    """PyTorch logits in the same length-sorted padded batches OnnxClassifier uses."""
    import contextlib

    import torch

    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    names = model_input_names(model, tokenizer)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.inference_mode(), ctx:
        for idx in length_sorted_batches([len(x) for x in enc["input_ids"]], batch_size):
            batch = tokenizer.pad({k: [enc[k][i] for i in idx] for k in enc.keys()}, return_tensors="pt")
            out[idx] = model(**{k: batch[k] for k in names if k in batch}).logits.float().numpy()
    return out


def fixed_batch(tokenizer, texts: Sequence[str], batch: int, length: int) -> dict[str, np.ndarray]:
    """A batch of exactly BATCH x LENGTH real tokens (no padding): the test texts' tokens laid end to end."""
    stream = [t for ids in tokenizer(list(texts)[:2000], add_special_tokens=False)["input_ids"] for t in ids]
    if not stream:
        stream = [tokenizer.unk_token_id or 100]
    prefix, suffix = _special_tokens(tokenizer)
    body = max(1, length - len(prefix) - len(suffix))
    need = batch * body
    stream = (stream * (need // len(stream) + 1))[:need]
    rows = [(prefix + stream[i * body:(i + 1) * body] + suffix)[:length] for i in range(batch)]
    ids = np.array(rows, dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def _special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a single text ([CLS] / [SEP], <s> / </s>, ...)."""
    body = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello")["input_ids"]
    for i in range(len(full) - len(body) + 1):
        if full[i:i + len(body)] == body:
            return full[:i], full[i + len(body):]
    return [], []


def _stats(times_s: list[float]) -> dict:
    ms = sorted(t * 1000 for t in times_s)
    return {"median_ms": round(statistics.median(ms), 3), "p90_ms": round(float(np.percentile(ms, 90)), 3),
            "min_ms": round(ms[0], 3), "runs": len(ms)}


def measure_latencies(torch_model, tokenizer, onnx_models: Mapping[str, str], texts: Sequence[str],
                      shapes: Sequence[tuple[int, int]] = ((1, 32), (32, 128)), runs: int = 20, warmup: int = 3,
                      rounds: int = 2, intra_op_threads: int | None = None, bf16: bool = True,
                      sessions: Mapping[str, object] | None = None) -> dict:
    """Latency of one forward pass per backend and shape, all in this process.

    Backends: `pytorch_fp32` (eager, inference_mode) and `pytorch_bf16` (same under
    `torch.autocast("cpu", dtype=torch.bfloat16)`) when `torch_model` is given; one per entry of
    `onnx_models` (name -> .onnx path, opened with `session_options`) and of `sessions` (name -> an open
    InferenceSession). Inputs are BATCH x LENGTH real tokens of `texts`, no padding.

    Each backend runs in contiguous blocks (`warmup` untimed calls, then its share of `runs`), because
    runtimes interleaved call by call disturb each other: onnxruntime's and OpenMP's worker threads spin
    after a call and steal the cores from whoever runs next. The blocks repeat `rounds` times in rotation,
    so a burst of load from other processes lands on several backends rather than on one.
    Reported: median, p90, min over all timed calls.
    """
    import torch

    backends: dict[str, Callable[[dict], object]] = {}
    if torch_model is not None:
        names = model_input_names(torch_model, tokenizer)

        def run_torch(batch, use_bf16=False):
            feed = {k: torch.from_numpy(batch[k]) for k in names}
            with torch.inference_mode():
                if use_bf16:
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        return torch_model(**feed).logits
                return torch_model(**feed).logits

        backends["pytorch_fp32"] = run_torch
        if bf16:
            backends["pytorch_bf16"] = lambda batch: run_torch(batch, use_bf16=True)
    all_sessions = dict(sessions or {})
    for name, path in onnx_models.items():
        all_sessions[name] = open_session(path, intra_op_threads)
    for name, session in all_sessions.items():
        dtypes = {i.name: (np.int32 if i.type == "tensor(int32)" else np.int64) for i in session.get_inputs()}

        def run_ort(batch, session=session, dtypes=dtypes):
            return session.run(None, {k: batch[k].astype(t, copy=False) for k, t in dtypes.items()})

        backends[name] = run_ort

    rounds = max(1, min(rounds, runs))
    results: dict[str, dict] = {}
    for batch_size, length in shapes:
        batch = fixed_batch(tokenizer, texts, batch_size, length)
        times: dict[str, list[float]] = {name: [] for name in backends}
        for round_ in range(rounds):
            share = runs // rounds + (1 if round_ < runs % rounds else 0)
            for name, fn in backends.items():
                for _ in range(warmup):
                    fn(batch)
                for _ in range(share):
                    start = time.perf_counter()
                    fn(batch)
                    times[name].append(time.perf_counter() - start)
        results[f"{batch_size}x{length}"] = {name: _stats(t) for name, t in times.items()}
    return {"shapes": [f"{b}x{n}" for b, n in shapes], "runs": runs, "warmup": warmup, "rounds": rounds,
            "threads": {"torch": torch.get_num_threads(), "onnxruntime": intra_op_threads or physical_cores()},
            "results": results, "speedups": speedups(results)}


def speedups(results: dict) -> dict:
    out = {}
    for shape, r in results.items():
        s = {}
        for fast in ("onnx_int8", "onnx_fp32"):
            for base in ("pytorch_fp32", "pytorch_bf16", "onnx_fp32"):
                if fast in r and base in r and fast != base:
                    s[f"{fast}_vs_{base}"] = round(r[base]["median_ms"] / r[fast]["median_ms"], 2)
        out[shape] = s
    return out


def typical_length(tokenizer, texts: Sequence[str], max_length: int) -> int:
    """Median token count (with special tokens) of the texts, at least 8, at most max_length."""
    lengths = [len(x) for x in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]]
    return int(min(max_length, max(8, round(statistics.median(lengths)))))


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


def run_export(model_dir: str, test_data: str, output_dir: str, *, max_parity_diff: float = 1e-3,
               max_int8_drop: float = 0.01, per_channel: bool = True, reduce_range: bool = False,
               optimize: bool = False, latency_runs: int = 20, max_length: int | None = None,
               typical_tokens: int | None = None, latency_warmup: int = 3) -> dict:
    """Export MODEL_DIR to OUTPUT_DIR as ONNX fp32 + int8, check parity and the int8 accuracy drop on
    TEST_DATA, measure size and latency; returns the report (also written as export_report.json/.md).

    `max_length`: truncation for the checks and for serving (saved in domaintune.json beside the
    model); default: the model dir's domaintune.json, else 128. `typical_tokens`: the batch-1 latency
    length; default: the test split's median token count. `latency_runs=0` skips latency;
    `latency_warmup` untimed calls precede each block of timed ones.
    Raises BadInput (exit 2) for a bad path, file or parameter, ExportParityError when ORT fp32 and
    PyTorch fp32 logits differ by more than `max_parity_diff`.
    """
    positive("max-parity-diff", max_parity_diff, kind=float)
    if isinstance(max_int8_drop, bool) or not isinstance(max_int8_drop, (int, float)) or max_int8_drop >= 1:
        raise BadInput(f"--max-int8-drop must be a number below 1 (got {max_int8_drop!r})")
    if isinstance(latency_runs, bool) or not isinstance(latency_runs, int) or latency_runs < 0:
        raise BadInput(f"--latency-runs must be a non-negative integer (got {latency_runs!r})")
    if not os.path.isdir(model_dir):
        raise BadInput(f"{model_dir}: no such model directory")
    max_length = max_length or saved_max_length(model_dir) or 128
    positive("max-length", max_length)
    if typical_tokens is not None:
        positive("typical-tokens", typical_tokens)
    if isinstance(latency_warmup, bool) or not isinstance(latency_warmup, int) or latency_warmup < 0:
        raise BadInput(f"--latency-warmup must be a non-negative integer (got {latency_warmup!r})")

    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 2)
        clock = now

    model, tokenizer = load_torch_model(model_dir)
    labels = model_labels(model)
    test = read_labeled(test_data)
    y = label_ids(test, labels, test_data)
    texts = test["text"].tolist()
    lap("load")

    with storage.atomic_dir(output_dir) as tmp:
        fp32_path, int8_path = os.path.join(tmp, FP32_FILE), os.path.join(tmp, INT8_FILE)
        raw_path = os.path.join(tmp, "model.raw.onnx")
        inputs = export_onnx(model_dir, raw_path if optimize else fp32_path)
        lap("export")
        optimization = None
        if optimize:
            optimization = optimize_onnx(raw_path, fp32_path, model.config)
            lap("optimize")

        tokenizer.save_pretrained(tmp)
        model.config.save_pretrained(tmp)
        meta = {}
        if os.path.isfile(os.path.join(model_dir, "domaintune.json")):
            meta = storage.read_json(os.path.join(model_dir, "domaintune.json"))
        storage.write_json(os.path.join(tmp, "domaintune.json"), {**meta, "max_length": max_length, "labels": labels})

        # Parity on the whole test split, same padded batches on both sides.
        reference = torch_logits(model, tokenizer, texts, max_length)
        onnx_fp32 = OnnxClassifier(fp32_path)
        ort_fp32 = onnx_fp32.predict_logits(texts, batch_size=EVAL_BATCH_SIZE)
        parity = float(np.abs(ort_fp32 - reference).max())
        lap("parity")
        if not np.isfinite(parity) or parity > max_parity_diff:
            detail = ""
            if optimize:
                raw = float(np.abs(OnnxClassifier(raw_path).predict_logits(texts, EVAL_BATCH_SIZE) - reference).max())
                detail = (f"; the unoptimized export differs by {raw:.3g}, so the graph fusions are at fault "
                          f"(retry with optimize=False)" if raw <= max_parity_diff
                          else f"; the unoptimized export differs by {raw:.3g} as well")
            raise ExportParityError(
                f"ONNX fp32 logits differ from PyTorch by up to {parity:.3g} on {len(texts)} test texts "
                f"(max_parity_diff {max_parity_diff:g}){detail}")
        if optimize:
            os.remove(raw_path)

        quantization = quantize_onnx(fp32_path, int8_path, per_channel=per_channel, reduce_range=reduce_range)
        lap("quantize")
        onnx_int8 = OnnxClassifier(int8_path)
        ort_int8 = onnx_int8.predict_logits(texts, batch_size=EVAL_BATCH_SIZE)
        lap("int8_eval")

        metrics = {}
        for name, logits in (("pytorch_fp32", reference), ("onnx_fp32", ort_fp32), ("onnx_int8", ort_int8)):
            m = classification_metrics(y, logits.argmax(axis=1), labels)
            metrics[name] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"]}
        drop = metrics["pytorch_fp32"]["accuracy"] - metrics["onnx_int8"]["accuracy"]
        agreement = float((ort_int8.argmax(axis=1) == reference.argmax(axis=1)).mean())
        if drop > max_int8_drop:
            deployable = "fp32"
            reason = (f"int8 accuracy {metrics['onnx_int8']['accuracy']:.4f} is {drop * 100:.2f} points below "
                      f"PyTorch fp32 {metrics['pytorch_fp32']['accuracy']:.4f} (max_int8_drop "
                      f"{max_int8_drop * 100:.2f} points): the fp32 ONNX ships")
        else:
            deployable = "int8"
            reason = (f"int8 accuracy drop {drop * 100:.2f} points <= max_int8_drop {max_int8_drop * 100:.2f} points")

        sizes = {"onnx_fp32_mb": _size_mb(fp32_path), "onnx_int8_mb": _size_mb(int8_path)}
        sizes["int8_over_fp32"] = round(sizes["onnx_int8_mb"] / sizes["onnx_fp32_mb"], 3)

        latency = None
        if latency_runs:
            typical = typical_tokens or typical_length(tokenizer, texts, max_length)
            shapes = [(1, min(typical, max_length)), (32, max_length)]
            del onnx_fp32, onnx_int8
            latency = measure_latencies(model, tokenizer, {"onnx_fp32": fp32_path, "onnx_int8": int8_path},
                                        texts, shapes=shapes, runs=latency_runs, warmup=latency_warmup)
            lap("latency")

        report = {
            "deployable": deployable,
            "deployable_file": INT8_FILE if deployable == "int8" else FP32_FILE,
            "reason": reason,
            "parity": {"max_abs_logit_diff": parity, "threshold": max_parity_diff, "n": len(texts),
                       "int8_max_abs_logit_diff": float(np.abs(ort_int8 - reference).max()),
                       "int8_label_agreement": agreement},
            "metrics": metrics,
            "int8_accuracy_drop": drop,
            "max_int8_drop": max_int8_drop,
            "sizes": sizes,
            "latency": latency,
            "settings": {
                "exporter": "torch.onnx.export legacy TorchScript (dynamo=False)", "opset": OPSET,
                "inputs": inputs, "max_length": max_length, "optimize": optimization,
                "quantization": quantization,
                "session": {"intra_op_threads": physical_cores(), "inter_op_threads": 1,
                            "graph_optimization_level": "ORT_ENABLE_ALL", "execution_mode": "sequential",
                            "disabled_optimizers": list(DISABLED_OPTIMIZERS)},
                "cpu": _cpu_flags(), "versions": _versions(),
            },
            "model_dir": os.path.abspath(model_dir),
            "test_data": os.path.abspath(test_data),
            "seconds": seconds,
        }
        storage.write_json(os.path.join(tmp, REPORT_FILE), report)
        with open(os.path.join(tmp, "export_report.md"), "w") as f:
            f.write(render_report(report))
    return report


def render_report(report: dict) -> str:
    m, s, p = report["metrics"], report["sizes"], report["parity"]
    q = report["settings"]["quantization"]
    lines = [
        "# Export report", "",
        f"**Deployable: {report['deployable']}** (`{report['deployable_file']}`): {report['reason']}.", "",
        "## Accuracy on the test split", "",
        "| model | accuracy | macro-F1 | n |", "|---|---|---|---|",
        *[f"| {name} | {v['accuracy']:.4f} | {v['macro_f1']:.4f} | {v['n']} |" for name, v in m.items()],
        "",
        f"int8 accuracy drop vs PyTorch fp32: {report['int8_accuracy_drop'] * 100:.2f} points "
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
