"""Fault injection (issue #20): no silent wrong model, no 20-minute hang, no lost user files.

Each fault is injected for real — a training process and the runner killed with SIGKILL, the MLflow server killed
while register runs, a checkpoint directory of another training reused, NaN/inf/boolean settings, `--output`
misuse, data too small to split — and each test asserts the exit code, the one-line message, and that nothing
written earlier was lost or corrupted. `pytest -m faults` runs them all; the end-to-end one is also `slow`.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import TINY, finetune_params, ingest_params
from test_cli import cli, one_clear_line

from domaintune.components.core.errors import BadInput, RegistryUnavailable

pytestmark = pytest.mark.faults

BIN = os.path.dirname(sys.executable)
HERE = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_bounded(args, cwd, seconds: float) -> tuple[int | None, str, float]:
    """`domaintune ARGS` in its own process group, killed as a whole (kfp.local's task processes with it) when it
    runs past SECONDS; returns (exit code or None when it had to be killed, stderr, seconds it ran)."""
    started = time.monotonic()
    proc = subprocess.Popen([os.path.join(BIN, "domaintune"), *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=seconds)
        return proc.returncode, err, time.monotonic() - started
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        return None, err, time.monotonic() - started


def nothing_written(cwd) -> None:
    """`domaintune run` refused before anything ran: no run directory, no MLflow store."""
    assert not (cwd / "mlflow.db").exists() and not (cwd / "mlruns").exists()
    runs = cwd / "domaintune-runs"
    assert not runs.exists() or not [p for p in os.listdir(runs) if not p.startswith(".")]


def tree(path) -> dict:
    """Every file under PATH with its size and mtime: compared before and after a refusal."""
    out = {}
    for root, _, names in os.walk(path):
        for name in names:
            st = os.stat(os.path.join(root, name))
            out[os.path.relpath(os.path.join(root, name), path)] = (st.st_size, st.st_mtime_ns)
    return out


def same_weights(a: str, b: str) -> bool:
    from safetensors.torch import load_file

    x, y = load_file(os.path.join(a, "model.safetensors")), load_file(os.path.join(b, "model.safetensors"))
    return x.keys() == y.keys() and all(x[k].equal(y[k]) for k in x)


# ------------------------------------------------------------------ 1. a checkpoint dir of another training


def test_a_checkpoint_dir_of_another_training_is_refused_before_anything_is_written(trained, tmp_path, monkeypatch):
    from domaintune.components.finetune.stage import run_finetune
    from domaintune.components.ingest.stage import run_ingest
    from domaintune.components.tokenize.stage import TokenizeParams, run_tokenize

    ckpt = tmp_path / "ckpt"
    params = dict(epochs=1, batch_size=16, checkpoint_dir=str(ckpt))
    first = run_finetune(trained["tokens"], trained["base"], str(tmp_path / "m1"), str(tmp_path / "h1.json"),
                         finetune_params(**params))
    before = tree(ckpt)

    # another seed: the old code "resumed" the finished run, trained 0 steps and returned its model
    with pytest.raises(BadInput) as err:
        run_finetune(trained["tokens"], trained["base"], str(tmp_path / "m2"), str(tmp_path / "h2.json"),
                     finetune_params(**params, seed=7))
    message = str(err.value)
    assert "\n" not in message and f"--checkpoint-dir {ckpt}: holds checkpoints of another training" in message
    assert "seed 42 -> 7" in message and "DOMAINTUNE_CHECKPOINT_MISMATCH=fresh" in message
    assert not (tmp_path / "m2").exists() and not (tmp_path / "h2.json").exists() and tree(ckpt) == before
    recorded = json.loads((ckpt / "fingerprint.json").read_text())
    assert recorded["params"]["seed"] == 42 and "checkpoint_dir" not in recorded["params"]
    assert first["checkpoints"]["fingerprint"] == recorded["fingerprint"]

    # the command line refuses it before anything runs (preflight reads the recorded parameters)
    code, cli_err, seconds = run_bounded(["run", "--train-data", TINY, "--epochs", "1", "--batch-size", "16",
                                          "--seed", "7", "--checkpoint-dir", str(ckpt)], tmp_path, 90)
    assert code == 2 and seconds < 60, (code, seconds, cli_err[-2000:])
    one_clear_line(cli_err, f"--checkpoint-dir {ckpt}: holds checkpoints of another training (seed 42 -> 7)")
    nothing_written(tmp_path)

    # another split of the same file: the same parameters, other data
    splits, tokens = tmp_path / "splits", tmp_path / "tokens"
    run_ingest(ingest_params(slice_columns="channel", validation_fraction=0.25, test_fraction=0.2), str(splits),
               str(tmp_path / "data_report.json"))
    run_tokenize(str(splits), trained["base"], str(tokens), TokenizeParams(max_length=64))
    with pytest.raises(BadInput, match="the data .* differ"):
        run_finetune(str(tokens), trained["base"], str(tmp_path / "m3"), str(tmp_path / "h3.json"),
                     finetune_params(**params))
    assert tree(ckpt) == before

    # the user asks for a fresh start: a sub-directory of its own, trained from step 0
    monkeypatch.setenv("DOMAINTUNE_CHECKPOINT_MISMATCH", "fresh")
    fresh = run_finetune(trained["tokens"], trained["base"], str(tmp_path / "m4"), str(tmp_path / "h4.json"),
                         finetune_params(**params, seed=7))
    assert fresh["resumed_from"] is None and fresh["steps_trained"] == fresh["global_steps"] > 0
    sub = fresh["checkpoints"]["dir"]
    assert os.path.dirname(sub) == str(ckpt) and os.path.basename(sub).startswith("fresh-")
    assert {k: v for k, v in tree(ckpt).items() if not k.startswith("fresh-")} == before


# ---------------------------------------------------------------- kill the training process (and 7: throughput)

KILLED_TRAINING = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    import domaintune.components.finetune.stage as stage
    from conftest import finetune_params

    plain = stage.timed_trainer_class

    def pausing(base=None):  # after the first checkpoint is complete, wait to be killed
        class Pausing(plain(base)):
            def _save_checkpoint(self, *args, **kwargs):
                out = super()._save_checkpoint(*args, **kwargs)
                print("checkpoint saved at step", self.state.global_step, flush=True)
                time.sleep(600)
                return out
        return Pausing

    stage.timed_trainer_class = pausing
    stage.run_finetune({tokens!r}, {base!r}, {out!r}, {history!r}, finetune_params(**{params!r}))
""")


def test_a_killed_training_process_resumes_bit_identically_and_counts_only_its_own_steps(trained, tmp_path, capfd):
    from domaintune.components.finetune.stage import run_finetune

    ckpt = tmp_path / "ckpt"
    params = dict(epochs=2, batch_size=16, learning_rate=3e-4, seed=3)  # 2 steps per epoch on the tiny split
    script = KILLED_TRAINING.format(tests=HERE, tokens=str(trained["tokens"]), base=str(trained["base"]),
                                    out=str(tmp_path / "killed"), history=str(tmp_path / "killed.json"),
                                    params={**params, "checkpoint_dir": str(ckpt)})
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("checkpoint saved at step"):
                break
    finally:
        proc.kill()  # SIGKILL: no cleanup of any kind
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(lines[-30:])
    step = int(lines[-1].split()[-1])
    assert not (tmp_path / "killed").exists() and not (tmp_path / "killed.json").exists()
    # a kill while the next checkpoint was being written leaves a half-written directory: never resumed from
    half = ckpt / f"checkpoint-{2 * step}"
    half.mkdir()
    (half / "config.json").write_text("{")
    capfd.readouterr()

    history = run_finetune(trained["tokens"], trained["base"], str(tmp_path / "model"), str(tmp_path / "h.json"),
                           finetune_params(**params, checkpoint_dir=str(ckpt)))
    err = capfd.readouterr().err
    assert history["resumed_from"] == str(ckpt / f"checkpoint-{step}") and history["resumed_step"] == step
    assert f"finetune: resuming from checkpoint-{step} at step {step} of {2 * step}" in err, err[-3000:]
    assert f"skipping incomplete {half}" in err
    # 7. throughput: this attempt's examples over this attempt's time; the total beside it
    assert history["steps_trained"] == history["global_steps"] - step == step
    assert 0 < history["examples_trained"] < history["examples_seen"] == 2 * history["train_examples"]
    assert history["examples_trained"] == history["train_examples"]  # the second epoch
    assert history["examples_per_second"] == pytest.approx(history["examples_trained"] / history["train_seconds"],
                                                           rel=0.02, abs=0.005)  # both are rounded to 0.01
    # the same model, bit for bit, as the same training never interrupted (and without a checkpoint dir)
    reference = run_finetune(trained["tokens"], trained["base"], str(tmp_path / "reference"),
                             str(tmp_path / "reference.json"), finetune_params(**params))
    assert reference["resumed_from"] is None and reference["examples_trained"] == reference["examples_seen"]
    assert same_weights(str(tmp_path / "model"), str(tmp_path / "reference"))
    assert history["validation"] == reference["validation"]


def test_the_data_fingerprint_ignores_the_cache_files_a_training_leaves_beside_its_tokens(tmp_path):
    """A killed finetune task's retry (same pipeline run, same tokens) must resume: the first attempt's `map`/`sort`
    on the loaded splits wrote cache-*.arrow into the tokens directory, which is not data (found in containers,
    issue #16). Other rows are other data."""
    from datasets import Dataset, load_from_disk

    from domaintune.components.training.checkpoints import arrow_digest

    Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5]], "labels": [0, 1]}).save_to_disk(str(tmp_path / "train"))
    before = arrow_digest(str(tmp_path / "train"))
    load_from_disk(str(tmp_path / "train")).map(lambda row: {"n": len(row["input_ids"])})  # writes cache-*.arrow
    assert any(name.startswith("cache-") for name in os.listdir(tmp_path / "train"))
    assert arrow_digest(str(tmp_path / "train")) == before
    Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 6]], "labels": [0, 1]}).save_to_disk(str(tmp_path / "other"))
    assert arrow_digest(str(tmp_path / "other")) != before


def test_throughput_after_a_resume_counts_only_the_steps_of_that_attempt():
    """7. A resume at step 4 of 8 (4 steps per epoch, 28 examples) trained 28 examples in this attempt's 10 s:
    2.8 examples/s, not all 56 over 10 s; the totals are reported beside it."""
    from types import SimpleNamespace

    from domaintune.components.finetune.history import build_history

    state = SimpleNamespace(global_step=8, max_steps=8, log_history=[], best_model_checkpoint=None)
    args = SimpleNamespace(train_batch_size=8, gradient_accumulation_steps=1, world_size=1)
    timing = {"eval_seconds": 1.0, "checkpoint_seconds": 1.0, "eval_cpu_seconds": 1.0, "checkpoint_cpu_seconds": 1.0}
    trainer = SimpleNamespace(state=state, args=args, timing=timing,
                              train_tokens={"real": 10, "padded": 20, "padded_squared": 40})
    clock = {"stage_started": 0.0, "started": 1.0, "train_seconds": 10.0, "train_cpu_seconds": 10.0}
    resolved = {"precision_used": "fp32", "max_length": 64, "parameters": {}, "cheap_cpu_dropout_modules": 0,
                "train_batches": "length-grouped, in random order (training/trainer.py)"}
    task = SimpleNamespace(name="classification", primary_metric="macro_f1")
    result = SimpleNamespace(metrics={"epoch": 2.0})
    p = finetune_params(epochs=2, batch_size=8)
    history = build_history(task, p, trainer, result, {}, clock, "/ckpt/checkpoint-4", 28, resolved)
    assert history["examples_seen"] == 56 and history["global_steps"] == 8  # the totals
    assert history["examples_trained"] == 28 and history["steps_trained"] == 4 and history["resumed_step"] == 4
    assert history["examples_per_second"] == 2.8
    assert history["examples_per_second_steps"] == 3.5  # 28 examples over the 8 s of steps
    fresh = build_history(task, p, trainer, result, {}, clock, None, 28, resolved)
    assert fresh["examples_trained"] == 56 and fresh["examples_per_second"] == 5.6


# ----------------------------------------------------------------------------- 3. NaN, inf, booleans


def numeric_params():
    from domaintune.pipelines.params import pipeline_params

    return [p for p in pipeline_params() if p.type in (int, float)]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), True, False])
def test_every_numeric_parameter_rejects_nan_infinity_and_booleans(bad):
    """Through the stages' own validators, as `domaintune run` checks them before anything runs."""
    from domaintune.pipelines.local_run import preflight
    from domaintune.pipelines.params import pipeline_params, resolve

    params = pipeline_params()
    accepted = []
    for p in numeric_params():
        try:
            preflight(resolve(params, {p.name: bad}, {}))
        except BadInput as exc:
            if any(part.startswith(p.flag) for part in str(exc).split("; ")):
                continue
        accepted.append(p.name)
    assert not accepted, f"{bad!r} accepted for {accepted}"


@pytest.mark.parametrize("text,expected", [
    (".nan", "expected a finite number (got nan)"), (".inf", "expected a finite number (got inf)"),
    ("-.inf", "expected a finite number (got -inf)"), ("true", "(got true)"), ("false", "(got false)"),
    ("nan", "expected a finite number"), ("[1, 2]", "expected"), ("~", "expected"),
])
def test_config_values_that_are_not_finite_numbers_are_refused(tmp_path, text, expected):
    from domaintune.pipelines.params import load_config, pipeline_params

    for key in ("epochs", "batch_size"):
        config = tmp_path / "c.yaml"
        config.write_text(f"{key}: {text}\n")
        with pytest.raises(BadInput) as err:
            load_config(str(config), pipeline_params())
        assert f"{key}: " in str(err.value) and expected in str(err.value), str(err.value)
    config.write_text("batch_size: 3.0\nepochs: 2\nlearning_rate: '1e-4'\n")
    assert load_config(str(config), pipeline_params()) == {"batch_size": 3, "epochs": 2.0, "learning_rate": 1e-4}


def test_several_config_errors_are_reported_together_before_anything_is_written(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("epochs: .nan\nbatch_size: true\nlearning_rat: 0.1\nmax_length: 0\n")
    code, _, err = cli("run", "--config", str(config), cwd=tmp_path)
    assert code == 2
    one_clear_line(err, f"--config {config}: epochs: expected a finite number (got nan)",
                   "batch_size: expected an integer (got true)", "unknown parameter 'learning_rat'", "--max-length")
    nothing_written(tmp_path)


def test_several_bad_flags_are_reported_together_before_anything_is_written(tmp_path):
    code, _, err = cli("run", "--epochs", "nan", "--learning-rate", "inf", "--batch-size", "-1", "--lora-dropout", "nan",
                       "--max-length", "-1", "--output", TINY, cwd=tmp_path)
    assert code == 2
    one_clear_line(err, "--epochs must be a positive number (got nan)", "--learning-rate", "(got inf)",
                   "--batch-size", "--lora-dropout", "--max-length", f"--output {TINY}: is a file")
    nothing_written(tmp_path)


# ---------------------------------------------------------------------------------------- 4. --output


def test_output_naming_a_file_is_one_line_exit_2(tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("mine")
    code, _, err = cli("run", "--train-data", TINY, "--output", str(target), cwd=tmp_path)
    assert code == 2
    one_clear_line(err, f"--output {target}: is a file, not a directory")
    from domaintune.components.io import storage

    with pytest.raises(BadInput, match=f"--output {target / 'sub'}: {target} is a file, not a directory"):
        storage.check_output_dir(str(target / "sub"))  # a file on the way to it
    assert target.read_text() == "mine"
    nothing_written(tmp_path)


def test_a_second_run_on_the_same_output_is_refused(tmp_path):
    out = tmp_path / "results"
    first = subprocess.Popen([os.path.join(BIN, "domaintune"), "run", "--train-data", TINY, "--output", str(out)],
                             cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        lines = []
        assert stderr_lines(first, lines, lambda line: "▸ ingest" in line).wait(120) and first.poll() is None, lines
        code, err, _ = run_bounded(["run", "--train-data", TINY, "--output", str(out)], tmp_path, 60)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    assert code == 2, (code, err[-2000:])
    one_clear_line(err, f"--output {out}: another domaintune run (pid {first.pid}, run id ", ") is writing there")
    lock = out / ".domaintune-run.lock"
    assert os.listdir(out) == [lock.name] and json.loads(lock.read_text())["pid"] == first.pid

    from domaintune.components.io import storage

    lock.unlink()  # the first run was killed: its claim is stale and is taken over (see below); here by hand
    out.rmdir()
    claim = storage.claim_dir(str(out), {"run_id": "second"})
    assert json.loads(lock.read_text())["run_id"] == "second"
    with pytest.raises(BadInput, match="another domaintune run .* run id second"):
        storage.claim_dir(str(out), {"run_id": "third"})
    claim.release()
    assert not out.exists()  # the claim made it and nothing else is in it: nothing left behind
    # one after the other: an --output holding a run's results is refused, another file there is not
    from domaintune.pipelines.local_run import RUN_DIR_ENTRIES

    out.mkdir()
    (out / "notes.txt").write_text("mine")
    storage.check_output_dir(str(out), reserved=RUN_DIR_ENTRIES)
    (out / "summary.json").write_text("{}")
    with pytest.raises(BadInput, match=r"already holds summary\.json \(earlier results are never overwritten\)"):
        storage.check_output_dir(str(out), reserved=RUN_DIR_ENTRIES)


def fake_run_outputs(root) -> dict:
    """What register hands to write_run_dir: artifact paths (in the kfp.local cache) and the summary."""
    for d in ("model", "export", "evaluation"):
        os.makedirs(root / "cache" / d)
        (root / "cache" / d / f"{d}.bin").write_bytes(os.urandom(64))
    for f in ("data_report", "history", "log"):
        (root / "cache" / f).write_text("{}")
    return {"status": "registered", "model_card": "# card", "export": {"deployable_file": "export.bin"},
            "artifacts": {"model": str(root / "cache" / "model"), "export": str(root / "cache" / "export"),
                          "evaluation": str(root / "cache" / "evaluation"),
                          "data_report": str(root / "cache" / "data_report"), "history": str(root / "cache" / "history")}}


def test_the_run_directory_is_moved_in_beside_the_users_files_as_copies(tmp_path):
    """The old run replaced --output at the end: a file put there during the run was deleted."""
    from domaintune.pipelines.local_run import write_run_dir

    out = tmp_path / "results"
    out.mkdir()  # an empty --output the run claimed
    (out / "notes.txt").write_text("mine")  # the user, while the run runs
    write_run_dir(str(out), fake_run_outputs(tmp_path), str(tmp_path / "cache" / "log"), "r1", 1.0, [], {})
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(out)) == ["deployable", "evaluation", "model", "model_card.md", "notes.txt",
                                       "pipeline.log", "reports", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["deployable_path"] == str(out / "deployable" / "export.bin")
    # 5. copies, never hard links into the kfp.local cache that later runs reuse
    for name in ("model/model.bin", "deployable/export.bin", "evaluation/evaluation.bin", "reports/history.json"):
        assert os.stat(out / name).st_nlink == 1, name
    assert not os.path.samefile(out / "model" / "model.bin", tmp_path / "cache" / "model" / "model.bin")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".results")]  # no staging left beside it


def test_a_name_taken_during_the_run_is_left_alone_and_the_results_are_kept_beside(tmp_path):
    from domaintune.components.core.errors import DomaintuneError
    from domaintune.pipelines.local_run import write_run_dir

    out = tmp_path / "results"
    out.mkdir()
    (out / "summary.json").write_text("the user's")
    with pytest.raises(DomaintuneError) as err:
        write_run_dir(str(out), fake_run_outputs(tmp_path), str(tmp_path / "cache" / "log"), "r2", 1.0, [], {})
    assert "summary.json appeared there during the run" in str(err.value)
    assert os.listdir(out) == ["summary.json"] and (out / "summary.json").read_text() == "the user's"
    kept = str(err.value).rsplit(" ", 1)[-1]
    assert os.path.isfile(os.path.join(kept, "summary.json")) and os.path.dirname(kept) == str(tmp_path)


def test_a_stale_claim_of_a_killed_run_is_taken_over(tmp_path):
    from domaintune.components.io import storage

    out = tmp_path / "results"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / storage.LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "run_id": "old"}))
    claim = storage.claim_dir(str(out), {"run_id": "new"})
    assert json.loads((out / storage.LOCK_NAME).read_text())["run_id"] == "new"
    claim.release()
    assert out.is_dir() and os.listdir(out) == []  # the user's directory stays, empty as it was


# ------------------------------------------------------------------------------ 6. tiny data after dedup


def test_data_too_small_to_split_after_deduplication_says_what_would_work(tmp_path):
    from domaintune.components.ingest.stage import run_ingest

    data = tmp_path / "tiny.csv"
    rows = [("my card was charged twice", "billing"), ("refund my payment", "billing"),
            ("where is my parcel", "shipping"), ("the parcel is late", "shipping")] * 10
    data.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows))
    with pytest.raises(BadInput) as err:
        run_ingest(ingest_params(train_data=str(data)), str(tmp_path / "splits"), str(tmp_path / "report.json"))
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{data}: 4 distinct rows left after dropping 36 exact duplicates")
    for needle in ("billing: 2", "shipping: 2", "at least", "--validation-data and --test-data"):
        assert needle in message, message
    assert not (tmp_path / "splits").exists() and not (tmp_path / "report.json").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".splits")]


def test_carving_a_missing_split_from_tiny_data_says_what_would_work(tmp_path):
    from domaintune.components.ingest.stage import run_ingest

    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text("text,label\nrefund please,billing\nrefund please,billing\nwhere is my parcel,shipping\n")
    test.write_text("text,label\ncharged twice,billing\nparcel late,shipping\n")
    with pytest.raises(BadInput) as err:
        run_ingest(ingest_params(train_data=str(train), test_data=str(test)), str(tmp_path / "splits"),
                   str(tmp_path / "report.json"))
    message = str(err.value)
    assert message.startswith("--train-data: 2 distinct rows left after dropping 1 exact duplicates") and "\n" not in message
    assert "--validation-data and --test-data" in message and not (tmp_path / "splits").exists()


# --------------------------------------------------------------------------------- 2. MLflow down


def test_a_remote_tracking_server_that_is_down_fails_the_run_in_seconds(tmp_path):
    """Checked before anything runs; the old run hung ~20 minutes, then named a task, not the server."""
    uri = f"http://127.0.0.1:{free_port()}"
    code, err, seconds = run_bounded(["run", "--train-data", TINY, "--mlflow-tracking-uri", uri], tmp_path, 120)
    assert code == 1 and seconds < 60, (code, seconds, err[-2000:])
    one_clear_line(err, f"MLflow tracking server {uri} unreachable: connection refused", "rerun when it is back")
    nothing_written(tmp_path)


@pytest.fixture
def mlflow_state(monkeypatch):
    """MLflow's process-wide tracking URI and our HTTP bounds put back as they were after the test."""
    import mlflow

    from domaintune.components.registry import client as registry

    for key in getattr(registry, "HTTP_BOUNDS", ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]):  # recorded as unset (setenv first), so the test starts unbounded
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    tracking, model_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(model_registry)


def test_register_gives_up_on_a_server_that_dies_under_it_in_bounded_time(tmp_path_factory, monkeypatch, mlflow_state):
    """The server answers the health check, then is gone: MLflow's own retries are bounded, and the error is
    one line naming the server and how long was waited (the old client retried ~4 minutes per request)."""
    from test_registry import register_params, run_inputs, stage_outputs

    from domaintune.components.register.stage import run_register
    from domaintune.components.registry import client as registry

    out = stage_outputs(tmp_path_factory.mktemp("stages"), export=False)
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setattr(registry, "check_server", lambda *a, **k: None, raising=False)  # it was up a moment ago
    summary = str(out["root"] + "/summary.json")
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable) as err:
        run_register(run_inputs(out), summary, register_params(uri, "down"), "kfp-down")
    seconds = time.monotonic() - started
    message = str(err.value)
    assert seconds < 45 and "\n" not in message, (seconds, message)
    assert message.startswith(f"MLflow tracking server {uri} unreachable while registering: connection refused")
    assert "gave up after" in message and "each request tried 4 times" in message
    assert not os.path.exists(summary)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"  # bounded by default...
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    registry.bound_http_waits()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"  # ...and a deployment's own setting wins


def test_a_champion_lookup_on_a_server_that_is_down_is_an_error_not_no_champion(monkeypatch, mlflow_state):
    """alias_version used to read any MlflowException as "no champion": evaluate then skipped the comparison."""
    from domaintune.components.registry import client as registry

    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setattr(registry, "check_server", lambda *a, **k: None, raising=False)
    with pytest.raises(RegistryUnavailable, match=f"{uri} unreachable looking up the champion: connection refused"):
        registry.champion_version(uri, "tickets")


# ------------------------------------- for tests/test_pipeline_local.py: kill the runner, kill MLflow at register


class LocalMlflow:
    """`mlflow server` on a SQLite file and loopback (one worker: starts in ~15 s on 2 cores); kill() is SIGKILL
    of its process group, start() again brings it back on the same port and store."""

    def __init__(self, root):
        self.root = str(root)
        os.makedirs(self.root, exist_ok=True)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.db = os.path.join(self.root, "mlflow.db")
        self.proc = None

    def start(self, wait: bool = True) -> "LocalMlflow":
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        with open(os.path.join(self.root, "server.log"), "ab") as log:
            self.proc = subprocess.Popen(
                [os.path.join(BIN, "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.db}",
                 "--artifacts-destination", os.path.join(self.root, "artifacts"), "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.root, env=env, start_new_session=True)
        if wait:
            self.wait()
        return self

    def wait(self, seconds: float = 240) -> None:
        from test_mlflow_server import MlflowServer

        MlflowServer._wait_http(f"{self.uri}/health", self.proc, seconds, os.path.join(self.root, "server.log"))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def versions(self, name: str) -> list[str]:
        with contextlib.closing(sqlite3.connect(self.db)) as con:
            return [str(r[0]) for r in con.execute(
                "select version from model_versions where name = ? order by version", (name,))]


def stderr_lines(proc, lines: list, signal_when) -> threading.Event:
    """Collect PROC's stderr lines into LINES in a thread; the event is set at the first line SIGNAL_WHEN
    accepts (or when stderr ends, so a waiter never hangs on a process that died)."""
    event = threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if signal_when(line):
                event.set()
        event.set()

    threading.Thread(target=read, daemon=True).start()
    return event


# ------------------------------------------------------------------ a task process's exit
EXIT_PROBE = textwrap.dedent("""
    import sys
    from domaintune.components.core.runtime import run_stage

    class Cycle:
        def __init__(self):
            self.me = self
        def __del__(self):
            print("finalized", flush=True)

    if sys.argv[1] == "stage":
        with open(sys.argv[2], "w") as f:
            run_stage("probe", f.write, "complete")
    Cycle()  # unreachable at once: only the garbage collector's cycle detection would finalize it
""")


@pytest.mark.parametrize("how", ["stage", "plain"])
def test_a_task_process_skips_the_final_garbage_collections_and_keeps_what_the_stage_wrote(tmp_path, how):
    """run_stage arms gc.freeze at exit (runtime.skip_final_collections: ~0.8 s of every heavy task's exit):
    a reference cycle left unreachable is not collected at exit, in a plain process it is; the stage's
    output is complete, and its exit code 0."""
    out = tmp_path / "out.txt"
    proc = subprocess.run([sys.executable, "-c", EXIT_PROBE, how, str(out)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    if how == "stage":
        assert out.read_text() == "complete" and "finalized" not in proc.stdout
    else:
        assert "finalized" in proc.stdout
