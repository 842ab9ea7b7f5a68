"""The evaluate stage: metrics, bias and the gate decision, with and without a champion."""
import json
import os

import pytest
import numpy as np
import pandas as pd

from domaintune.components.core.errors import BadInput
from domaintune.components.evaluate.stage import EvaluateParams, run_evaluate
from domaintune.components.inference.onnx_backend import OnnxClassifier


def params(**overrides):
    return EvaluateParams(**{"slice_columns": "channel", "min_slice_size": 2, **overrides})


def test_metrics_bias_gate_and_files(trained, tmp_path):
    out = tmp_path / "eval"
    result = run_evaluate(trained["model"], None, trained["splits"], str(out), params())
    m = result["metrics"]
    assert m["n"] == 10 and 0 <= m["accuracy"] <= 1 and set(m["per_class"]) == {"account_access", "billing", "shipping"}
    assert sum(map(sum, m["confusion_matrix"])) == 10
    assert result["bias"]["slices"]["columns"]["channel"]["slices"]
    assert result["bias"]["counterfactual"]["n_pairs"] > 0  # templates when test texts have no terms
    assert {"passed", "reasons", "checks", "beats_champion"} <= set(result["gate"])
    assert result["gate"]["beats_champion"] is True and result["champion"] is None
    for name in ("evaluation.json", "confusion_matrix.png", "bias_report.md", "predictions.parquet"):
        assert os.path.isfile(out / name), name
    assert json.loads((out / "evaluation.json").read_text())["metrics"]["accuracy"] == m["accuracy"]
    assert "Bias and fairness report" in (out / "bias_report.md").read_text()
    assert result["scored"] == "pytorch" and result["metrics_pytorch"] == m


def test_the_deployable_is_scored_and_probed_with_pytorch_beside_it(trained, exported, tmp_path):
    """The gate judges what ships: the ONNX file the export chose, not the PyTorch model."""
    result = run_evaluate(trained["model"], exported, trained["splits"], str(tmp_path / "e"), params())
    report = json.load(open(os.path.join(exported, "export_report.json")))
    assert result["scored"] == f"onnx-{report['deployable']}"
    assert result["export"]["deployable"] == report["deployable"]
    test = pd.read_parquet(os.path.join(trained["splits"], "test.parquet"))
    shipped = OnnxClassifier(exported).predict_proba(test["text"].tolist()).argmax(axis=1)
    assert result["metrics"]["accuracy"] == float(np.mean(shipped == test["label"].to_numpy()))
    predictions = pd.read_parquet(tmp_path / "e" / "predictions.parquet")
    assert predictions["predicted"].tolist() == shipped.tolist()
    pytorch = run_evaluate(trained["model"], None, trained["splits"], str(tmp_path / "p"), params())
    assert result["metrics_pytorch"] == pytorch["metrics"]
    assert any(c["name"] == "int8_drop" for c in result["gate"]["checks"])


def test_champion_scored_on_the_same_split_ties_do_not_beat_it(trained, tmp_path):
    result = run_evaluate(trained["model"], None, trained["splits"], str(tmp_path / "e"), params(),
                          champion_dir=trained["model"], champion_info={"version": 3})
    assert result["champion"]["version"] == 3
    assert result["champion"]["macro_f1"] == result["metrics"]["macro_f1"]
    regression = next(c for c in result["gate"]["checks"] if c["name"] == "no_regression")
    assert regression["passed"] and not regression["skipped"]
    assert result["gate"]["beats_champion"] is False


def test_an_untrained_classifier_is_rejected_by_the_quality_floor(trained, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    labels = ["account_access", "billing", "shipping"]
    untrained = AutoModelForSequenceClassification.from_pretrained(
        trained["base"], num_labels=3, id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    untrained.save_pretrained(tmp_path / "untrained")
    AutoTokenizer.from_pretrained(trained["base"]).save_pretrained(tmp_path / "untrained")
    result = run_evaluate(str(tmp_path / "untrained"), None, trained["splits"], str(tmp_path / "e"), params())
    assert result["metrics"]["macro_f1"] < 0.6
    assert result["gate"]["passed"] is False
    assert any(r.startswith("quality failed") for r in result["gate"]["reasons"])


def test_bad_evaluate_parameters(trained, tmp_path):
    with pytest.raises(BadInput, match="--flip-min-prob-change"):
        params(flip_min_prob_change=1.5)
    with pytest.raises(BadInput, match="slice column 'region' is not in the data"):
        run_evaluate(trained["model"], None, trained["splits"], str(tmp_path / "e"), params(slice_columns="region"))
    assert not (tmp_path / "e").exists()
