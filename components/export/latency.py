"""Latency of PyTorch and onnxruntime backends on fixed batches, measured side by side in one process."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Mapping, Sequence

import numpy as np

from domaintune.components.export.onnx_build import model_input_names
from domaintune.components.inference.onnx_backend import open_session, physical_cores


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
