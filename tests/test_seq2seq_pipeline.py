"""A summarizer through the whole pipeline on kfp.local, as `domaintune run --task seq2seq` drives it: registered,
with its model card and a pyfunc that answers in text; bad seq2seq input exits 2 and registers nothing."""
import json
import os

import pytest
from conftest import HERE, use_mlflow_store
from test_cli import cli, one_clear_line
from test_pipeline_local import latest_summary, versions, workdir  # noqa: F401 (workdir: a fixture)

pytestmark = pytest.mark.slow

PAIRS = os.path.join(HERE, "fixtures", "support_summaries.jsonl")
# The tiny model does not beat lead-1 after three epochs on 56 pairs: these runs test the chain, not the quality
# (tests/test_seq2seq.py tests the gate's summarization checks)
ARGS = ["--task", "seq2seq", "--train-data", PAIRS, "--epochs", "3", "--batch-size", "8", "--learning-rate", "3e-4",
        "--validation-fraction", "0.15", "--test-fraction", "0.15", "--max-length", "64", "--max-target-length", "32",
        "--min-macro-f1", "0", "--min-lead-margin", "-1", "--max-unsupported-number-rate", "1",
        "--min-distinct-summaries", "0",
        "--model-name", "summarizer", "--export-latency-runs", "0"]


def test_a_summarizer_runs_the_whole_chain_and_answers_in_text(workdir):  # noqa: F811
    code, out, err = cli("run", *ARGS, cwd=workdir)
    assert code == 0, err[-3000:]
    summary, _ = latest_summary(workdir)
    assert summary["task"] == "seq2seq" and summary["status"] == "registered"
    assert summary["gate"]["metric"] == "rougeL" and 0 <= summary["metrics"]["test"]["rougeL"] <= 1
    checks = {c["name"] for c in summary["gate"]["checks"]}
    assert {"lead_margin", "unsupported_numbers", "distinct_summaries"} <= checks
    assert summary["export"]["quality_metric"] == "rougeL" and os.path.isfile(summary["deployable_path"])
    assert os.path.isfile(summary["deployable_path"][: -len(".onnx")] + ".decoder.onnx")
    assert "test rougeL" in out or "test rougel" in out.lower()
    card = open(os.path.join(summary["output_dir"], "model_card.md")).read()
    assert "Abstractive summarization" in card and "lead_1 baseline" in card
    assert versions(workdir, "summarizer") == ["1"]
    import mlflow
    import pandas as pd

    use_mlflow_store(f"sqlite:///{workdir / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/summarizer@challenger")
    answers = model.predict(pd.DataFrame({"text": ["Customer: Hi, my tablet keeps restarting.\nAgent: Sorry."]}))
    assert list(answers.columns) == ["summary"] and isinstance(answers["summary"][0], str)


def test_bad_seq2seq_input_exits_2_and_registers_nothing(workdir, tmp_path):  # noqa: F811
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "Customer: my phone broke.", "summary": "ok"}) + "\n"
                   + json.dumps({"text": "short", "summary": "a summary far longer than the source"}) + "\n")
    before = versions(workdir, "summarizer")
    code, _, err = cli("run", *ARGS[:2], "--train-data", str(bad), "--model-name", "summarizer", cwd=workdir)
    assert code == 2
    one_clear_line(err, "bad.jsonl", "row 2", "more than its source")
    assert versions(workdir, "summarizer") == before
