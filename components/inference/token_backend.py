"""Token classification (NER) predictors on PyTorch and onnxruntime: word-level tags for pre-tokenized
sentences (evaluation, the export's checks) and entity spans with character offsets for raw text
(`domaintune predict`, the MLflow pyfunc, serving).

Words are aligned with `word_ids`: a word's tag is read from its first sub-token, as it was trained
(tasks/token_classification.py). For raw text the sub-tokens of a word are aggregated the way transformers'
token-classification pipeline does it: `first` (the first sub-token), `average` (mean of the sub-tokens'
probabilities) or `max` (the most confident sub-token). Words cut off by `max_length` are tagged `O`.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from domaintune.components.core.errors import BadInput
from domaintune.components.inference.batching import length_sorted_batches, saved_max_length
from domaintune.components.inference.onnx_backend import OnnxClassifier
from domaintune.components.io.conll import words_with_offsets

AGGREGATIONS = ("first", "average", "max")


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class TaggerMixin:
    """Shared by both backends; a backend provides `labels`, `tokenizer`, `max_length` and `forward(batch)`
    (numpy batch -> logits [batch, sequence, labels])."""

    aggregation = "first"  # how raw-text predictions combine a word's sub-tokens (`domaintune predict --aggregation`)

    def _subword_logits(self, token_lists: Sequence[Sequence[str]], batch_size: int) -> list[list[list[np.ndarray]]]:
        """For each sentence, for each word, the logits of its sub-tokens (empty when truncated away)."""
        token_lists = [list(map(str, t)) for t in token_lists]
        out = [[[] for _ in tokens] for tokens in token_lists]
        if not token_lists:
            return out
        enc = self.tokenizer(token_lists, is_split_into_words=True, truncation=True, max_length=self.max_length)
        for idx in length_sorted_batches([len(x) for x in enc["input_ids"]], batch_size):
            batch = self.tokenizer.pad({k: [enc[k][i] for i in idx] for k in enc.keys()}, return_tensors="np")
            logits = np.asarray(self.forward(batch), dtype=np.float32)
            for row, i in enumerate(idx):
                for position, word in enumerate(enc.word_ids(int(i))):
                    if word is not None:
                        out[i][word].append(logits[row, position])
        return out

    def _truncated_row(self) -> np.ndarray:
        row = np.full(len(self.labels), -1e4, dtype=np.float32)
        row[self.labels.index("O") if "O" in self.labels else 0] = 0.0
        return row

    def word_logits(self, token_lists: Sequence[Sequence[str]], batch_size: int = 32) -> list[np.ndarray]:
        """Per sentence an array [words, labels]: each word's first sub-token's logits."""
        fill = self._truncated_row()
        return [np.stack([pieces[0] if pieces else fill for pieces in words]) if words else
                np.zeros((0, len(self.labels)), dtype=np.float32)
                for words in self._subword_logits(token_lists, batch_size)]

    def word_tags(self, token_lists: Sequence[Sequence[str]], batch_size: int = 32) -> list[list[str]]:
        return [[self.labels[i] for i in logits.argmax(axis=-1)] for logits in self.word_logits(token_lists, batch_size)]

    def predict(self, texts: Sequence[str], batch_size: int = 32, aggregation: str | None = None) -> list[list[dict]]:
        """Entities per raw text: {entity_group, score, word, start, end} (character offsets into the text)."""
        aggregation = aggregation or self.aggregation
        if aggregation not in AGGREGATIONS:
            raise BadInput(f"--aggregation must be one of {', '.join(AGGREGATIONS)} (got {aggregation!r})")
        words = [words_with_offsets(str(t)) for t in texts]
        pieces = self._subword_logits([[w for w, _, _ in ws] for ws in words], batch_size)
        return [self._entities(str(text), ws, ps, aggregation) for text, ws, ps in zip(texts, words, pieces)]

    def _entities(self, text: str, words, pieces, aggregation: str) -> list[dict]:
        entities, current = [], None
        for (word, start, end), subwords in zip(words, pieces):
            label, score = self._word_label(subwords, aggregation)
            kind, _, etype = label.partition("-")
            if kind == "I" and current is not None and current["entity_group"] == etype:
                current["end"], current["scores"] = end, current["scores"] + [score]
                continue
            if current is not None:
                entities.append(current)
                current = None
            if kind in ("B", "I"):
                current = {"entity_group": etype, "start": start, "end": end, "scores": [score]}
        if current is not None:
            entities.append(current)
        return [{"entity_group": e["entity_group"], "score": float(np.mean(e["scores"])),
                 "word": text[e["start"]:e["end"]], "start": e["start"], "end": e["end"]} for e in entities]

    def _word_label(self, subwords: list[np.ndarray], aggregation: str) -> tuple[str, float]:
        if not subwords:
            return "O", 1.0
        probs = softmax(np.stack(subwords))
        if aggregation == "first":
            p = probs[0]
        elif aggregation == "average":
            p = probs.mean(axis=0)
        else:
            p = probs[int(probs.max(axis=1).argmax())]
        return self.labels[int(p.argmax())], float(p.max())


class TorchTagger(TaggerMixin):
    """A Hugging Face token-classification directory, or an already loaded model and tokenizer (export)."""

    def __init__(self, model_dir: str | None = None, *, model=None, tokenizer=None, max_length: int | None = None):
        import torch

        if model is None:
            from transformers import AutoModelForTokenClassification, AutoTokenizer

            if not os.path.isfile(os.path.join(model_dir, "config.json")):
                raise BadInput(f"{model_dir}: not a model directory (no config.json)")
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            model = AutoModelForTokenClassification.from_pretrained(model_dir).eval()
        self.model, self.tokenizer, self.torch = model, tokenizer, torch
        self.labels = [str(model.config.id2label[i]) for i in range(len(model.config.id2label))]
        self.max_length = max_length or (saved_max_length(model_dir) if model_dir else None) or 128
        self.input_names = [n for n in ("input_ids", "attention_mask", "token_type_ids")
                            if n in tokenizer.model_input_names]

    def forward(self, batch) -> np.ndarray:
        with self.torch.inference_mode():
            feed = {k: self.torch.from_numpy(np.asarray(batch[k])) for k in self.input_names if k in batch}
            return self.model(**feed).logits.float().numpy()


class OnnxTagger(TaggerMixin, OnnxClassifier):
    """An ONNX token-classification export (logits [batch, sequence, labels]): the session, tokenizer, labels
    and file resolution (int8 when the export report says so) are OnnxClassifier's."""

    def forward(self, batch) -> np.ndarray:
        return self.run(batch)
