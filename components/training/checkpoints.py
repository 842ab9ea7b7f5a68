"""Resumable checkpoints: where the last one is, and which optimizer step it holds."""
from __future__ import annotations

import os


def resumed_step(checkpoint: str | None) -> int:
    if not checkpoint:
        return 0
    try:
        return int(os.path.basename(checkpoint.rstrip("/")).rsplit("-", 1)[-1])
    except ValueError:
        return 0


def last_checkpoint(directory: str) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(directory) if os.path.isdir(directory) else None
