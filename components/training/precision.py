"""Which floating-point precision training runs in; shared by the finetune and pretrain stages."""
from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import time

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
BF16_MIN_SPEEDUP = 1.3  # a clear win only: near 1.0 the choice would be noise


def pick_precision(requested: str) -> str:
    """bf16 where the hardware does it fast (CUDA Ampere+; on CPU, where a bf16 matrix product measures
    clearly faster than fp32 on this machine); fp32 elsewhere. An explicit choice is taken as given."""
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_bf16_speedup() >= BF16_MIN_SPEEDUP else "fp32"


@functools.cache
def cpu_bf16_speedup() -> float:
    """How much faster a bf16 matrix product of the encoder's shape runs than fp32 on this CPU (0 where it has
    no native bf16). Measured, not read off the feature flags: AVX-512 BF16 made bf16 training 1.8x fp32 on one
    host of ours and 0.77x on another that reports the same flag (its bf16 kernel runs at about half the fp32
    rate; bench/BENCHMARKS.md), and only timing tells them apart.

    The first measurement on a machine is kept in a small cache file and reused by every later process, so that
    a resumed training, a rerun and its reference all train in the same precision (runs are bit-identical):
    a timing taken under load could otherwise flip between them."""
    import torch

    cpu = torch.cpu
    if not (getattr(cpu, "_is_avx512_bf16_supported", lambda: False)() or
            getattr(cpu, "_is_amx_tile_supported", lambda: False)()):
        return 0.0
    key, path = _machine_key(torch.__version__), _cache_path()
    cached = _read_cache(path)
    if key in cached:
        return float(cached[key])
    speedup = _measure_bf16_speedup(torch)
    _write_cache(path, {**cached, key: speedup})
    return speedup


def _measure_bf16_speedup(torch, pairs: int = 25) -> float:
    """Median over back-to-back fp32/bf16 pairs on one thread (~0.1 s): a burst of load from other processes
    hits both halves of a pair, and the median drops the pairs it split."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(0)
        a, b = torch.randn(128, 384, generator=generator), torch.randn(384, 1536, generator=generator)
        a16, b16 = a.bfloat16(), b.bfloat16()
        for _ in range(3):  # warm-up: kernel selection and caches
            a @ b, a16 @ b16
        ratios = []
        for _ in range(pairs):
            t0 = time.perf_counter()
            a @ b
            t1 = time.perf_counter()
            a16 @ b16
            ratios.append((t1 - t0) / max(time.perf_counter() - t1, 1e-9))
        return round(statistics.median(ratios), 2)
    finally:
        torch.set_num_threads(threads)


def _machine_key(torch_version: str) -> str:
    cpu = ""
    try:  # the first processor's family, model and model name
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            lines = [line.split(":", 1)[1].strip() for line in f if line.startswith(("cpu family", "model"))]
        cpu = " ".join(lines[:3])
    except OSError:
        pass
    return f"{platform.node()}|{platform.machine()}|{cpu}|{os.cpu_count()}|torch {torch_version}"


def _cache_path() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "domaintune", "cpu_bf16_speedup.json")


def _read_cache(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: str, data: dict) -> None:
    """Best effort (a read-only home in a container just measures again); written whole, then renamed."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass
