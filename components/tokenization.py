"""Tokenize: the base model's fast tokenizer, batched, no padding stored (the collator pads per batch)."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd

from domaintune.components import storage
from domaintune.components.errors import BadInput, positive
from domaintune.components.ingest import SPLITS


def load_tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except OSError as exc:
        raise BadInput(f"--base-model {model_dir}: cannot load a tokenizer ({str(exc).splitlines()[0]})") from None
    if not tokenizer.is_fast:
        raise BadInput(f"--base-model {model_dir}: no fast tokenizer (tokenizer.json) found")
    return tokenizer


def check_max_length(max_length: int, model_dir: str) -> None:
    positive("max-length", max_length)
    from transformers import AutoConfig

    limit = getattr(AutoConfig.from_pretrained(model_dir), "max_position_embeddings", None)
    if limit and max_length > limit:
        raise BadInput(f"--max-length {max_length} exceeds the base model's {limit} positions")


def run_tokenize(splits_dir: str, model_dir: str, output_dir: str, max_length: int = 128) -> dict:
    """Writes one Arrow dataset per split (input_ids, attention_mask, labels, length) and token stats."""
    from datasets import Dataset

    check_max_length(max_length, model_dir)
    tokenizer = load_tokenizer(model_dir)
    tokenizer.model_max_length = 1 << 30  # measure full lengths first; we truncate below and count it

    stats = {"max_length": max_length, "splits": {}}
    with storage.atomic_dir(output_dir) as tmp:
        for name in SPLITS:
            frame = pd.read_parquet(os.path.join(splits_dir, f"{name}.parquet"), columns=["text", "label"])
            texts = frame["text"].tolist()
            full = tokenizer(texts)["input_ids"]
            lengths = np.fromiter((len(x) for x in full), dtype=np.int64, count=len(full))
            encoded = tokenizer(texts, truncation=True, max_length=max_length)
            columns = {k: encoded[k] for k in encoded.keys()}
            columns["labels"] = frame["label"].tolist()
            columns["length"] = [len(x) for x in encoded["input_ids"]]
            Dataset.from_dict(columns).save_to_disk(os.path.join(tmp, name))
            stats["splits"][name] = {
                "examples": len(lengths),
                "tokens_mean": round(float(lengths.mean()), 2),
                "tokens_p95": float(np.percentile(lengths, 95)),
                "tokens_max": int(lengths.max()),
                "truncated": int((lengths > max_length).sum()),
                "truncated_fraction": round(float((lengths > max_length).mean()), 4),
            }
        shutil.copy(os.path.join(splits_dir, "label_map.json"), tmp)
        tokenizer.model_max_length = max_length
        tokenizer.save_pretrained(os.path.join(tmp, "tokenizer"))
        storage.write_json(os.path.join(tmp, "token_stats.json"), stats)
    return stats
