"""The labeled test data the export checks against: a split file, or any labeled file (the benchmarks)."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from domaintune.components.core.errors import BadInput


def read_labeled(path: str, text_column: str = "text", label_column: str = "label") -> pd.DataFrame:
    """A labeled file (Parquet, or CSV/TSV/JSONL for the bench) as a frame with `text` and `label`.
    A TSV with a `sentence` column (GLUE) is accepted as text."""
    if not os.path.isfile(path):
        raise BadInput(f"{path}: no such file")
    lower = path.lower()
    try:
        if lower.endswith((".parquet", ".pq")):
            frame = pd.read_parquet(path)
        elif lower.endswith(".tsv"):
            frame = pd.read_csv(path, sep="\t", quoting=3, keep_default_na=False)
        elif lower.endswith(".csv"):
            frame = pd.read_csv(path, keep_default_na=False)
        elif lower.endswith((".jsonl", ".json")):
            frame = pd.read_json(path, lines=lower.endswith(".jsonl"))
        else:
            raise BadInput(f"{path}: unsupported file type (Parquet, CSV, TSV or JSONL)")
    except BadInput:
        raise
    except Exception as exc:
        raise BadInput(f"{path}: unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if text_column not in frame.columns and "sentence" in frame.columns:
        text_column = "sentence"
    missing = [c for c in (text_column, label_column) if c not in frame.columns]
    if missing:
        raise BadInput(f"{path}: missing column(s) {missing} (has {list(frame.columns)})")
    frame = frame.rename(columns={text_column: "text", label_column: "label"})[["text", "label"]]
    if frame.empty:
        raise BadInput(f"{path}: no rows")
    frame["text"] = frame["text"].astype(str)
    return frame.reset_index(drop=True)


def label_ids(frame: pd.DataFrame, labels: list[str], path: str) -> np.ndarray:
    """Labels as class ids of the model's id2label: ints in range, or the label names themselves."""
    values = frame["label"]
    if pd.api.types.is_integer_dtype(values):
        ids = values.to_numpy()
    else:
        index = {name: i for i, name in enumerate(labels)}
        unknown = sorted({str(v) for v in values if str(v) not in index})
        if unknown:
            raise BadInput(f"{path}: labels {unknown[:5]} are not class ids or names of the model's labels {labels}")
        ids = np.array([index[str(v)] for v in values])
    bad = ids[(ids < 0) | (ids >= len(labels))]
    if len(bad):
        raise BadInput(f"{path}: label {int(bad[0])} outside the model's {len(labels)} classes {labels}")
    return ids.astype(np.int64)
