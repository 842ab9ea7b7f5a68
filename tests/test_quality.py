"""Beyond the test metrics: temperature scaling (fitted by finetune, applied by every backend), ECE and the
reliability diagram, the two baselines and their lift, out-of-domain sets (local and s3://) with a label map,
and the opt-in gates on them."""
import json
import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from domaintune.components.core.errors import BadInput
from domaintune.components.evaluate.stage import EvaluateParams, run_evaluate
from domaintune.components.evaluation import calibration
from domaintune.components.evaluation.gate import Thresholds, decide
from domaintune.components.inference.batching import softmax

# Calibrated probabilities must agree across backends within this: fp32 ONNX logits differ from PyTorch's by
# ~1e-5 (the export's parity check allows 1e-3), and a softmax over a temperature ≥ 0.05 moves a probability
# by at most a quarter of the logit difference over T.
PROB_TOLERANCE = 1e-3


def params(**overrides):
    return EvaluateParams(**{"min_slice_size": 2, **overrides})


# ------------------------------------------------------------------------------------- calibration

def test_temperature_scaling_fixes_an_overconfident_model():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, (4000, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(z)])  # softmax(z) is calibrated by construction
    logits = 4 * z  # ... and this model is four times too sure of itself
    fit = calibration.fit_temperature(logits, labels)
    assert 3.5 < fit["temperature"] < 4.5
    assert fit["validation_nll_after"] < fit["validation_nll_before"]
    assert fit["validation_ece_after"] < 0.03 < 0.1 < fit["validation_ece_before"]
    probs = softmax(logits, fit["temperature"])
    assert np.allclose(calibration.uncalibrated(probs, fit["temperature"]), softmax(logits), atol=1e-5)
    assert (probs.argmax(1) == logits.argmax(1)).all()  # scaling never changes a prediction


def test_ece_and_bins_by_hand():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 1])
    # bins (15 equal-width): 0.9 -> acc 1; 0.8 -> acc 0; 0.7 -> acc 1; 0.55 -> acc 1
    expected = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(1 - 0.55)) / 4
    assert calibration.ece(probs, labels) == pytest.approx(expected)
    assert sum(b["n"] for b in calibration.bins(probs, labels)) == 4


def test_finetune_saves_the_temperature_and_every_backend_applies_it(trained, exported, tmp_path):
    from domaintune.components.inference.onnx_backend import OnnxClassifier
    from domaintune.components.inference.torch_backend import HFClassifier
    from domaintune.components.registry.pyfunc import DomaintuneModel
    from domaintune.components.serving.predictors import ServingOnnxClassifier

    meta = json.load(open(os.path.join(trained["model"], "domaintune.json")))
    t = meta["calibration"]["temperature"]
    assert meta["calibration"]["fitted_on"] == "validation" and 0.05 <= t <= 20 and t != 1.0
    assert json.load(open(os.path.join(exported, "domaintune.json")))["calibration"]["temperature"] == t
    assert trained["history"]["calibration"]["temperature"] == t
    texts = pd.read_parquet(os.path.join(trained["splits"], "test.parquet"))["text"].tolist()

    torch_clf = HFClassifier(trained["model"])
    pt = torch_clf.predict_proba(texts)
    assert np.allclose(pt, softmax(torch_clf.predict_logits(texts), t), atol=1e-6)
    assert not np.allclose(pt, softmax(torch_clf.predict_logits(texts)), atol=1e-3)  # the scaling is applied
    fp32 = OnnxClassifier(os.path.join(exported, "model.onnx")).predict_proba(texts)
    assert np.abs(fp32 - pt).max() <= PROB_TOLERANCE
    shipped = OnnxClassifier(exported).predict_proba(texts)
    # serving cuts its own batches; an int8 graph's dynamic activation scales depend on them, so compare fp32
    serving = ServingOnnxClassifier(os.path.join(exported, "model.onnx"))
    assert serving.temperature == t and np.abs(serving.predict(texts, 8) - fp32).max() <= 1e-5

    for artifacts, reference in (({"model": trained["model"]}, pt),
                                 ({"model": trained["model"], "onnx": exported}, shipped)):
        model = DomaintuneModel()
        model.load_context(SimpleNamespace(artifacts=artifacts))
        scores = model.predict(None, pd.DataFrame({"text": texts}))["score"].to_numpy()
        assert np.abs(scores - reference.max(axis=1)).max() <= 1e-5, artifacts


# -------------------------------------------------------------------- evaluate: the whole picture

def test_evaluate_reports_baselines_calibration_and_ood(trained, tmp_path):
    test = pd.read_parquet(os.path.join(trained["splits"], "test.parquet"))
    ood = tmp_path / "elsewhere.csv"
    names = {"billing": "Money", "shipping": "Parcel", "account_access": "Login"}
    pd.DataFrame({"text": test["text"], "label": test["label_name"].map(names)}).to_csv(ood, index=False)
    result = run_evaluate(trained["model"], None, trained["splits"], str(tmp_path / "e"),
                          params(ood_data=str(ood), ood_label_map="Money=billing,Parcel=shipping,Login=account_access"))
    b = result["baselines"]
    assert set(b["models"]) == {"frozen_embeddings", "tfidf"} and b["n_test"] == len(test)
    for m in b["models"].values():
        assert 0 <= m["accuracy"] <= 1 and m["seconds"] >= 0
        assert m["lift"] == pytest.approx(result["metrics"]["macro_f1"] - m["macro_f1"])
    assert b["lift"] == max(b["models"].values(), key=lambda m: m["macro_f1"])["lift"]
    c = result["calibration"]
    assert c["temperature"] == json.load(open(os.path.join(trained["model"], "domaintune.json")))["calibration"]["temperature"]
    assert 0 <= c["ece_after"] <= 1 and 0 <= c["ece_before"] <= 1
    assert os.path.getsize(tmp_path / "e" / "reliability_diagram.png") > 1000
    s = result["ood"]["sets"]["elsewhere.csv"]  # the same rows, relabelled: no drop at all
    assert s["n"] == len(test) and s["drop"] == 0.0 and s["accuracy"] == result["metrics"]["accuracy"]
    report = (tmp_path / "e" / "quality_report.md").read_text()
    assert "frozen base model embeddings" in report and "elsewhere.csv" in report and "ECE" in report


def test_ood_from_s3(trained, tmp_path, monkeypatch):
    from moto import mock_aws

    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    test = pd.read_parquet(os.path.join(trained["splits"], "test.parquet"))
    with mock_aws():
        import boto3

        boto3.client("s3").create_bucket(Bucket="ood")
        body = pd.DataFrame({"text": test["text"], "label": test["label_name"]}).to_csv(index=False).encode()
        boto3.client("s3").put_object(Bucket="ood", Key="sets/tickets.csv", Body=body)
        result = run_evaluate(trained["model"], None, trained["splits"], str(tmp_path / "e"),
                              params(ood_data="s3://ood/sets/tickets.csv", baseline_max_rows=0))
    assert result["ood"]["sets"]["tickets.csv"]["uri"] == "s3://ood/sets/tickets.csv"
    assert result["ood"]["sets"]["tickets.csv"]["n"] == len(test) and result["baselines"] is None


@pytest.mark.parametrize("frame,overrides,message", [
    ({"body": ["a"], "label": ["billing"]}, {}, r"--ood-data .*x.csv: no column 'text' \(columns: body, label\)"),
    ({"text": ["a", "b"], "label": ["billing", "Refunds"]}, {},
     r"x.csv: row 2: label 'Refunds' is not one of the model's labels .* \(map it onto them with --ood-label-map\)"),
    ({"text": ["a", "b"], "label": ["Money", "Refunds"]}, {"ood_label_map": "Money=billing"},
     r"x.csv: row 2: label 'Refunds' .*--ood-label-map does not cover it"),
    ({"text": ["a"], "label": ["Money"]}, {"ood_label_map": "Money=bills"},
     r"--ood-label-map: 'bills' is not one of the model's labels"),
])
def test_bad_ood_input_is_one_line_and_writes_nothing(trained, tmp_path, frame, overrides, message):
    path = tmp_path / "x.csv"
    pd.DataFrame(frame).to_csv(path, index=False)
    with pytest.raises(BadInput, match=message) as err:
        run_evaluate(trained["model"], None, trained["splits"], str(tmp_path / "e"),
                     params(ood_data=str(path), **overrides))
    assert "\n" not in str(err.value) and not (tmp_path / "e").exists()


@pytest.mark.parametrize("overrides,flag", [
    ({"ood_label_map": "Bearish"}, "--ood-label-map"), ({"ood_label_map": "a=b"}, "--ood-data is empty"),
    ({"baseline_max_rows": -1}, "--baseline-max-rows"), ({"min_lift": -1.5}, "--min-lift"),
    ({"max_ood_drop": 1.2}, "--max-ood-drop"), ({"bias_axes": "all,age"}, "--bias-axes"),
])
def test_bad_quality_parameters_name_the_flag(overrides, flag):
    with pytest.raises(BadInput, match=flag):
        EvaluateParams(**overrides)


def test_baseline_cap_is_stratified():
    from domaintune.components.evaluation.baselines import capped

    frame = pd.DataFrame({"text": [str(i) for i in range(1000)], "label": [0] * 900 + [1] * 100})
    out = capped(frame, 100, seed=0)
    assert len(out) == 100 and (out["label"] == 1).sum() == 10
    assert capped(frame, 5000, seed=0) is frame


# -------------------------------------------------------------------------------- the opt-in gates

def test_min_lift_and_max_ood_drop_are_off_by_default_and_block_when_set():
    baselines = {"lift": 0.01, "best": "tfidf", "models": {"tfidf": {"macro_f1": 0.80}}}
    ood = {"metric": "macro_f1", "sets": {"tweets.csv": {"drop": 0.25}, "news.csv": {"drop": 0.05}}}
    d = decide({"macro_f1": 0.81}, None, None, Thresholds(), baselines=baselines, ood=ood)
    assert d["passed"] and not {"baseline_lift", "ood_drop"} & {c["name"] for c in d["checks"]}
    d = decide({"macro_f1": 0.81}, None, None, Thresholds(min_lift=0.02, max_ood_drop=0.2), baselines=baselines, ood=ood)
    assert [c["name"] for c in d["checks"] if not c["passed"]] == ["baseline_lift", "ood_drop"]
    assert "tfidf" in d["reasons"][0] and "tweets.csv" in d["reasons"][1]
    d = decide({"macro_f1": 0.81}, None, None, Thresholds(min_lift=0.01, max_ood_drop=0.25), baselines=baselines, ood=ood)
    assert d["passed"]  # inclusive bounds
    d = decide({"macro_f1": 0.81}, None, None, Thresholds(min_lift=0.0), baselines=None)
    assert not d["passed"] and "no baseline" in d["reasons"][0]  # asked for and not measured: fails closed


def test_run_prints_the_quality_lines_and_template_warnings_last(capsys):
    from domaintune.pipelines.summary_view import print_summary

    warning = "bias: disability (templates) flips 0.600 of 200 identity-swapped pairs (> 0.1); not blocking: ..."
    summary = {
        "status": "registered", "task": "classification", "output_dir": "out", "wall_seconds": 9.0,
        "metrics": {"test": {"accuracy": 0.9, "macro_f1": 0.88, "n": 50}, "validation": {"macro_f1": 0.87}},
        "training": {"examples_per_second": 100, "train_seconds": 5, "precision": "fp32"},
        "registry": {"model_name": "m", "version": 1, "aliases": ["challenger"], "run_id": "r", "tracking_uri": "t"},
        "gate": {"passed": True, "reasons": [], "warnings": [warning]},
        "baselines": {"metric": "macro_f1", "best": "tfidf", "lift": 0.05,
                      "models": {"frozen_embeddings": {"macro_f1": 0.8, "seconds": 2.0},
                                 "tfidf": {"macro_f1": 0.83, "seconds": 0.4}}},
        "calibration": {"temperature": 1.7, "ece_before": 0.08, "ece_after": 0.03},
        "ood": {"metric": "macro_f1", "sets": {"tweets.csv": {"macro_f1": 0.6, "drop": 0.28, "n": 900}}},
    }
    print_summary(summary)
    out, err = capsys.readouterr()
    assert "lift +0.0500 over tfidf" in out and "ECE 0.0800 -> 0.0300" in out and "tweets.csv" in out
    assert err.strip().splitlines()[-1] == f"warning: {warning}"
