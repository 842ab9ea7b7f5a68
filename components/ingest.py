"""Ingest: read labeled text (CSV/TSV/JSONL/Parquet, local or s3://), validate it, split it, report on it.

Out: `train.parquet`, `validation.parquet`, `test.parquet` (columns `text`, `label` as a class id,
`label_name`, and any slice columns) and `label_map.json` in the splits directory, plus a data report.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from domaintune.components import storage
from domaintune.components.errors import BadInput, fraction, require

SPLITS = ("train", "validation", "test")
READERS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


@dataclass
class IngestParams:
    """Defaults live in the pipeline signature (pipelines/training_pipeline.py), their one source."""

    train_data: str
    validation_data: str
    test_data: str
    text_column: str
    label_column: str
    slice_columns: list[str]
    validation_fraction: float
    test_fraction: float
    seed: int
    s3_endpoint_url: str
    data_version: str

    def __post_init__(self):
        self.train_data = self.train_data or sample_data()
        fraction("validation-fraction", self.validation_fraction, allow_zero=False)
        fraction("test-fraction", self.test_fraction, allow_zero=False)
        require(
            self.validation_fraction + self.test_fraction < 1,
            "--validation-fraction plus --test-fraction must leave rows for training",
        )


def sample_data() -> str:
    """The bundled sample (support tickets), used when no --train-data is given."""
    from importlib.resources import files

    return str(files("domaintune.examples") / "support_tickets.csv")


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


def clean(frame: pd.DataFrame, uri: str, p: IngestParams) -> tuple[pd.DataFrame, dict]:
    """Keep the text, label and slice columns; reject what cannot be trained on, report what was dropped."""
    for column in [p.text_column, p.label_column, *p.slice_columns]:
        if column not in frame.columns:
            raise BadInput(f"{uri}: no column {column!r} (columns: {', '.join(map(str, frame.columns))})")
    texts = frame[p.text_column].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    empty = texts.str.strip() == ""
    if empty.all():
        raise BadInput(f"{uri}: column {p.text_column!r} is empty in every row")
    labels = frame[p.label_column]
    missing = labels.isna() | (labels.astype(str).str.strip() == "")
    if missing.any():
        row = int(np.flatnonzero(missing.to_numpy())[0]) + 1
        raise BadInput(f"{uri}: row {row}: empty value in label column {p.label_column!r}")
    out = pd.DataFrame({"text": texts, "label_name": labels.map(_label_str)})
    for column in p.slice_columns:
        out[column] = frame[column].astype(str)
    out = out[~empty.to_numpy()].reset_index(drop=True)
    return out, {"rows_read": len(frame), "empty_texts_dropped": int(empty.sum())}


def _label_str(value) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    return str(value).strip()


def sorted_labels(names) -> list[str]:
    """Numeric labels sort as numbers (2 < 10), anything else as strings: a stable, explicit label2id."""
    unique = set(names)
    try:
        return sorted(unique, key=lambda s: (float(s), s))
    except ValueError:
        return sorted(unique)


def split(frame: pd.DataFrame, p: IngestParams) -> tuple[dict[str, pd.DataFrame], dict]:
    """Stratified, seeded split of the unique rows; identical (text, label) rows never straddle splits."""
    from sklearn.model_selection import train_test_split

    unique = frame.drop_duplicates(subset=["text", "label_name"]).reset_index(drop=True)
    info = {"duplicates_dropped_before_split": len(frame) - len(unique), "stratified": True}
    holdout = p.validation_fraction + p.test_fraction
    try:
        train, rest = train_test_split(unique, test_size=holdout, random_state=p.seed, stratify=unique["label_name"])
        val, test = train_test_split(
            rest, test_size=p.test_fraction / holdout, random_state=p.seed, stratify=rest["label_name"]
        )
    except ValueError:  # a class too small to appear in every split: fall back to a seeded random split
        info["stratified"] = False
        train, rest = train_test_split(unique, test_size=holdout, random_state=p.seed)
        val, test = train_test_split(rest, test_size=p.test_fraction / holdout, random_state=p.seed)
    require(len(val) > 0 and len(test) > 0, f"{p.train_data}: too few rows ({len(unique)}) to split")
    return {"train": train, "validation": val, "test": test}, info


def length_stats(texts: pd.Series) -> dict:
    words = texts.str.split().str.len().to_numpy()
    chars = texts.str.len().to_numpy()
    return {
        "words": {"mean": round(float(words.mean()), 2), "p50": float(np.median(words)),
                  "p95": float(np.percentile(words, 95)), "max": int(words.max())},
        "chars": {"mean": round(float(chars.mean()), 2), "max": int(chars.max())},
    }


def build_report(splits: dict[str, pd.DataFrame], labels: list[str], info: dict, p: IngestParams) -> dict:
    train_texts = set(splits["train"]["text"])
    report = {
        "params": {k: v for k, v in vars(p).items()},
        "labels": labels,
        "rows": {name: len(df) for name, df in splits.items()},
        "label_counts": {name: {lab: int((df["label_name"] == lab).sum()) for lab in labels}
                         for name, df in splits.items()},
        "length": {name: length_stats(df["text"]) for name, df in splits.items()},
        "duplicates": {},
        "leakage": {},
        **info,
    }
    for name, df in splits.items():
        dup_texts = df["text"].duplicated(keep=False)
        conflicting = df[dup_texts].groupby("text")["label_name"].nunique()
        report["duplicates"][name] = {
            "duplicate_rows": int(df["text"].duplicated().sum()),
            "texts_with_conflicting_labels": int((conflicting > 1).sum()),
        }
    for name in ("validation", "test"):
        shared = sorted(set(splits[name]["text"]) & train_texts)
        report["leakage"][f"train_{name}"] = {"identical_texts": len(shared), "examples": shared[:5]}
    return report


def run_ingest(p: IngestParams, splits_dir: str, report_path: str) -> dict:
    """Read, validate, split and report. Writes nothing unless everything succeeds."""
    frame, sha = read_table(p.train_data, p.s3_endpoint_url)
    train, info = clean(frame, p.train_data, p)
    info["data_sha256"] = {p.train_data: sha}
    inputs = {"train": train}
    for name, uri in (("validation", p.validation_data), ("test", p.test_data)):
        if uri:
            frame, info["data_sha256"][uri] = read_table(uri, p.s3_endpoint_url)
            inputs[name], extra = clean(frame, uri, p)
            info[f"{name}_empty_texts_dropped"] = extra["empty_texts_dropped"]

    info["input_duplicates"] = {name: int(df.duplicated(["text", "label_name"]).sum()) for name, df in inputs.items()}
    labels = sorted_labels(train["label_name"])
    if len(labels) < 2:
        raise BadInput(f"{p.train_data}: column {p.label_column!r} has a single class {labels[0]!r}; need at least 2")
    for name, uri in (("validation", p.validation_data), ("test", p.test_data)):
        if name in inputs:
            unseen = ~inputs[name]["label_name"].isin(labels)
            if unseen.any():
                row = int(np.flatnonzero(unseen.to_numpy())[0])
                raise BadInput(
                    f"{uri}: row {row + 1}: label {inputs[name]['label_name'].iloc[row]!r} "
                    f"does not occur in the training data {p.train_data}"
                )

    if "validation" in inputs and "test" in inputs:
        splits = inputs
        info["stratified"] = None
    elif "validation" in inputs or "test" in inputs:
        given = "validation" if "validation" in inputs else "test"
        other = "test" if given == "validation" else "validation"
        share = p.test_fraction if other == "test" else p.validation_fraction
        train_part, carved = carve_one(train, share, p.seed)
        splits = {"train": train_part, given: inputs[given], other: carved}
    else:
        splits, split_info = split(train, p)
        info.update(split_info)

    label2id = {lab: i for i, lab in enumerate(labels)}
    report = build_report(splits, labels, info, p)
    with storage.atomic_dir(splits_dir) as tmp:
        for name in SPLITS:
            df = splits[name].reset_index(drop=True)
            df.insert(1, "label", df["label_name"].map(label2id).astype("int64"))
            df.to_parquet(os.path.join(tmp, f"{name}.parquet"), index=False)
        storage.write_json(os.path.join(tmp, "label_map.json"), {"labels": labels, "label2id": label2id})
    os.makedirs(os.path.dirname(os.path.abspath(report_path)), exist_ok=True)
    storage.write_json(report_path, report)
    return report


def carve_one(frame: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    from sklearn.model_selection import train_test_split

    unique = frame.drop_duplicates(subset=["text", "label_name"])
    try:
        return train_test_split(unique, test_size=share, random_state=seed, stratify=unique["label_name"])
    except ValueError:
        return train_test_split(unique, test_size=share, random_state=seed)
