"""The export's tokenizer without transformers: `tokenizer.json` through the `tokenizers` package.

`from transformers import AutoTokenizer` imports PyTorch (transformers 5.23), which costs the server
~1 s of start-up and ~300 MB of memory for nothing: the request path needs only tokenizer.json. This
class gives the two calls the ONNX predictors make of a transformers tokenizer, with the same results:
`tok(texts, truncation=True, max_length=L)` (special tokens added, right truncation, no padding) and
`tok.pad(features, return_tensors="np")` (to the batch's longest, on the side tokenizer_config.json says),
and, for summarizers, `tok.decode(ids, skip_special_tokens=True)`.
"""
from __future__ import annotations

import json
import os

import numpy as np

from domaintune.components.core.errors import BadInput

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"


class JsonTokenizer:
    def __init__(self, directory: str):
        from tokenizers import Tokenizer

        path = os.path.join(directory, TOKENIZER_FILE)
        if not os.path.isfile(path):
            raise BadInput(f"{directory}: no {TOKENIZER_FILE} beside the ONNX model (serving needs a fast tokenizer)")
        try:
            self._tok = Tokenizer.from_file(path)
        except Exception as exc:  # tokenizers raises its own Exception subclass
            raise BadInput(f"{path}: unreadable tokenizer ({str(exc).splitlines()[0][:200]})") from None
        config = {}
        config_path = os.path.join(directory, CONFIG_FILE)
        if os.path.isfile(config_path):
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        pad_token = config.get("pad_token") or "[PAD]"
        if isinstance(pad_token, dict):  # older configs store AddedToken dicts
            pad_token = pad_token.get("content", "[PAD]")
        pad_id = self._tok.token_to_id(pad_token)
        self.pad_values = {"input_ids": 0 if pad_id is None else pad_id,
                           "token_type_ids": int(config.get("pad_token_type_id") or 0), "attention_mask": 0}
        self.padding_side = config.get("padding_side", "right")
        # transformers' decode tidies " ." -> "." and the like where the config asks, except for BPE models
        # (where it would strip real spaces); the same rule here keeps served summaries equal to `predict`'s.
        self.clean_up_spaces = bool(config.get("clean_up_tokenization_spaces")) and type(
            self._tok.model).__name__ != "BPE"
        self.truncation_side = config.get("truncation_side", "right")
        self._tok.no_padding()
        self._tok.no_truncation()
        self._max_length: int | None = None

    def _truncate_to(self, max_length: int | None) -> None:
        if max_length != self._max_length:  # set once per predictor (its max_length never changes)
            if max_length:
                self._tok.enable_truncation(max_length, direction=self.truncation_side)
            else:
                self._tok.no_truncation()
            self._max_length = max_length

    def __call__(self, texts, truncation: bool = True, max_length: int | None = None,
                 is_split_into_words: bool = False) -> "Encoded":
        """IS_SPLIT_INTO_WORDS: TEXTS are lists of words (a tagger's input), as transformers' flag of that name."""
        self._truncate_to(max_length if truncation else None)
        if is_split_into_words:
            encodings = self._tok.encode_batch([[str(w) for w in words] for words in texts], is_pretokenized=True,
                                               add_special_tokens=True)
        else:
            encodings = self._tok.encode_batch([str(t) for t in texts], add_special_tokens=True)
        return Encoded(encodings)

    def pad(self, features: dict[str, list[list[int]]], return_tensors: str = "np") -> dict[str, np.ndarray]:
        rows = features["input_ids"]
        longest = max((len(r) for r in rows), default=0)
        out = {}
        for key, values in features.items():
            batch = np.full((len(values), longest), self.pad_values.get(key, 0), dtype=np.int64)
            for i, row in enumerate(values):
                if self.padding_side == "left":
                    batch[i, longest - len(row):] = row
                else:
                    batch[i, :len(row)] = row
            out[key] = batch
        return out

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        text = self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return clean_up_spaces(text) if self.clean_up_spaces else text


class Encoded(dict):
    """input_ids / token_type_ids / attention_mask per text, and `word_ids(i)` as transformers' BatchEncoding has
    (None for special tokens): what a tagger needs to read a word's tag from its first sub-token."""

    def __init__(self, encodings):
        super().__init__(input_ids=[e.ids for e in encodings], token_type_ids=[e.type_ids for e in encodings],
                         attention_mask=[e.attention_mask for e in encodings])
        self._encodings = encodings

    def word_ids(self, index: int = 0) -> list[int | None]:
        return self._encodings[index].word_ids


CLEAN_UPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
             (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def clean_up_spaces(text: str) -> str:
    """transformers' `clean_up_tokenization` (the same replacements, in its order)."""
    for old, new in CLEAN_UPS:
        text = text.replace(old, new)
    return text
