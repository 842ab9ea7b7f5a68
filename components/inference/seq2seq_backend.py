"""Summarizers: a source text in, a generated summary out, with PyTorch (`generate`) or with the ONNX encoder
and decoder of an export through onnxruntime.

The ONNX pair (export/onnx_seq2seq.py) is `<stem>.onnx`, the encoder (input ids, attention mask -> hidden
states), and `<stem>.decoder.onnx`, the decoder without past key values (decoder ids so far, the encoder's
states and mask -> the next token's logits). onnxruntime has no `generate` for a pair of plain graphs, so
greedy decoding is written here: the decoder runs on the whole prefix each step (quadratic in the summary
length, which is short), stops a row at its end token and the batch when every row has ended or
`max_new_tokens` is reached: what `generate(num_beams=1, do_sample=False)` does, so both give the same tokens
(measured in the export report).

Both predictors have `labels` ([]), `predict(texts) -> summaries` and `generate_ids(texts, keep_logits)` ->
(token ids per text, the first `keep_logits` texts' per-step logits) for the export's parity check.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from domaintune.components.core.errors import BadInput
from domaintune.components.inference.batching import length_sorted_batches, saved_max_length
from domaintune.components.inference.onnx_backend import open_session, resolve_model_file

DEFAULT_MAX_NEW_TOKENS = 64


def decoder_file(encoder_path: str) -> str:
    return encoder_path[: -len(".onnx")] + ".decoder.onnx"


def cut(ids: Sequence[int], eos: int, pad: int, start: int | None = None) -> list[int]:
    """Generated ids without the start token, up to (not including) the end token, pads dropped."""
    out = [int(i) for i in ids]
    if start is not None and out and out[0] == start:
        out = out[1:]
    if eos in out:
        out = out[: out.index(eos)]
    return [i for i in out if i != pad]


class _Summarizer:
    labels: list[str] = []
    num_beams = 1

    def _setup(self, directory: str, tokenizer, generation: dict, max_length: int | None, max_new_tokens: int | None,
               prefix: str):
        self.tokenizer = tokenizer
        self.max_length = max_length or saved_max_length(directory) or 128
        self.max_new_tokens = max_new_tokens or generation.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS
        self.prefix = prefix
        self.start, self.eos, self.pad = (generation.get("decoder_start_token_id"), generation.get("eos_token_id"),
                                          generation.get("pad_token_id"))
        if isinstance(self.eos, list):
            self.eos = self.eos[0]
        if self.start is None or self.eos is None or self.pad is None:
            raise BadInput(f"{directory}: the model names no decoder start, end or pad token (generation_config.json)")

    def encode(self, texts: Sequence[str]):
        return self.tokenizer([self.prefix + str(t) for t in texts], truncation=True, max_length=self.max_length)

    def generate_ids(self, texts: Sequence[str], batch_size: int = 16, keep_logits: int = 0):
        enc = self.encode(texts)
        ids: list[list[int]] = [[] for _ in texts]
        logits: list = [None] * min(keep_logits, len(texts))
        for idx in length_sorted_batches([len(x) for x in enc["input_ids"]], batch_size):
            batch = self.tokenizer.pad({k: [enc[k][i] for i in idx] for k in ("input_ids", "attention_mask")},
                                       return_tensors="np")
            want = any(i < keep_logits for i in idx)
            rows, steps = self._generate(batch, want)
            for j, i in enumerate(idx):
                ids[i] = cut(rows[j], self.eos, self.pad)
                if i < keep_logits:
                    logits[i] = steps[j][: len(ids[i]) + 1]  # up to and including the step that ended the row
        return ids, logits

    def predict(self, texts: Sequence[str], batch_size: int = 16) -> list[str]:
        ids, _ = self.generate_ids(texts, batch_size)
        return [self.tokenizer.decode(x, skip_special_tokens=True).strip() for x in ids]


class TorchSummarizer(_Summarizer):
    def __init__(self, model_dir: str | None = None, *, model=None, tokenizer=None, max_length: int | None = None,
                 max_new_tokens: int | None = None):
        from transformers import AutoTokenizer

        from domaintune.components.tasks.seq2seq_model import SharedSeq2Seq, plain_greedy, source_prefix

        if model is None:
            if not model_dir or not os.path.isfile(os.path.join(model_dir, "config.json")):
                raise BadInput(f"--model {model_dir}: not a model directory (no config.json)")
            model, tokenizer = SharedSeq2Seq.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
        self.model = model.eval()
        plain_greedy(self.model)
        g = self.model.generation_config
        self._setup(model_dir or getattr(model, "name_or_path", ""), tokenizer,
                    {"max_new_tokens": g.max_new_tokens, "decoder_start_token_id": g.decoder_start_token_id,
                     "eos_token_id": g.eos_token_id, "pad_token_id": g.pad_token_id}, max_length, max_new_tokens,
                    source_prefix(self.model.config))

    def _generate(self, batch, want_logits: bool):
        import torch

        with torch.inference_mode():
            out = self.model.generate(input_ids=torch.as_tensor(batch["input_ids"]),
                                      attention_mask=torch.as_tensor(batch["attention_mask"]),
                                      max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=False,
                                      return_dict_in_generate=True, output_logits=want_logits)
        rows = out.sequences[:, 1:].tolist()  # the first position is the decoder start token
        steps = (torch.stack(out.logits, dim=1).float().numpy() if want_logits and out.logits else
                 [None] * len(rows))
        return rows, steps


class OnnxSummarizer(_Summarizer):
    def __init__(self, ref: str, max_length: int | None = None, max_new_tokens: int | None = None,
                 intra_op_threads: int | None = None):
        from domaintune.components.tasks.seq2seq_model import prefix_of

        self.encoder_path = os.path.abspath(resolve_model_file(ref))
        self.decoder_path = decoder_file(self.encoder_path)
        self.model_path = self.encoder_path  # what serving names as the file it serves
        if not os.path.isfile(self.decoder_path):
            raise BadInput(f"{self.encoder_path}: no decoder beside it ({os.path.basename(self.decoder_path)})")
        self.model_dir = os.path.dirname(self.encoder_path)
        self.intra_op_threads = intra_op_threads
        self._sessions = None
        path = os.path.join(self.model_dir, "generation_config.json")
        generation = json.load(open(path)) if os.path.isfile(path) else {}
        self._setup(self.model_dir, self.load_tokenizer(), generation, max_length, max_new_tokens,
                    prefix_of(self.model_dir))
        self.sessions  # noqa: B018 (a file that is no ONNX model is reported now, not at the first text)

    def load_tokenizer(self):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(self.model_dir)
        except (OSError, ValueError) as exc:
            raise BadInput(f"{self.model_dir}: no loadable tokenizer beside the ONNX model ({exc})") from None

    spinning = True  # onnxruntime's default; the server turns it off (serving/predictors.py)

    @property
    def sessions(self):
        if self._sessions is None:
            self._sessions = (open_session(self.encoder_path, self.intra_op_threads, spinning=self.spinning),
                              open_session(self.decoder_path, self.intra_op_threads, spinning=self.spinning))
        return self._sessions

    def _generate(self, batch, want_logits: bool):
        if self.num_beams != 1:
            raise BadInput("--num-beams > 1 needs the PyTorch model (the ONNX decoder decodes greedily): "
                           "give --model the run's model/ directory")
        encoder, decoder = self.sessions
        mask = np.asarray(batch["attention_mask"], dtype=np.int64)
        hidden = encoder.run(None, {"input_ids": np.asarray(batch["input_ids"], dtype=np.int64),
                                    "attention_mask": mask})[0]
        rows = np.full((len(mask), 1), self.start, dtype=np.int64)
        done = np.zeros(len(mask), dtype=bool)
        steps = []
        for _ in range(self.max_new_tokens):
            logits = decoder.run(None, {"decoder_input_ids": rows, "encoder_hidden_states": hidden,
                                        "encoder_attention_mask": mask})[0]
            if want_logits:
                steps.append(logits)
            token = np.where(done, self.pad, logits.argmax(axis=-1))
            rows = np.concatenate([rows, token[:, None]], axis=1)
            done |= token == self.eos
            if done.all():
                break
        per_row = np.stack(steps, axis=1) if steps else [None] * len(rows)
        return rows[:, 1:].tolist(), per_row

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_sessions"] = None
        return state
