"""Token-annotated data for tagging tasks: CoNLL-style files (one token per line, the tag in the last column,
a blank line between sentences, `-DOCSTART-` document markers — CoNLL-2003 and WNUT-17 are this format),
JSONL/Parquet with `tokens` + `tags`, and JSONL/Parquet with `text` + character spans
(`[{"start", "end", "label"}]`, as Label Studio, doccano or spaCy export them).

Every reader returns one row per sentence: `tokens`, `tags` (as written, validated by the task), `doc`
(document number, -1 without markers) and `line` (the file line or row the sentence starts on, for errors).
"""
from __future__ import annotations

import json
import os
import re

import pandas as pd

from domaintune.components.core.errors import BadInput

CONLL_EXTENSIONS = (".conll", ".conllu", ".iob", ".iob2", ".bio", ".txt")
# Words and single punctuation marks, as BERT's basic tokenizer (and CoNLL's tokenisation) splits them.
WORD = re.compile(r"\w+(?:[-'’.]\w+)*|[^\w\s]", re.UNICODE)


def is_conll(uri: str) -> bool:
    return uri.lower().endswith(CONLL_EXTENSIONS)


def read_conll(path: str, uri: str) -> pd.DataFrame:
    rows, tokens, tags, doc, start = [], [], [], -1, 0
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, 1):
            line = raw.rstrip("\n").rstrip("\r")
            if line.startswith("-DOCSTART-"):
                doc += 1
                continue
            if not line.strip():
                if tokens:
                    rows.append({"tokens": tokens, "tags": tags, "doc": doc, "line": start})
                tokens, tags = [], []
                continue
            fields = line.split("\t") if "\t" in line else line.split()
            if len(fields) < 2:
                raise BadInput(f"{uri}: line {number}: expected a token and a tag separated by whitespace (got {line[:80]!r})")
            if not tokens:
                start = number
            tokens.append(fields[0])
            tags.append(fields[-1].strip())
    if tokens:
        rows.append({"tokens": tokens, "tags": tags, "doc": doc, "line": start})
    if not rows:
        raise BadInput(f"{uri}: no sentences (expected one token and tag per line, blank lines between sentences)")
    return pd.DataFrame(rows)


def words_with_offsets(text: str) -> list[tuple[str, int, int]]:
    return [(m.group(0), m.start(), m.end()) for m in WORD.finditer(text)]


def spans_to_tags(text: str, spans, where: str) -> tuple[list[str], list[str]]:
    """Character spans -> words and IOB2 tags. Spans must lie inside the text and not overlap; a span that
    starts or ends inside a word takes the whole word."""
    if not isinstance(spans, (list, tuple)):
        raise BadInput(f"{where}: spans must be a list of {{start, end, label}} (got {type(spans).__name__})")
    clean = []
    for span in spans:
        try:
            start, end, label = int(span["start"]), int(span["end"]), str(span["label"]).strip()
        except (KeyError, TypeError, ValueError):
            raise BadInput(f"{where}: span {span!r} needs integer start, end and a label") from None
        if not 0 <= start < end <= len(text):
            raise BadInput(f"{where}: span {start}-{end} ({label}) falls outside the text ({len(text)} characters)")
        if not label:
            raise BadInput(f"{where}: span {start}-{end} has an empty label")
        clean.append((start, end, label))
    clean.sort()
    for (s1, e1, l1), (s2, e2, l2) in zip(clean, clean[1:]):
        if s2 < e1:
            raise BadInput(f"{where}: spans {s1}-{e1} ({l1}) and {s2}-{e2} ({l2}) overlap")
    words = words_with_offsets(text)
    tags = ["O"] * len(words)
    for start, end, label in clean:
        inside = [i for i, (_, ws, we) in enumerate(words) if ws < end and we > start]
        for k, i in enumerate(inside):
            tags[i] = ("B-" if k == 0 else "I-") + label
    return [w for w, _, _ in words], tags


def from_table(frame: pd.DataFrame, uri: str, text_column: str, label_column: str) -> pd.DataFrame:
    """Rows of a JSONL/Parquet file: `tokens` + `tags` (or `ner_tags`), or a text column + spans
    (`label_column`, `spans` or `entities`)."""
    tag_column = next((c for c in ("tags", "ner_tags") if c in frame.columns), None)
    if "tokens" in frame.columns and tag_column:
        rows = [{"tokens": _list(t, uri, i, "tokens"), "tags": _list(g, uri, i, tag_column), "line": i + 1}
                for i, (t, g) in enumerate(zip(frame["tokens"], frame[tag_column]))]
    else:
        span_column = next((c for c in (label_column, "spans", "entities", "label") if c in frame.columns), None)
        if text_column not in frame.columns or span_column is None:
            raise BadInput(f"{uri}: expected columns tokens + tags, or {text_column!r} + spans "
                           f"(columns: {', '.join(map(str, frame.columns))})")
        rows = []
        for i, (text, spans) in enumerate(zip(frame[text_column], frame[span_column])):
            spans = json.loads(spans) if isinstance(spans, str) else (list(spans) if spans is not None else [])
            tokens, tags = spans_to_tags("" if text is None else str(text), spans, f"{uri}: row {i + 1}")
            rows.append({"tokens": tokens, "tags": tags, "line": i + 1})
    out = pd.DataFrame(rows)
    out["doc"] = frame["doc"].astype(int).tolist() if "doc" in frame.columns else -1
    return out


def _list(value, uri: str, row: int, column: str) -> list[str]:
    if isinstance(value, str):
        value = json.loads(value) if value.strip().startswith("[") else value.split()
    try:
        return [str(v) for v in value]
    except TypeError:
        raise BadInput(f"{uri}: row {row + 1}: {column} must be a list (got {value!r})") from None


def read_tagged(uri: str, endpoint_url: str, text_column: str, label_column: str) -> tuple[pd.DataFrame, str]:
    """One tagged file as sentence rows, and its sha256."""
    from domaintune.components.io import storage
    from domaintune.components.io.tables import read_table

    if is_conll(uri):
        path = storage.fetch(uri, endpoint_url)
        if not os.path.isfile(path):
            raise BadInput(f"{uri}: no such file")
        try:
            return read_conll(path, uri), storage.content_hash(path)
        except UnicodeDecodeError as exc:
            raise BadInput(f"{uri}: not valid UTF-8 at byte {exc.start}") from None
    frame, sha = read_table(uri, endpoint_url)
    return from_table(frame, uri, text_column, label_column), sha
