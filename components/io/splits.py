"""The splits directory every stage after ingest reads: `<split>.parquet` per split and `label_map.json`."""
from __future__ import annotations

import os

import pandas as pd

from domaintune.components.io import storage

SPLITS = ("train", "validation", "test")
LABEL_MAP = "label_map.json"


def read_split(splits_dir: str, name: str, columns: list[str] | None = None) -> pd.DataFrame:
    return pd.read_parquet(os.path.join(splits_dir, f"{name}.parquet"), columns=columns)


def labels_of(directory: str) -> list[str]:
    return storage.read_json(os.path.join(directory, LABEL_MAP))["labels"]
