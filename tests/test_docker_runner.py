"""`domaintune run --runner docker` without running a container (quick; tests/test_containers.py runs them):
what each task container is given, and the refusals before anything runs."""
import os
import subprocess
import sys

from test_cli import one_clear_line

from domaintune.pipelines.docker_run import stage_of, task_settings

BIN = os.path.dirname(sys.executable)


def values(**overrides):
    base = {key: "" for key in ("train_data", "validation_data", "test_data", "identity_terms", "domain_corpus",
                                "ood_data", "base_model", "checkpoint_dir", "s3_endpoint_url")}
    return {**base, **overrides}


def mounts_of(settings):
    return {m["Target"]: m["ReadOnly"] for m in settings["run_args"]["mounts"]}


def test_each_task_sees_its_files_at_their_own_paths_and_no_network(tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    work, data, ckpt = tmp_path / "work", tmp_path / "data", tmp_path / "ckpt"
    work.mkdir(), data.mkdir()
    (data / "train.csv").write_text("text,label\n")
    (work / "ood.csv").write_text("text,label\n")
    settings = task_settings(values(train_data=str(data / "train.csv"), ood_data=f"{work / 'ood.csv'},{work / 'ood.csv'}",
                                    checkpoint_dir=str(ckpt)), f"sqlite:///{work / 'mlflow.db'}", str(work))
    # the working directory (./mlflow.db, ./mlruns) and the checkpoints writable; inputs read-only; a file inside
    # the working directory needs no mount of its own
    assert mounts_of(settings) == {str(work): False, str(data): True, str(ckpt): False}
    assert ckpt.is_dir()  # made here, so that the engine does not create it as root
    args = settings["run_args"]
    assert args["working_dir"] == str(work) and args["environment"]["MLFLOW_TRACKING_URI"] == f"sqlite:///{work / 'mlflow.db'}"
    assert args["user"] == f"{os.getuid()}:{os.getgid()}" and args["cap_drop"] == ["ALL"]
    assert not any(settings["networked"](stage) for stage in ("ingest", "finetune", "champion", "register"))


def test_only_the_stages_that_talk_to_a_remote_mlflow_get_the_hosts_network(tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    remote = task_settings(values(), "http://127.0.0.1:5000", str(tmp_path))["networked"]
    assert [s for s in ("ingest", "tokenize", "finetune", "export", "champion", "evaluate", "register") if remote(s)] \
        == ["champion", "evaluate", "register"]
    on_s3 = task_settings(values(train_data="s3://bucket/train.csv"), f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path))
    assert on_s3["networked"]("ingest") and on_s3["networked"]("finetune")
    ood = task_settings(values(ood_data=f"{tmp_path}/a.csv, s3://bucket/b.csv"), f"sqlite:///{tmp_path}/mlflow.db",
                        str(tmp_path))
    assert ood["networked"]("evaluate")


def test_the_stage_is_read_from_the_task_command():
    assert stage_of(["sh", "-c", "...", "--executor_input", "{}", "--function_to_execute", "finetune_adapted_op"]) == "finetune"
    assert stage_of(["--function_to_execute", "register_op"]) == "register"


def test_without_a_docker_engine_the_run_is_refused_in_one_line_and_writes_nothing(tmp_path):
    env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/no.sock")
    proc = subprocess.run([os.path.join(BIN, "domaintune"), "run", "--runner", "docker"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    one_clear_line(proc.stderr, "--runner docker: no Docker engine answers", "start dockerd")
    assert os.listdir(tmp_path) == []
