"""Data of the seq2seq task: pairs of a source (`--text-column`) and a target (`--target-column`), validated,
split on the source text (a source that occurs twice never straddles splits), and described in the data
report (lengths in words here; token lengths and truncation are tokenize's `token_stats`)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from domaintune.components.core.errors import BadInput

COLUMNS = ["text", "summary"]


def _words(s: str) -> int:
    return len(s.split())


def read_pairs(frame: pd.DataFrame, uri: str, source: str, target: str) -> pd.DataFrame:
    """The (text, summary) rows of one file; a missing column, an empty source or target, or a target longer
    than its source (a summary is shorter than what it summarises; that row is swapped or mislabeled) is
    refused with the row's number (1-based data rows)."""
    for column, flag in ((source, "--text-column"), (target, "--target-column")):
        if column not in frame.columns:
            raise BadInput(f"{uri}: no column {column!r} ({flag}; columns: {', '.join(map(str, frame.columns))})")
    texts = frame[source].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip())
    targets = frame[target].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip())
    for i, (text, summary) in enumerate(zip(texts, targets), start=1):
        if not text:
            raise BadInput(f"{uri}: row {i}: empty source ({source!r})")
        if not summary:
            raise BadInput(f"{uri}: row {i}: empty target ({target!r})")
        if _words(summary) > _words(text):
            raise BadInput(f"{uri}: row {i}: the target has {_words(summary)} words, more than its source "
                           f"({_words(text)}): swapped columns? (--text-column {source}, --target-column {target})")
    return pd.DataFrame({"text": texts.to_numpy(), "summary": targets.to_numpy()})


def source_split(frame: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out about `share` of the rows, whole groups of identical sources at a time (seeded)."""
    from domaintune.components.tasks.tagging import group_split

    return group_split(frame, frame["text"], share, seed)


def _lengths(df: pd.DataFrame) -> dict:
    src, tgt = df["text"].map(_words), df["summary"].map(_words)
    ratio = src / tgt.clip(lower=1)
    return {"source_words_mean": round(float(src.mean()), 2), "source_words_p95": float(np.percentile(src, 95)),
            "source_words_max": int(src.max()), "target_words_mean": round(float(tgt.mean()), 2),
            "target_words_p95": float(np.percentile(tgt, 95)), "target_words_max": int(tgt.max()),
            "compression_ratio_mean": round(float(ratio.mean()), 2),
            "compression_ratio_median": round(float(ratio.median()), 2)}


def pairs_report(splits: dict[str, pd.DataFrame]) -> dict:
    train_sources = set(splits["train"]["text"])
    return {"pairs": {n: len(df) for n, df in splits.items()},
            "length": {n: _lengths(df) for n, df in splits.items() if len(df)},
            "duplicate_sources": {n: int(df["text"].duplicated().sum()) for n, df in splits.items()},
            "leakage": {f"train_{n}": {"identical_texts": len(set(splits[n]["text"]) & train_sources)}
                        for n in ("validation", "test")}}


def token_stats(sources: list[list[int]], targets: list[list[int]], max_length: int, max_target_length: int) -> dict:
    """Token lengths (untruncated) of both sides, the compression ratio in tokens, and truncation counts."""
    src = np.array([len(x) for x in sources])
    tgt = np.array([len(x) for x in targets])
    cut_src, cut_tgt = int((src > max_length).sum()), int((tgt > max_target_length).sum())
    return {"examples": len(src), "tokens_mean": round(float(src.mean()), 2), "tokens_p95": float(np.percentile(src, 95)),
            "tokens_max": int(src.max()), "target_tokens_mean": round(float(tgt.mean()), 2),
            "target_tokens_p95": float(np.percentile(tgt, 95)), "target_tokens_max": int(tgt.max()),
            "compression_ratio_tokens": round(float((src / np.maximum(tgt, 1)).mean()), 2),
            "truncated": cut_src, "truncated_fraction": round(cut_src / len(src), 4),
            "targets_truncated": cut_tgt, "targets_truncated_fraction": round(cut_tgt / len(tgt), 4)}
