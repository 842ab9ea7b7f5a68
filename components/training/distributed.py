"""Where a training process stands in a data-parallel (DDP) run, and the few collective steps the stages
take around the Trainer (which handles DDP itself: gradient all-reduce, sharded batches, saving on the main
process only).

A run is distributed when torch's launcher (torchrun: `training/launch.py` inside one pod, or a Kubeflow
Trainer job across nodes) started this process: it sets RANK, WORLD_SIZE and LOCAL_RANK. Outside one, every
function here is the single-process no-op, so the stages read the same either way.
"""
from __future__ import annotations

import os

# Processes per pod the compiled pipeline gives a training task (pipelines/platform.py: DOMAINTUNE_GPUS);
# `--num-processes` overrides it.
NPROC_ENV = "DOMAINTUNE_NPROC_PER_NODE"


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched() -> bool:
    """True inside a process torchrun started (every rank of it)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_main() -> bool:
    """The process that writes the stage's outputs, reports and progress lines (global rank 0)."""
    return rank() == 0


def backend() -> str:
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def init() -> None:
    """Joins the process group (NCCL on GPU, gloo on CPU) and binds this process to its GPU before the stage
    loads anything onto a device. The Trainer's accelerate state then reuses this group."""
    import torch
    import torch.distributed as dist

    if world_size() <= 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend())


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def multi_node() -> bool:
    """More processes in the run than on this node (torchrun sets LOCAL_WORLD_SIZE): no shared filesystem."""
    return world_size() > int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size())))


def main_first(fn, *args, **kwargs):
    """FN on each node's first process, then on that node's others once every first one is done: for the
    steps that create or clear files on the node's filesystem (binding a checkpoint directory), which a second
    caller then finds in place and leaves alone."""
    if world_size() <= 1:
        return fn(*args, **kwargs)
    init()
    if local_rank() == 0:
        result = fn(*args, **kwargs)
        barrier()
        return result
    barrier()
    return fn(*args, **kwargs)


def sum_over_ranks(counts: dict) -> dict:
    """Integer counters summed over every process (each rank counts only the batches it trained)."""
    import torch
    import torch.distributed as dist

    if world_size() <= 1 or not dist.is_initialized():
        return dict(counts)
    keys = sorted(counts)
    device = torch.device("cuda", local_rank()) if backend() == "nccl" else torch.device("cpu")
    values = torch.tensor([int(counts[k]) for k in keys], dtype=torch.int64, device=device)
    dist.all_reduce(values)
    return dict(zip(keys, (int(v) for v in values.tolist())))


def describe() -> dict:
    """What the report records about the processes that trained."""
    return {"world_size": world_size(), "backend": backend() if world_size() > 1 else None,
            "launcher": "torchrun" if launched() else None}
