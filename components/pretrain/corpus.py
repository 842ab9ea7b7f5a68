"""The pretraining corpus: documents from an unlabeled domain corpus (a text file, one document per line, or
a table's text column; local or s3://) and/or the ingest stage's train split, whitespace-collapsed."""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from domaintune.components.core.errors import BadInput, require
from domaintune.components.io import storage, tables

if TYPE_CHECKING:
    from domaintune.components.pretrain.stage import PretrainParams


def read_corpus(uri: str, text_column: str, endpoint_url: str = "") -> tuple[list[str], str]:
    """Documents from a text file (one per line) or a table's text column; every failure names the file."""
    if any(uri.lower().endswith(e) for e in tables.READERS):
        values, sha = _table_column(uri, text_column, endpoint_url)
        what = f"column {text_column!r}"
    else:
        values, sha = _text_lines(uri, endpoint_url)
        what = "line"
    docs = _clean_docs(values)
    if not docs:
        raise BadInput(f"{uri}: no text (every {what} is blank)")
    return docs, sha


def _table_column(uri: str, text_column: str, endpoint_url: str) -> tuple[list, str]:
    frame, sha = tables.read_table(uri, endpoint_url)
    if text_column not in frame.columns:
        raise BadInput(f"{uri}: no column {text_column!r} (columns: {', '.join(map(str, frame.columns))}); "
                       f"set --corpus-text-column")
    return frame[text_column].tolist(), sha


def _text_lines(uri: str, endpoint_url: str) -> tuple[list[str], str]:
    path = storage.fetch(uri, endpoint_url)
    if os.path.isdir(path):
        raise BadInput(f"{uri}: is a directory, expected a file")
    with open(path, "rb") as f:
        raw = f.read()
    if not raw:
        raise BadInput(f"{uri}: empty file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise BadInput(f"{uri}: not valid UTF-8 at byte {exc.start} (line {line}); "
                       f"expected UTF-8 text, one document per line") from None
    return text.removeprefix("\ufeff").split("\n"), storage.content_hash(path)


def _clean_docs(values) -> list[str]:
    docs = []
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        s = " ".join(str(v).split())  # collapse whitespace (tabs, \r, runs of spaces)
        if s:
            docs.append(s)
    return docs


def gather_corpus(splits_dir: str, p: PretrainParams) -> tuple[list[str], dict]:
    docs, sources = [], []
    if p.domain_corpus:
        corpus, sha = read_corpus(p.domain_corpus, p.corpus_text_column, p.s3_endpoint_url)
        docs += corpus
        sources.append({"kind": "domain_corpus", "uri": p.domain_corpus, "sha256": sha, "documents": len(corpus)})
    if p.pretrain_on_train_text:
        path = os.path.join(splits_dir, "train.parquet")
        if not os.path.isfile(path):
            raise BadInput(f"{path}: no such file (--pretrain-on-train-text reads the ingest stage's train split)")
        import pandas as pd

        train = _clean_docs(pd.read_parquet(path, columns=["text"])["text"].tolist())
        require(bool(train), f"{path}: the train split has no text")
        docs += train
        sources.append({"kind": "train_text", "uri": path, "sha256": storage.content_hash(path), "documents": len(train)})
    return docs, {"sources": sources, "documents": len(docs)}
