"""Masked-LM blocks: documents tokenized whole, joined with the separator token and cut into full
`max_length` blocks (special tokens included), so no step computes on padding; a seeded slice of whole
documents is held out for perplexity."""
from __future__ import annotations

import numpy as np

from domaintune.components.core.errors import BadInput

HELDOUT_FRACTION = 0.05  # of the corpus tokens, in whole documents ...
MAX_HELDOUT_BLOCKS = 256  # ... capped: ~32k tokens at block 128, ~4.8k masked tokens scored


def special_template(tokenizer) -> tuple[list[int], list[int], int | None]:
    """Prefix and suffix ids the tokenizer puts around one sequence ([CLS] … [SEP] for BERT), and the id that
    separates documents inside a block (the separator, or EOS)."""
    body = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(body) + 1):
        if full[i:i + len(body)] == body:
            prefix, suffix = full[:i], full[i + len(body):]
            break
    else:  # pragma: no cover - a tokenizer that rewrites the text when adding special tokens
        prefix, suffix = [], []
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    return prefix, suffix, sep


def tokenize_docs(tokenizer, docs: list[str], offsets: bool) -> dict:
    saved = tokenizer.model_max_length
    tokenizer.model_max_length = 1 << 30  # whole documents; blocks cut them, nothing is truncated
    try:
        enc = tokenizer(docs, add_special_tokens=False, return_offsets_mapping=offsets,
                        return_attention_mask=False, return_token_type_ids=False)
    finally:
        tokenizer.model_max_length = saved
    return enc


def pack_blocks(enc: dict, idx, tokenizer, max_length: int, offsets: bool) -> dict[str, np.ndarray]:
    """Concatenate the documents IDX (separator between them) and cut full blocks of MAX_LENGTH tokens,
    special tokens included. The remainder shorter than a block is dropped."""
    prefix, suffix, sep = special_template(tokenizer)
    body = max_length - len(prefix) - len(suffix)
    ids, offs = [], []
    for i in idx:
        ids.extend(enc["input_ids"][i])
        if sep is not None:
            ids.append(sep)
        if offsets:
            offs.extend(enc["offset_mapping"][i])
            if sep is not None:
                offs.append((0, 0))
    n = len(ids) // body
    ids_arr = np.asarray(ids[: n * body], dtype=np.int64).reshape(n, body)
    special = np.zeros((n, body), dtype=np.int64)
    if sep is not None:
        special[ids_arr == sep] = 1
    out = {
        "input_ids": np.concatenate([np.tile(prefix, (n, 1)), ids_arr, np.tile(suffix, (n, 1))], axis=1).astype(np.int64),
        "special_tokens_mask": np.concatenate(
            [np.ones((n, len(prefix)), np.int64), special, np.ones((n, len(suffix)), np.int64)], axis=1),
    }
    if offsets:
        off = np.asarray(offs[: n * body], dtype=np.int64).reshape(n, body, 2)
        out["offset_mapping"] = np.concatenate(
            [np.zeros((n, len(prefix), 2), np.int64), off, np.zeros((n, len(suffix), 2), np.int64)], axis=1)
    out["tokens_in_docs"] = len(ids)
    return out


def split_and_pack(tokenizer, docs: list[str], max_length: int, seed: int, offsets: bool,
                   source: str = "corpus") -> tuple[dict, dict, dict]:
    """Hold out whole documents (seeded), then pack each side. Returns train blocks, held-out blocks, stats."""
    enc = tokenize_docs(tokenizer, docs, offsets)
    lengths = np.fromiter((len(x) + 1 for x in enc["input_ids"]), dtype=np.int64, count=len(docs))
    total = int(lengths.sum())
    prefix, suffix, _ = special_template(tokenizer)
    body = max_length - len(prefix) - len(suffix)
    heldout_idx, train_idx = _heldout_documents(lengths, body, seed)
    train = pack_blocks(enc, train_idx, tokenizer, max_length, offsets)
    heldout = pack_blocks(enc, heldout_idx, tokenizer, max_length, offsets)
    if len(train["input_ids"]) == 0 or len(heldout["input_ids"]) == 0:
        raise BadInput(f"{source}: too little text for masked-LM pretraining: {total} tokens in {len(docs)} documents; "
                       f"need at least two blocks of --max-length {max_length} after holding out a slice")
    heldout["input_ids"] = heldout["input_ids"][:MAX_HELDOUT_BLOCKS]
    heldout["special_tokens_mask"] = heldout["special_tokens_mask"][:MAX_HELDOUT_BLOCKS]
    heldout.pop("offset_mapping", None)
    stats = {
        "corpus_tokens": total,
        "documents_train": len(train_idx), "documents_heldout": len(heldout_idx),
        "blocks_train": len(train["input_ids"]), "blocks_heldout": len(heldout["input_ids"]),
        "block_tokens": max_length,
        "train_tokens": int(train["input_ids"].size),
        "tokens_dropped_as_remainder": int(train.pop("tokens_in_docs") - len(train["input_ids"]) * body),
        "doc_tokens_p50": float(np.median(lengths - 1)), "doc_tokens_p95": float(np.percentile(lengths - 1, 95)),
    }
    heldout.pop("tokens_in_docs")
    return train, heldout, stats


def _heldout_documents(lengths: np.ndarray, body: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-out, train) document indices: the fewest documents of a seeded shuffle that reach the held-out
    token target (HELDOUT_FRACTION of the corpus, at least one block, at most MAX_HELDOUT_BLOCKS)."""
    target = max(body, min(int(HELDOUT_FRACTION * int(lengths.sum())), MAX_HELDOUT_BLOCKS * body))
    order = np.random.default_rng(seed).permutation(len(lengths))
    cum = np.cumsum(lengths[order])
    k = int(np.searchsorted(cum, target)) + 1  # smallest number of documents reaching the target
    return np.sort(order[:k]), np.sort(order[k:])


class Blocks:
    """A map-style dataset over packed blocks: dicts the library's collator understands."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def __len__(self):
        return len(self.arrays["input_ids"])

    def __getitem__(self, i):
        return {k: v[i].tolist() for k, v in self.arrays.items()}


def make_collator(tokenizer, mlm_probability: float, whole_word_masking: bool, seed: int):
    from transformers import DataCollatorForLanguageModeling

    if whole_word_masking:  # transformers 5: a flag of the one collator; words from offsets; [MASK] only
        return DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, whole_word_mask=True,
                                               mask_replace_prob=1.0, random_replace_prob=0.0, seed=seed)
    return DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, seed=seed)
