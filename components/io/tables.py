"""Reading one data file (CSV, TSV, JSONL or Parquet; local or s3://) as a frame, with errors that name it."""
from __future__ import annotations

import os

import pandas as pd

from domaintune.components.core.errors import BadInput
from domaintune.components.io import storage

READERS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


def read_table(uri: str, endpoint_url: str = "") -> tuple[pd.DataFrame, str]:
    """Read one data file; every failure names the file. Returns the frame and the file's sha256 (lineage)."""
    ext = next((e for e in READERS if uri.lower().endswith(e)), None)
    if ext is None:
        raise BadInput(f"{uri}: unsupported file type (use .csv, .tsv, .jsonl or .parquet)")
    path = storage.fetch(uri, endpoint_url)
    if os.path.isdir(path):
        raise BadInput(f"{uri}: is a directory, expected a file")
    if os.path.getsize(path) == 0:
        raise BadInput(f"{uri}: empty file")
    kind = READERS[ext]
    try:
        if kind == "parquet":
            frame = pd.read_parquet(path)
        elif kind == "jsonl":
            frame = pd.read_json(path, lines=True, dtype=False, encoding="utf-8")
        else:
            frame = pd.read_csv(
                path, sep="\t" if kind == "tsv" else ",", dtype=str, keep_default_na=False,
                encoding="utf-8", quoting=3 if kind == "tsv" else 0,  # TSV: quotes are text (GLUE)
            )
    except UnicodeDecodeError:
        offset = _first_bad_byte(path)
        raise BadInput(f"{uri}: not valid UTF-8 at byte {offset} (line {_line_of_byte(path, offset)})") from None
    except (ValueError, pd.errors.ParserError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"{uri}: cannot parse as {kind}: {first}") from None
    if frame.empty:
        raise BadInput(f"{uri}: no data rows")
    return frame, storage.content_hash(path)


def _first_bad_byte(path: str) -> int:
    """pandas reports offsets within its read buffer; decode the file ourselves for the real position."""
    with open(path, "rb") as f:
        try:
            f.read().decode("utf-8")
        except UnicodeDecodeError as exc:
            return exc.start
    return 0


def _line_of_byte(path: str, offset: int) -> int:
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1
