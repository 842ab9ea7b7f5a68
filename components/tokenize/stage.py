"""Tokenize: the base model's fast tokenizer, batched, no padding stored (the collator pads per batch).

The task encodes (tasks/: label alignment differs by task). Out: one Arrow dataset per split, the
tokenizer, `label_map.json` and `token_stats.json` (truncation counted from untruncated lengths).
"""
from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass

from domaintune.components.core.errors import positive
from domaintune.components.io import storage
from domaintune.components.io.base_models import check_max_length, load_tokenizer
from domaintune.components.io.splits import LABEL_MAP, SPLITS, read_split
from domaintune.components.tasks import task_of


@dataclass
class TokenizeParams:
    base_model: str = "all-MiniLM-L6-v2"
    max_length: int = 128
    max_target_length: int = 64  # seq2seq: targets (summaries) are truncated to this many tokens, and generation
    # stops after as many new tokens
    s3_endpoint_url: str = ""

    def __post_init__(self):
        positive("max-length", self.max_length)
        positive("max-target-length", self.max_target_length)


def run_tokenize(splits_dir: str, model_dir: str, output_dir: str, p: TokenizeParams) -> dict:
    """Writes one Arrow dataset per split (input ids, attention mask, labels, length) and token stats."""
    from datasets import Dataset

    check_max_length(p.max_length, model_dir)
    task = task_of(splits_dir)
    tokenizer = load_tokenizer(model_dir)
    tokenizer.model_max_length = 1 << 30  # measure full lengths first; the task truncates and counts it

    stats = {"params": asdict(p), "task": task.name, "max_length": p.max_length, "splits": {}}
    with storage.atomic_dir(output_dir) as tmp:
        for name in SPLITS:
            columns, stats["splits"][name] = task.encode(tokenizer, read_split(splits_dir, name), p.max_length,
                                                          max_target_length=p.max_target_length)
            Dataset.from_dict(columns).save_to_disk(os.path.join(tmp, name))
        shutil.copy(os.path.join(splits_dir, LABEL_MAP), tmp)
        tokenizer.model_max_length = p.max_length
        tokenizer.save_pretrained(os.path.join(tmp, "tokenizer"))
        storage.write_json(os.path.join(tmp, "token_stats.json"), stats)
    return stats
