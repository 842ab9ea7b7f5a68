import json
import os

import pandas as pd
import pytest
from conftest import TINY, ingest_params

from domaintune.components.core.errors import BadInput
from domaintune.components.ingest.stage import run_ingest
from domaintune.components.tasks.classification import sorted_labels


def ingest(tmp_path, **overrides):
    report = run_ingest(ingest_params(**overrides), str(tmp_path / "splits"), str(tmp_path / "report.json"))
    splits = {n: pd.read_parquet(tmp_path / "splits" / f"{n}.parquet") for n in ("train", "validation", "test")}
    return report, splits


def write(tmp_path, name, content, mode="w"):
    path = tmp_path / name
    with open(path, mode) as f:
        f.write(content)
    return str(path)


def test_stratified_seeded_split_with_explicit_sorted_label_map(tmp_path):
    report, splits = ingest(tmp_path, validation_fraction=0.2, test_fraction=0.2)
    assert report["labels"] == ["account_access", "billing", "shipping"]
    assert sum(report["rows"].values()) == 48
    for name, df in splits.items():
        assert set(df["label_name"]) == set(report["labels"]), name  # every class in every split
        assert df["label"].tolist() == [report["labels"].index(x) for x in df["label_name"]]
    label_map = json.load(open(tmp_path / "splits" / "label_map.json"))
    assert label_map["label2id"] == {"account_access": 0, "billing": 1, "shipping": 2}
    again, splits_again = ingest(tmp_path / "again", validation_fraction=0.2, test_fraction=0.2)
    assert splits_again["test"]["text"].tolist() == splits["test"]["text"].tolist()
    other, splits_other = ingest(tmp_path / "other", validation_fraction=0.2, test_fraction=0.2, seed=7)
    assert splits_other["test"]["text"].tolist() != splits["test"]["text"].tolist()


def test_report_counts_lengths_duplicates_and_leakage(tmp_path):
    frame = pd.read_csv(TINY)
    test = frame.iloc[:6].copy()  # identical texts in train and test: leakage must be reported
    train_path = write(tmp_path, "train.csv", pd.concat([frame, frame.iloc[:2]]).to_csv(index=False))
    test_path = write(tmp_path, "test.csv", test.to_csv(index=False))
    val_path = write(tmp_path, "val.csv", frame.iloc[30:36].to_csv(index=False))
    report, splits = ingest(tmp_path, train_data=train_path, test_data=test_path, validation_data=val_path)
    assert report["input_duplicates"]["train"] == 2
    assert report["leakage"]["train_test"]["identical_texts"] == 6
    assert report["rows"]["test"] == 6
    assert report["length"]["train"]["words"]["max"] >= report["length"]["train"]["words"]["p50"] > 0
    assert report["label_counts"]["test"]["billing"] == 6
    assert report["data_sha256"][train_path] and report["data_sha256"][test_path]


@pytest.mark.parametrize("fmt", ["tsv", "jsonl", "parquet"])
def test_formats_read_the_same_rows(tmp_path, fmt):
    frame = pd.read_csv(TINY)
    path = str(tmp_path / f"data.{fmt}")
    if fmt == "tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    report, _ = ingest(tmp_path / "out", train_data=path)
    assert sum(report["rows"].values()) == len(frame)


def test_integer_labels_sort_numerically():
    assert sorted_labels(["10", "2", "1"]) == ["1", "2", "10"]
    assert sorted_labels(["b", "a", "10"]) == ["10", "a", "b"]


def test_integer_labels_from_jsonl(tmp_path):
    rows = [{"text": f"text number {i} about {'cats' if i % 2 else 'dogs'}", "label": i % 2} for i in range(40)]
    path = write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in rows))
    report, splits = ingest(tmp_path / "out", train_data=path)
    assert report["labels"] == ["0", "1"]


def test_empty_texts_are_dropped_and_counted(tmp_path):
    frame = pd.read_csv(TINY)
    frame.loc[3, "text"] = "   "
    path = write(tmp_path, "d.csv", frame.to_csv(index=False))
    report, _ = ingest(tmp_path / "out", train_data=path)
    assert report["empty_texts_dropped"] == 1
    assert sum(report["rows"].values()) == len(frame) - 1


BAD_INPUTS = {
    "missing file": (lambda t: str(t / "nope.csv"), "nope.csv: no such file"),
    "empty file": (lambda t: write(t, "e.csv", ""), "e.csv: empty file"),
    "header only": (lambda t: write(t, "h.csv", "text,label\n"), "h.csv: no data rows"),
    "no text column": (lambda t: write(t, "c.csv", "body,label\nhello,a\nbye,b\n"), "no column 'text'"),
    "no label column": (lambda t: write(t, "l.csv", "text,tag\nhello,a\nbye,b\n"), "no column 'label'"),
    "single class": (lambda t: write(t, "s.csv", "text,label\nhello,a\nbye,a\nhi,a\n"), "single class 'a'"),
    "all empty texts": (lambda t: write(t, "a.csv", 'text,label\n"",a\n" ",b\n'), "empty in every row"),
    "undecodable": (lambda t: write(t, "u.csv", b"text,label\nok,a\n\xff\xfe bad,b\n", "wb"), "not valid UTF-8 at byte 16 (line 3)"),
    "empty label": (lambda t: write(t, "m.csv", "text,label\nhello,a\nbye,\nhi,b\n"), "row 2: empty value in label column"),
    "unsupported type": (lambda t: write(t, "x.xlsx", "x"), "unsupported file type"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, case):
    make, expected = BAD_INPUTS[case]
    path = make(tmp_path)
    with pytest.raises(BadInput) as err:
        ingest(tmp_path, train_data=path)
    message = str(err.value)
    assert expected in message and "\n" not in message
    assert os.path.basename(path) in message
    assert not (tmp_path / "splits").exists() and not (tmp_path / "report.json").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".splits")]


def test_test_labels_unseen_in_training_name_file_row_and_label(tmp_path):
    path = write(tmp_path, "test.csv", "text,label\nwhere is my parcel,shipping\nmy screen is cracked,hardware\n")
    with pytest.raises(BadInput, match=r"test\.csv: row 2: label 'hardware' does not occur in the training data"):
        ingest(tmp_path, test_data=path)


@pytest.mark.parametrize("param,value", [("validation_fraction", 0), ("test_fraction", 1.2), ("test_fraction", -0.1)])
def test_bad_fractions(tmp_path, param, value):
    with pytest.raises(BadInput, match=f"--{param.replace('_', '-')}"):
        ingest(tmp_path, **{param: value})


def test_missing_slice_column_is_named(tmp_path):
    with pytest.raises(BadInput, match="no column 'region'"):
        ingest(tmp_path, slice_columns=["region"])


def test_default_train_data_is_the_bundled_sample(tmp_path):
    params = ingest_params(train_data="")
    assert params.train_data.endswith("support_tickets.csv") and os.path.isfile(params.train_data)
