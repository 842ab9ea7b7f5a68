"""The whole pipeline through kfp.local, as `domaintune run` drives it, with pip unable to reach any index."""
import json
import os
import sqlite3

import pytest
from conftest import TINY, use_mlflow_store
from test_cli import cli, one_clear_line

pytestmark = pytest.mark.slow

SUMMARY_KEYS = ["status", "task", "metrics.test.accuracy", "metrics.test.macro_f1", "metrics.test_pytorch.accuracy",
                "bias", "gate.passed", "gate.reasons", "export", "registry.model_name", "registry.version",
                "registry.aliases", "model_dir", "deployable_path"]
TINY_ARGS = ["--train-data", TINY, "--epochs", "3", "--batch-size", "8", "--learning-rate", "3e-4",
             "--validation-fraction", "0.2", "--test-fraction", "0.2", "--min-macro-f1", "0.3",
             "--max-flip-rate", "1", "--model-name", "tickets", "--export-latency-runs", "0"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    os.environ["PIP_NO_INDEX"] = "1"  # nothing may be installed or fetched at run time
    # mlflow.set_tracking_uri() in an earlier test's process also sets these variables, which the runs below
    # would inherit: each run here must use its working directory's ./mlflow.db
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(key, None)
    return tmp_path_factory.mktemp("pipeline")


def dig(obj, dotted):
    for key in dotted.split("."):
        assert key in obj, f"summary.json lacks {dotted}"
        obj = obj[key]
    return obj


def versions(workdir, name="tickets"):
    db = workdir / "mlflow.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        return [str(r[0]) for r in con.execute("select version from model_versions where name = ? order by version", (name,))]


def run(workdir, *extra):
    code, out, err = cli("run", *TINY_ARGS, *extra, cwd=workdir)
    return code, out, err


def latest_summary(workdir):
    runs = sorted(p for p in os.listdir(workdir / "domaintune-runs") if not p.startswith("."))
    return json.loads((workdir / "domaintune-runs" / runs[-1] / "summary.json").read_text()), runs


def test_first_run_registers_a_challenger(workdir):
    code, out, err = run(workdir)
    assert code == 0, err[-3000:]
    summary, runs = latest_summary(workdir)
    for key in SUMMARY_KEYS:
        dig(summary, key)
    assert summary["status"] == "registered" and summary["gate"]["passed"] is True
    assert summary["registry"]["version"] == 1 and summary["registry"]["aliases"] == ["challenger"]
    assert 0 <= summary["metrics"]["test"]["macro_f1"] <= 1
    # --batch-size 8 was given: used as given, not chosen for the data
    assert (summary["training"]["batch_size"], summary["training"]["batch_size_chosen_for"]) == (8, None)
    assert os.path.isfile(os.path.join(summary["model_dir"], "model.safetensors"))
    assert versions(workdir) == ["1"]
    # the gate judged the deployable that ships, and the run directory holds it (copies, not cache links)
    deployable = summary["export"]["deployable"]
    assert summary["metrics"]["scored"] == f"onnx-{deployable}"
    assert summary["deployable_path"] == os.path.join(summary["output_dir"], "deployable",
                                                      "model.int8.onnx" if deployable == "int8" else "model.onnx")
    assert os.path.isfile(summary["deployable_path"])
    for path in (summary["deployable_path"], os.path.join(summary["model_dir"], "model.safetensors")):
        assert os.stat(path).st_nlink == 1, f"{path} is a hard link into the kfp.local cache"
    assert "Measured on the shipped deployable" in open(os.path.join(summary["output_dir"], "model_card.md")).read()
    for stage in ("ingest", "tokenize", "finetune", "evaluate", "register"):
        assert f"✓ {stage}" in err, err  # the user sees each stage finish
    assert "test macro f1" in out and "test accuracy" in out and "registered" in out
    # the registered model serves through MLflow's pyfunc flavor
    import mlflow

    use_mlflow_store(f"sqlite:///{workdir / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/tickets@challenger")
    import pandas as pd

    pred = model.predict(pd.DataFrame({"text": ["I was charged twice", "my parcel is lost"]}))
    assert list(pred.columns) == ["label", "score"] and len(pred) == 2


def test_second_identical_run_reuses_cached_stages(workdir):
    code, _, err = run(workdir)
    assert code == 0, err[-3000:]
    for stage in ("ingest", "tokenize", "finetune"):
        assert f"✓ {stage}" in err and "(cached)" in err.split(f"✓ {stage}")[1].splitlines()[0], err
    summary, runs = latest_summary(workdir)
    assert len(runs) == 2 and summary["registry"]["version"] == 2
    stages = {s["name"]: s["status"] for s in summary["stages"]}
    assert stages["finetune"] == "cached" and stages["register"] == "done"
    # no champion moved in between: the evaluation is reused; the champion lookup itself never is
    assert stages["evaluate"] == "cached" and stages["champion"] == "done"


def test_bad_data_inside_the_pipeline_exits_2_and_leaves_nothing(workdir, tmp_path):
    bad_test = tmp_path / "test.csv"
    bad_test.write_text("text,label\nwhere is my parcel,shipping\nscreen cracked,hardware\n")
    before = sorted(os.listdir(workdir / "domaintune-runs"))
    code, _, err = run(workdir, "--test-data", str(bad_test))
    assert code == 2
    one_clear_line(err, "ingest", "test.csv", "row 2", "'hardware'")
    assert sorted(os.listdir(workdir / "domaintune-runs")) == before
    assert versions(workdir) == ["1", "2"]


def test_rejected_candidate_exits_3_logs_reasons_and_registers_nothing(workdir):
    code, out, err = run(workdir, "--min-macro-f1", "1.0", "--max-flip-rate", "0", "--flip-min-prob-change", "0",
                         "--bias-axes", "all")  # the tickets' test texts carry few identity terms: gate templates too
    summary, _ = latest_summary(workdir)
    if summary["metrics"]["test"]["macro_f1"] == 1.0 and summary["bias"]["counterfactual"]["max_axis_flip_rate"] == 0:
        pytest.skip("the tiny model happened to be perfect and flip-free")
    assert code == 3, err[-2000:]
    assert summary["status"] == "rejected" and summary["gate"]["passed"] is False and summary["gate"]["reasons"]
    assert summary["registry"]["version"] is None
    assert versions(workdir) == ["1", "2"]
    with sqlite3.connect(workdir / "mlflow.db") as con:
        tags = dict(con.execute("select key, value from tags where run_uuid = ?", (summary["registry"]["run_id"],)))
    assert tags["gate"] == "rejected" and tags["gate.reasons"]


def test_a_new_champion_invalidates_the_cached_evaluation(workdir):
    code, _, err = cli("promote", "tickets", "--version", "1", "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}",
                       cwd=workdir)
    assert code == 0, err
    code, _, err = run(workdir)
    assert code == 0, err[-3000:]
    summary, _ = latest_summary(workdir)
    stages = {s["name"]: s["status"] for s in summary["stages"]}
    assert stages["finetune"] == "cached" and stages["evaluate"] == "done"  # compared with the new champion
    assert summary["gate"]["champion"]["version"] == 1


def test_the_pretraining_branch_registers_its_perplexity(workdir):
    """TAPT on the training texts: the MLflow run, the model card and summary.json carry perplexity before and
    after (the branch used to register as if it never pretrained)."""
    code, _, err = run(workdir, "--pretrain-on-train-text", "--mlm-max-steps", "4", "--mlm-epochs", "50", "--mlm-head-warmup-steps", "2",
                       "--mlm-batch-size", "8", "--max-length", "32", "--model-name", "tapt")
    assert code == 0, err[-3000:]
    assert "✓ pretrain" in err
    summary, _ = latest_summary(workdir)
    ppl = summary["pretrain"]["perplexity"]
    assert ppl["before"] > 0 and ppl["after"] > 0 and summary["pretrain"]["steps"] == 4
    with sqlite3.connect(workdir / "mlflow.db") as con:
        run_id = summary["registry"]["run_id"]
        metrics = dict(con.execute("select key, value from latest_metrics where run_uuid = ?", (run_id,)))
        tags = dict(con.execute("select key, value from tags where run_uuid = ?", (run_id,)))
        params = dict(con.execute("select key, value from params where run_uuid = ?", (run_id,)))
    assert metrics["pretrain_perplexity_after"] == pytest.approx(ppl["after"]) and tags["pretrained"] == "true"
    assert params["pretrain_on_train_text"] == "True" and params["mlm_max_steps"] == "4"
    card = open(os.path.join(summary["output_dir"], "model_card.md")).read()
    assert "no domain-adaptive pretraining" not in card and "held-out perplexity" in card


def test_every_pipeline_parameter_reaches_the_mlflow_run(workdir):
    """register logs the stages' effective parameters from their reports: all of them, in both branches."""
    from domaintune.pipelines.params import pipeline_params

    with sqlite3.connect(workdir / "mlflow.db") as con:
        runs = [r[0] for r in con.execute("select run_uuid from runs")]
        assert len(runs) >= 4  # registered, rejected and pretrained runs above
        for run_id in runs:
            logged = {r[0] for r in con.execute("select key from params where run_uuid = ?", (run_id,))}
            missing = {p.name for p in pipeline_params()} - logged
            assert not missing, f"pipeline parameters not in MLflow run {run_id}: {sorted(missing)}"


NER = os.path.join(os.path.dirname(TINY), "ner_tiny.conll")
NER_ARGS = ["--task", "token-classification", "--train-data", NER, "--epochs", "6", "--batch-size", "8",
            "--learning-rate", "1e-3", "--validation-fraction", "0.2", "--test-fraction", "0.2", "--max-length", "32",
            "--max-flip-rate", "1", "--model-name", "tagger", "--export-latency-runs", "0"]


def test_a_tagger_runs_the_whole_chain_and_serves_entities(workdir):
    code, out, err = cli("run", *NER_ARGS, cwd=workdir)
    assert code == 0, err[-3000:]
    summary, _ = latest_summary(workdir)
    assert summary["task"] == "token-classification" and summary["status"] == "registered"
    assert 0.5 < summary["metrics"]["test"]["entity_f1"] <= 1 and summary["gate"]["metric"] == "entity_f1"
    assert summary["export"]["quality_metric"] == "entity_f1" and os.path.isfile(summary["deployable_path"])
    assert "test entity f1" in out
    card = open(os.path.join(summary["output_dir"], "model_card.md")).read()
    assert "Named-entity tagging of 3 entity types" in card and "Entity F1" in card
    import mlflow
    import pandas as pd

    use_mlflow_store(f"sqlite:///{workdir / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/tagger@challenger")
    [answer] = model.predict(pd.DataFrame({"text": ["Peter Blackburn flew to Paris ."]}))["entities"]
    assert all({"entity_group", "score", "word", "start", "end"} <= set(e) for e in json.loads(answer))


def test_bad_tagger_input_exits_2_and_registers_nothing(workdir, tmp_path):
    bad = tmp_path / "bad.conll"
    bad.write_text("Anna B-PER\nlives O\n\nin O\nParis LOCATION\n\n")
    code, _, err = cli("run", *NER_ARGS[:2], "--train-data", str(bad), "--model-name", "tagger", cwd=workdir)
    assert code == 2
    one_clear_line(err, "bad.conll", "line 5", "'LOCATION'")
    assert versions(workdir, "tagger") == ["1"]


@pytest.mark.faults
@pytest.mark.timeout(1200)
def test_killed_runner_then_mlflow_killed_at_register_then_a_rerun_registers_exactly_one_version(workdir, tmp_path):
    """Issue #20 end to end, on the cache the runs above filled (ingest..export are reused, so this costs the
    uncached tail only): the runner is killed (SIGKILL, its whole process group) while a task runs; the same
    command again, with the remote MLflow server killed when register starts, fails in well under a minute with
    one line naming the server; once the server is back, a rerun registers exactly one version. The --output
    directory keeps the user's file throughout and holds no partial results."""
    import signal
    import subprocess
    import sys
    import time

    from test_faults import LocalMlflow, stderr_lines

    server = LocalMlflow(tmp_path / "mlflow").start()
    out = tmp_path / "results"
    command = [os.path.join(os.path.dirname(sys.executable), "domaintune"), "run", *TINY_ARGS,
               "--mlflow-tracking-uri", server.uri, "--output", str(out)]
    runners = []  # every runner started here is killed at the end, whatever failed

    def start():
        runners.append(subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, start_new_session=True))
        return runners[-1]

    try:
        # 1. the runner is killed while evaluate runs (kfp.local and the task: one process group)
        proc = start()
        lines = []
        started = stderr_lines(proc, lines, lambda line: "▸ evaluate" in line)
        assert started.wait(600) and proc.poll() is None, "".join(lines[-40:])
        (out / "notes.txt").write_text("mine")  # a file the user puts into --output meanwhile
        time.sleep(3)  # inside the evaluate task
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        assert sorted(os.listdir(out)) == [".domaintune-run.lock", "notes.txt"]  # no results; a stale claim
        assert server.versions("tickets") == []

        # 2. the same command; the MLflow server is killed when register starts
        proc = start()
        lines = []
        at_register = stderr_lines(proc, lines, lambda line: "▸ register" in line)
        assert at_register.wait(600) and proc.poll() is None, "".join(lines[-40:])
        server.kill()
        killed = time.monotonic()
        code = proc.wait(timeout=600)
        seconds = time.monotonic() - killed
        err = "".join(lines)
        assert code == 1 and seconds <= 60, (code, seconds, err[-3000:])
        one_clear_line(err, f"register: MLflow tracking server {server.uri} unreachable: connection refused")
        for stage in ("ingest", "tokenize", "finetune", "export"):  # the killed run left the cache sound
            assert "(cached)" in err.split(f"✓ {stage}")[1].splitlines()[0], err
        assert sorted(os.listdir(out)) == ["notes.txt"]  # nothing of the failed run; the claim released
        assert server.versions("tickets") == []  # nothing registered

        # 3. the server is back: the rerun registers exactly one version, beside the user's file
        server.start()
        code, _, err = cli("run", *TINY_ARGS, "--mlflow-tracking-uri", server.uri, "--output", str(out), cwd=workdir)
        assert code == 0, err[-3000:]
        assert server.versions("tickets") == ["1"]
        assert (out / "notes.txt").read_text() == "mine" and not (out / ".domaintune-run.lock").exists()
        summary = json.loads((out / "summary.json").read_text())
        assert summary["registry"]["version"] == 1 and summary["registry"]["tracking_uri"] == server.uri
        assert os.stat(out / "model" / "model.safetensors").st_nlink == 1  # a copy, not a link into the cache
    finally:
        for runner in runners:
            if runner.poll() is None:
                os.killpg(runner.pid, signal.SIGKILL)
                runner.wait(timeout=60)
        server.kill()
