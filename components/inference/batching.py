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


def _meta(model_dir: str) -> dict:
    path = os.path.join(model_dir, "domaintune.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return {}


def saved_max_length(model_dir: str) -> int | None:
    """The max_length finetune trained with (domaintune.json), if the directory has one."""
    return _meta(model_dir).get("max_length")


def saved_temperature(model_dir: str) -> float:
    """The softmax temperature fitted on the validation split (domaintune.json `calibration`, written by
    finetune and copied by export); 1.0 (no scaling) for a model without one."""
    return float((_meta(model_dir).get("calibration") or {}).get("temperature") or 1.0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities of logits / temperature (temperature scaling, Guo et al. 2017)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    exp = np.exp(z)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
