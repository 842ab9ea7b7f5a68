"""Predictors for the serving request path: the ONNX deployable with `serving.tokenizer.JsonTokenizer`, so
the server process never imports transformers (and with it PyTorch).

Each is the inference backend's own predictor class with its tokenizer swapped and its batches cut by
padding: the same model file choice (int8 when the export report says so, else fp32), session options,
labels, max_length and outputs as `domaintune predict`. A task returns one from `Task.serving_predictor`.
"""
from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np

from domaintune.components.inference.onnx_backend import OnnxClassifier, open_session
from domaintune.components.inference.seq2seq_backend import OnnxSummarizer
from domaintune.components.inference.token_backend import OnnxTagger
from domaintune.components.serving.tokenizer import JsonTokenizer

MAX_PADDING = 0.25


def padded_batches(lengths: Sequence[int], batch_size: int, max_padding: float = MAX_PADDING) -> Iterator[np.ndarray]:
    """Length-sorted batches of at most BATCH_SIZE whose padding stays within MAX_PADDING of their real tokens.

    onnxruntime's cost grows with the padded tokens (batch x longest). A gathered batch of concurrent
    requests mixes short and long texts; cut into fixed-size chunks, the long ones make every chunk pad far
    (measured: 16 support tickets, 13-51 tokens, cost 1.7x their real tokens). Sorted and cut where the next
    text would push the padding over the bound, a batch of similar texts still runs as one call.
    """
    order = np.argsort(np.asarray(lengths), kind="stable")
    chunk: list[int] = []
    real = 0
    for i in order:
        longest = lengths[i]  # sorted ascending: the newest text is the longest
        if chunk and (len(chunk) >= batch_size or (len(chunk) + 1) * longest > (1 + max_padding) * (real + longest)):
            yield np.asarray(chunk)
            chunk, real = [], 0
        chunk.append(int(i))
        real += longest
    if chunk:
        yield np.asarray(chunk)


class ServingTokenizer:
    """The request path's tokenizer: tokenizer.json read by `tokenizers` (no transformers, no PyTorch in the
    server process)."""

    def load_tokenizer(self):
        return JsonTokenizer(self.model_dir)


class ServingSession(ServingTokenizer):
    """The request path's side of a one-session ONNX predictor: its tokenizer, onnxruntime not spinning, and
    `close` for a hot swap."""

    @property
    def session(self):
        """The export's session options, without spinning: in a server, intra-op threads share the CPUs with the
        event loop and the other inference threads, and spin-waiting between batches takes CPU from them
        (measured at 16 clients with 2 intra-op threads, MiniLM int8, 3 interleaved pairs: 5.8-6.6 ms of
        server CPU per request without spinning, 7.0-9.9 with). The server runs one intra-op thread per
        batch (serving/batcher.py), where the setting has nothing to spin."""
        if self._session is None:
            self._session = open_session(self.model_path, self.intra_op_threads, spinning=False)
        return self._session

    def close(self) -> None:
        """Drop the onnxruntime session (its memory goes with the last reference)."""
        self._session = None


class ServingOnnxClassifier(ServingSession, OnnxClassifier):
    """OnnxClassifier (same files, labels and outputs) on the serving side, batches cut by padding."""

    batches = staticmethod(padded_batches)

    def __init__(self, ref: str, intra_op_threads: int | None = None, max_length: int | None = None):
        super().__init__(ref, max_length=max_length, intra_op_threads=intra_op_threads)


class ServingOnnxTagger(ServingSession, OnnxTagger):
    """OnnxTagger (same files, labels, word alignment and entity spans) on the serving side."""


class ServingOnnxSummarizer(ServingTokenizer, OnnxSummarizer):
    """OnnxSummarizer (same encoder/decoder files, greedy decoding, limits) on the serving side: its two
    sessions not spinning (see ServingSession.session)."""

    spinning = False

    def close(self) -> None:
        """Drop both onnxruntime sessions."""
        self._sessions = None
