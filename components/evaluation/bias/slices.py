"""Per-slice metrics and gaps: accuracy, macro-F1 and per-class FPR/FNR for every value of every slice
column, and the spread between the gated slices (the result shape is in the package docstring)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from domaintune.components.core.errors import BadInput

MISSING = "(missing)"


def slice_metrics(frame: pd.DataFrame, y_true, y_pred, labels: list[str], slice_columns: list[str],
                  min_slice_size: int = 30) -> dict:
    """Accuracy, macro-F1 and per-class FPR/FNR for every value of every slice column, and the gaps.

    A slice is *gated* when it has at least `min_slice_size` rows; only gated slices enter the gaps (a gap
    between two slices of five rows is noise). Per column: `accuracy_gap` and `macro_f1_gap` are the
    best minus the worst gated slice, `fpr_gap`/`fnr_gap` the largest per-class spread (equalised-odds
    view, reported, not part of `max_gap`); `max_gap` = max(accuracy_gap, macro_f1_gap). `max_slice_gap`
    is the largest `max_gap` over the columns (None when no column has two gated slices).
    y_true / y_pred: label ids or label strings, aligned with `frame`'s rows. Missing values of a slice
    column form their own slice, "(missing)".
    """
    yt, yp = _checked_labels(frame, y_true, y_pred, labels, slice_columns, min_slice_size)
    columns = {col: _column_metrics(_slice_keys(frame, col), yt, yp, labels, min_slice_size)
               for col in slice_columns}
    gaps = {c: v["max_gap"] for c, v in columns.items() if v["max_gap"] is not None}
    worst = max(gaps, key=gaps.get) if gaps else None
    return {"min_slice_size": int(min_slice_size), "columns": columns,
            "max_slice_gap": gaps[worst] if worst else None, "worst_column": worst}


def _checked_labels(frame: pd.DataFrame, y_true, y_pred, labels: list[str], slice_columns: list[str],
                    min_slice_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate the arguments; y_true / y_pred as label ids aligned with the frame."""
    missing = [c for c in slice_columns if c not in frame.columns]
    if missing:
        raise BadInput(f"slice column {missing[0]!r} is not in the data (columns: {list(frame.columns)})")
    if min_slice_size < 1:
        raise BadInput(f"--min-slice-size must be a positive integer (got {min_slice_size!r})")
    yt = _label_ids(y_true, labels, "y_true")
    yp = _label_ids(y_pred, labels, "y_pred")
    if not (len(yt) == len(yp) == len(frame)):
        raise BadInput(f"slice metrics: {len(frame)} rows but {len(yt)} true and {len(yp)} predicted labels")
    return yt, yp


def _slice_keys(frame: pd.DataFrame, col: str) -> np.ndarray:
    """Each row's slice of column COL as a string; missing values form the slice "(missing)"."""
    return frame[col].astype("object").where(frame[col].notna(), MISSING).astype(str).to_numpy()


def _column_metrics(keys: np.ndarray, yt: np.ndarray, yp: np.ndarray, labels: list[str],
                    min_slice_size: int) -> dict:
    slices = {}
    for value in sorted(set(keys.tolist())):
        mask = keys == value
        stats = _slice_stats(yt[mask], yp[mask], labels)
        stats["gated"] = stats["n"] >= min_slice_size
        slices[value] = stats
    gated = {k: s for k, s in slices.items() if s["gated"]}
    acc_gap = _spread([s["accuracy"] for s in gated.values()])
    f1_gap = _spread([s["macro_f1"] for s in gated.values()])
    fpr_gap = _max_or_none(_spread([s["per_class"][lab]["fpr"] for s in gated.values()]) for lab in labels)
    fnr_gap = _max_or_none(_spread([s["per_class"][lab]["fnr"] for s in gated.values()]) for lab in labels)
    ranked = sorted(gated, key=lambda k: (gated[k]["macro_f1"], gated[k]["accuracy"]))
    return {
        "slices": slices, "n_gated": len(gated),
        "accuracy_gap": acc_gap, "macro_f1_gap": f1_gap, "fpr_gap": fpr_gap, "fnr_gap": fnr_gap,
        "max_gap": _max_or_none([acc_gap, f1_gap]),
        "worst_slice": ranked[0] if len(ranked) >= 2 else None,
        "best_slice": ranked[-1] if len(ranked) >= 2 else None,
    }


def _label_ids(values, labels: list[str], what: str) -> np.ndarray:
    """y given as label ids (0..k-1) or as label strings -> ids."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        if arr.size and (arr.min() < 0 or arr.max() >= len(labels)):
            raise BadInput(f"{what}: label ids must be in 0..{len(labels) - 1}")
        return arr.astype(int)
    index = {str(label): i for i, label in enumerate(labels)}
    out = np.empty(len(arr), dtype=int)
    for i, v in enumerate(arr):
        key = str(v)
        if key not in index:
            if isinstance(v, (float, np.floating)) and float(v).is_integer() and 0 <= int(v) < len(labels):
                out[i] = int(v)
                continue
            raise BadInput(f"{what}: unknown label {v!r} (labels: {labels})")
        out[i] = index[key]
    return out


def _macro_f1_present(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-F1 over the classes that occur in the slice (true or predicted): a class absent from a slice
    would otherwise count as F1 = 0 and make a small slice look worse than it is."""
    from sklearn.metrics import f1_score

    present = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    return float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))


def _rate(num: int, den: int) -> float | None:
    return float(num / den) if den else None


def _slice_stats(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict:
    n = len(y_true)
    per_class = {}
    for c, label in enumerate(labels):
        pos = y_true == c
        pred = y_pred == c
        per_class[label] = {
            "support": int(pos.sum()),
            # FPR: share of the slice's non-c examples predicted c; FNR: share of its c examples missed.
            "fpr": _rate(int((pred & ~pos).sum()), int((~pos).sum())),
            "fnr": _rate(int((~pred & pos).sum()), int(pos.sum())),
        }
    return {"n": int(n), "accuracy": float((y_true == y_pred).mean()) if n else None,
            "macro_f1": _macro_f1_present(y_true, y_pred) if n else None, "per_class": per_class}


def _spread(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(max(vals) - min(vals)) if len(vals) >= 2 else None


def _max_or_none(values) -> float | None:
    vals = [v for v in values if v is not None]
    return max(vals) if vals else None
