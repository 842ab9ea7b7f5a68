"""Ingest: read labeled data (CSV/TSV/JSONL/Parquet, local or s3://), validate it, split it, report on it.

What a row is depends on the task (tasks/): the task validates and normalises each file, defines the label
space and the split. Out: `train.parquet`, `validation.parquet`, `test.parquet` and `label_map.json`
(task, labels, label2id) in the splits directory, plus the data report.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import pandas as pd

from domaintune.components.core.errors import fraction, require
from domaintune.components.core.params import csv_list
from domaintune.components.io import storage
from domaintune.components.io.splits import SPLITS
from domaintune.components.tasks import DEFAULT_TASK, get_task


@dataclass
class IngestParams:
    train_data: str = ""
    validation_data: str = ""
    test_data: str = ""
    task: str = DEFAULT_TASK
    text_column: str = "text"
    label_column: str = "label"
    target_column: str = "summary"  # seq2seq: the target text of each source
    slice_columns: str = ""
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 42
    s3_endpoint_url: str = ""
    data_version: str = ""
    strict_iob2: bool = False  # taggers: refuse a stray I-X instead of repairing it to B-X

    def __post_init__(self):
        self.train_data = self.train_data or sample_data()  # the uri the report and the lineage name
        get_task(self.task)
        fraction("validation-fraction", self.validation_fraction, allow_zero=False)
        fraction("test-fraction", self.test_fraction, allow_zero=False)
        require(self.validation_fraction + self.test_fraction < 1,
                "--validation-fraction plus --test-fraction must leave rows for training")
        require(bool(self.text_column), "--text-column must not be empty")
        require(bool(self.label_column), "--label-column must not be empty")
        require(bool(self.target_column), "--target-column must not be empty")

    @property
    def slice_column_list(self) -> list[str]:
        return csv_list(self.slice_columns)


def sample_data() -> str:
    """The bundled sample (support tickets), used when no --train-data is given."""
    from importlib.resources import files

    return str(files("domaintune.examples") / "support_tickets.csv")


def read_inputs(task, p: IngestParams) -> tuple[dict[str, pd.DataFrame], dict]:
    """Every given file, read and validated by the task; `info` records sha256s and what was dropped."""
    frame, sha = task.read_file(p.train_data, p)
    train, info = task.read_rows(frame, p.train_data, p)
    info["data_sha256"] = {p.train_data: sha}
    inputs = {"train": train}
    for name, uri in (("validation", p.validation_data), ("test", p.test_data)):
        if uri:
            frame, info["data_sha256"][uri] = task.read_file(uri, p)
            inputs[name], extra = task.read_rows(frame, uri, p)
            info[f"{name}_empty_texts_dropped"] = extra["empty_texts_dropped"]
    info["input_duplicates"] = {name: task.duplicates(df) for name, df in inputs.items()}
    return inputs, info


def make_splits(task, inputs: dict, info: dict, p: IngestParams) -> dict[str, pd.DataFrame]:
    """Given files as they are; a missing validation or test split carved from train; or a split of train."""
    if "validation" in inputs and "test" in inputs:
        info["stratified"] = None
        return inputs
    if "validation" in inputs or "test" in inputs:
        given = "validation" if "validation" in inputs else "test"
        other = "test" if given == "validation" else "validation"
        share = p.test_fraction if other == "test" else p.validation_fraction
        train_part, carved = task.carve(inputs["train"], share, p.seed)
        return {"train": train_part, given: inputs[given], other: carved}
    splits, split_info = task.split(inputs["train"], p)
    info.update(split_info)
    return splits


def build_report(task, splits: dict[str, pd.DataFrame], labels: list[str], info: dict, p: IngestParams) -> dict:
    return {"params": asdict(p), "task": task.name, "labels": labels,
            "rows": {name: len(df) for name, df in splits.items()},
            **task.data_report(splits, labels), **info}


def run_ingest(p: IngestParams, splits_dir: str, report_path: str) -> dict:
    """Read, validate, split and report. Writes nothing unless everything succeeds."""
    task = get_task(p.task)
    inputs, info = read_inputs(task, p)
    labels = task.label_space(inputs["train"], p.train_data, p)
    for name, uri in (("validation", p.validation_data), ("test", p.test_data)):
        if name in inputs:
            task.check_heldout(inputs[name], labels, uri, p)
    splits = make_splits(task, inputs, info, p)
    report = build_report(task, splits, labels, info, p)
    with storage.atomic_dir(splits_dir) as tmp:
        for name in SPLITS:
            task.to_split_frame(splits[name], labels).to_parquet(os.path.join(tmp, f"{name}.parquet"), index=False)
        storage.write_json(os.path.join(tmp, "label_map.json"),
                           {"task": task.name, "labels": labels, "label2id": {lab: i for i, lab in enumerate(labels)}})
    os.makedirs(os.path.dirname(os.path.abspath(report_path)), exist_ok=True)
    storage.write_json(report_path, report)
    return report
