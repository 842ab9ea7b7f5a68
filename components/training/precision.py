"""Which floating-point precision training runs in; shared by the finetune and pretrain stages."""
from __future__ import annotations

import functools
import time

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def pick_precision(requested: str) -> str:
    """bf16 where the hardware does it fast (CUDA Ampere+; on CPU, where a bf16 matrix product measures faster
    than fp32 here and now); fp32 elsewhere. An explicit choice is taken as given."""
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_bf16_speedup() > 1.0 else "fp32"


@functools.cache
def cpu_bf16_speedup() -> float:
    """How much faster a bf16 matrix product of the encoder's typical shape runs than fp32 on this CPU (0 where
    the CPU has no native bf16). Measured, not read off the feature flags: AVX-512 BF16 made bf16 training 1.8x
    fp32 on one host of ours and 0.77x on another that reports the same flag (its bf16 dot products run at half
    the rate of its fp32 FMAs; bench/BENCHMARKS.md), and only the timing tells them apart. About 50 ms."""
    import torch

    cpu = torch.cpu
    if not (getattr(cpu, "_is_avx512_bf16_supported", lambda: False)() or
            getattr(cpu, "_is_amx_tile_supported", lambda: False)()):
        return 0.0
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 384, generator=generator), torch.randn(384, 1536, generator=generator)
    return round(_best_matmul_seconds(a, b) / _best_matmul_seconds(a.bfloat16(), b.bfloat16()), 2)


def _best_matmul_seconds(a, b, repeats: int = 12) -> float:
    for _ in range(3):  # warm-up: kernel selection and caches
        a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return best
