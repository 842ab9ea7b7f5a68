"""Batched text classification with a saved PyTorch model (the classification task's predictor for a model
directory); ONNX exports go through inference/onnx_backend.py with the same surface.

Texts are sorted by length before batching so each batch pads only to its own longest text; on short
domain texts that removes most padding work (bench/BENCHMARKS.md).
"""
from __future__ import annotations

import inspect
import os
from typing import Protocol, Sequence

import numpy as np

from domaintune.components.core.errors import BadInput
from domaintune.components.inference.batching import length_sorted_batches, saved_max_length, saved_temperature, softmax


class Classifier(Protocol):
    labels: list[str]

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray: ...

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray: ...


class HFClassifier:
    """A Hugging Face sequence-classification directory (model + tokenizer saved side by side)."""

    def __init__(self, model_dir: str, max_length: int | None = None, device: str | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not os.path.isfile(os.path.join(model_dir, "config.json")):
            raise BadInput(f"{model_dir}: not a model directory (no config.json)")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        id2label = self.model.config.id2label
        self.labels = [str(id2label[i]) for i in range(len(id2label))]
        self.max_length = max_length or saved_max_length(model_dir) or 128
        self.temperature = saved_temperature(model_dir)

    def predict_logits(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        import torch

        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        with torch.inference_mode():
            for idx in length_sorted_batches([len(x) for x in enc["input_ids"]], batch_size):
                batch = self.tokenizer.pad(
                    {k: [enc[k][i] for i in idx] for k in enc.keys()}, return_tensors="pt"
                ).to(self.device)
                out[idx] = self.model(**batch).logits.float().cpu().numpy()
        return out

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Calibrated class probabilities: the softmax of the logits over the saved temperature."""
        return softmax(self.predict_logits(texts, batch_size), self.temperature)

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """The task-level output (tasks/classification.py): class probabilities."""
        return self.predict_proba(texts, batch_size)


def model_input_names(model, tokenizer) -> list[str]:
    """The tokenizer's inputs that the model's forward takes, in forward's order."""
    params = list(inspect.signature(model.forward).parameters)
    names = [n for n in params if n in set(tokenizer.model_input_names)]
    if "input_ids" not in names:
        raise BadInput(f"{model.name_or_path}: the model's forward takes no input_ids; only text encoders export here")
    return names


def torch_logits(model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 32,
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
