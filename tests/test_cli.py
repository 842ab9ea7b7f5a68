"""The command line: exit codes, one-line errors, compile up to date, evaluate and predict on a model."""
import json
import os
import subprocess
import sys

import pytest
from conftest import TINY

from domaintune.pipelines.cli import main


def cli(*args, cwd=None):
    """Run the installed console script as a user would; returns (code, stdout, stderr)."""
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "domaintune"), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def one_clear_line(stderr: str, *needles: str) -> None:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert lines, "no error printed"
    last = lines[-1]
    assert last.startswith("error: "), stderr
    assert "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in last, (needle, last)


@pytest.mark.parametrize("args,needles", [
    (["--epochs", "0"], ["--epochs", "positive"]),
    (["--epochs", "-2"], ["--epochs"]),
    (["--max-length", "0"], ["--max-length"]),
    (["--max-length", "-5"], ["--max-length"]),
    (["--train-data", "missing.csv"], ["missing.csv", "no such file"]),
    (["--test-data", "nope.tsv"], ["nope.tsv"]),
    (["--base-model", "/no/such/model"], ["--base-model /no/such/model"]),
    (["--learning-rate", "0"], ["--learning-rate"]),
    (["--precision", "fp8"], ["--precision"]),
    (["--min-macro-f1", "1.5"], ["--min-macro-f1"]),
])
def test_run_bad_parameters_exit_2_before_anything_runs(tmp_path, args, needles):
    code, _, err = cli("run", *args, cwd=tmp_path)
    assert code == 2
    one_clear_line(err, *needles)
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "domaintune-runs").exists() or not [
        p for p in os.listdir(tmp_path / "domaintune-runs") if not p.startswith(".")]


def test_usage_errors_exit_2(tmp_path):
    assert cli("run", "--epochs", "many", cwd=tmp_path)[0] == 2
    assert cli("frobnicate", cwd=tmp_path)[0] == 2
    assert cli(cwd=tmp_path)[0] == 2


def test_config_file_maps_to_pipeline_parameters(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 2\nlearning_rat: 0.1\n")
    code, _, err = cli("run", "--config", str(bad), cwd=tmp_path)
    assert code == 2
    one_clear_line(err, "bad.yaml", "unknown parameter 'learning_rat'")
    wrong_type = tmp_path / "t.yaml"
    wrong_type.write_text("lora: maybe\n")
    code, _, err = cli("run", "--config", str(wrong_type), cwd=tmp_path)
    assert code == 2 and "lora" in err


def test_config_then_flags_precedence():
    from domaintune.pipelines.params import pipeline_params, resolve

    params = pipeline_params()
    values = resolve(params, {"epochs": 5.0, "lora": True}, {"epochs": 2.0, "lora": None})
    assert values["epochs"] == 2.0 and values["lora"] is True and values["max_length"] == 128


def test_help_lists_commands_and_pipeline_parameters():
    code, out, _ = cli("--help")
    assert code == 0 and "run" in out and "promote" in out
    code, out, _ = cli("run", "--help")
    assert code == 0
    for flag in ("--train-data", "--epochs", "--lora", "--no-lora", "--model-name", "--max-flip-rate", "--config"):
        assert flag in out, flag


def test_committed_pipeline_yaml_is_the_compilers_current_output(tmp_path):
    from domaintune.pipelines.compile import DEFAULT_PATH, compile_pipeline

    fresh = compile_pipeline(str(tmp_path / "fresh.yaml"))
    assert os.path.isfile(DEFAULT_PATH), "run `domaintune compile` and commit pipelines/training_pipeline.yaml"
    assert open(fresh).read() == open(DEFAULT_PATH).read(), \
        "pipelines/training_pipeline.yaml is stale: run `domaintune compile` and commit it"


def test_evaluate_and_predict_on_a_model_dir(trained, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", trained["model"], "--data", TINY, "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    for key in ("accuracy", "macro_f1", "per_class", "n"):
        assert key in metrics
    assert metrics["n"] == 48 and set(metrics["per_class"]) == {"account_access", "billing", "shipping"}

    assert main(["predict", "--model", trained["model"], "--text", "I was charged twice", "where is my parcel"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()[-2:]
    assert [len(line.split("\t")) for line in lines] == [3, 3]

    # --text repeated predicts each text, in order (it used to keep only the last one)
    assert main(["predict", "--model", trained["model"], "--text", "I was charged twice", "--text", "where is my parcel",
                 "--text", "reset my password"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()[-3:]
    assert [line.split("\t")[-1] for line in lines] == ["I was charged twice", "where is my parcel", "reset my password"]

    preds = tmp_path / "preds.json"
    assert main(["predict", "--model", trained["model"], "--data", TINY, "--json", str(preds)]) == 0
    results = json.loads(preds.read_text())
    assert len(results) == 48 and {"text", "label", "score"} <= set(results[0])


def test_evaluate_and_predict_on_the_onnx_deployable(trained, exported, tmp_path, capsys):
    """The same commands on the export directory: the task and labels come from the files beside the model."""
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", exported, "--data", TINY, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["n"] == 48
    assert main(["predict", "--model", exported, "--text", "I was charged twice"]) == 0
    label = capsys.readouterr().out.strip().splitlines()[-1].split("\t")[0]
    assert label in {"account_access", "billing", "shipping"}


def test_evaluate_bad_inputs_exit_2(trained, tmp_path):
    bad_labels = tmp_path / "b.csv"
    bad_labels.write_text("text,label\nhello,refunds\n")
    code, _, err = cli("evaluate", "--model", trained["model"], "--data", str(bad_labels))
    assert code == 2
    one_clear_line(err, "b.csv", "row 1", "'refunds'")
    code, _, err = cli("evaluate", "--model", str(tmp_path / "no-model"), "--data", TINY)
    assert code == 2
    one_clear_line(err, "no-model")
    code, _, err = cli("predict", "--model", trained["model"], "--data", str(tmp_path / "none.csv"))
    assert code == 2
    one_clear_line(err, "none.csv")
