"""What every predictor shares: length-sorted batches (each pads only to its own longest text) and the
max_length a model was trained with."""
from __future__ import annotations

import json
import os
from typing import Iterator, Sequence

import numpy as np


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    order = np.argsort(np.asarray(lengths), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def saved_max_length(model_dir: str) -> int | None:
    """The max_length finetune trained with (domaintune.json), if the directory has one."""
    path = os.path.join(model_dir, "domaintune.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f).get("max_length")
    return None
