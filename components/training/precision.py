"""Which floating-point precision training runs in; shared by the finetune and pretrain stages."""
from __future__ import annotations

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def pick_precision(requested: str) -> str:
    """bf16 where the hardware does it natively (CUDA Ampere+, CPUs with AVX-512 BF16 or AMX): measured
    here 1.8x the fp32 training throughput at the same accuracy (bench/BENCHMARKS.md); fp32 elsewhere."""
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    cpu = torch.cpu
    native = getattr(cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
    return "bf16" if native else "fp32"
