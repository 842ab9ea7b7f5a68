"""Fine-tuning in several processes (DistributedDataParallel under torchrun, gloo on CPU): the same training
as one process at the same global batch, the batch split checked before anything starts, and a rank that
dies fails the stage with one line and a non-zero exit."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import finetune_params

from domaintune.components.core.errors import BadInput
from domaintune.components.finetune.stage import run_finetune
from domaintune.components.training import launch
from domaintune.components.training.distributed import NPROC_ENV

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN_ROWS = 24  # a multiple of the global batch: no short last batch, which DDP splits unevenly
# One process vs two at batch 8 (2 x 4): the per-rank mean losses averaged by the gradient all-reduce are the
# one process's mean over 8, so in fp32 without dropout, on the same batches, the two runs differ only by float
# summation order: the first epoch's losses agree within SAME_BATCHES. From the second epoch on, the
# length-grouped sampler's reshuffle draws from a random state that DDP's setup has advanced differently, so
# rows of equal length meet in other batches: the curves then agree within CURVE (measured: 0.0095 at most).
SAME_BATCHES = 1e-4
CURVE = 0.03


@pytest.fixture(scope="module")
def deterministic(tiny_tokens, tmp_path_factory):
    """The tiny tokens with TRAIN_ROWS training rows, and the base model with dropout off (dropout masks are
    drawn per process, so with it on the two runs would differ by dropout noise rather than by DDP)."""
    import shutil

    from datasets import load_from_disk

    root = tmp_path_factory.mktemp("ddp")
    tokens = root / "tokens"
    shutil.copytree(tiny_tokens["tokens"], tokens, ignore=shutil.ignore_patterns("train"))
    train = load_from_disk(os.path.join(tiny_tokens["tokens"], "train"))
    assert len(train) >= TRAIN_ROWS
    train.select(range(TRAIN_ROWS)).save_to_disk(str(tokens / "train"))
    base = root / "base"
    base.mkdir()
    for name in os.listdir(tiny_tokens["base"]):
        if name != "config.json":
            os.symlink(os.path.join(tiny_tokens["base"], name), base / name)
    config = json.load(open(os.path.join(tiny_tokens["base"], "config.json")))
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    json.dump(config, open(base / "config.json", "w"))
    return {"tokens": str(tokens), "base": str(base), "root": root}


PARAMS = dict(epochs=2, batch_size=8, learning_rate=3e-4, precision="fp32", seed=5, early_stopping_patience=5)


def losses(history):
    return [(h["step"], h["loss"]) for h in history["log_history"] if "loss" in h]


def test_two_gloo_processes_train_like_one_at_the_same_global_batch(deterministic, capfd):
    d = deterministic
    one = run_finetune(d["tokens"], d["base"], str(d["root"] / "one"), str(d["root"] / "one.json"),
                       finetune_params(**PARAMS, num_processes=1))
    two = run_finetune(d["tokens"], d["base"], str(d["root"] / "two"), str(d["root"] / "two.json"),
                       finetune_params(**PARAMS, num_processes=2))
    err = capfd.readouterr().err
    assert "finetune: 2 processes: torchrun --standalone --nnodes 1 --nproc-per-node 2" in err
    assert one["distributed"]["world_size"] == 1
    assert two["distributed"] == {"world_size": 2, "backend": "gloo", "launcher": "torchrun", "global_batch_size": 8,
                                  "per_device_batch_size": 4, "gradient_accumulation_steps": 1}
    # the same optimizer steps over the same examples
    assert one["global_steps"] == two["global_steps"] == 2 * TRAIN_ROWS // 8
    assert one["examples_seen"] == two["examples_seen"] == 2 * TRAIN_ROWS
    assert two["train_tokens"]["real"] == one["train_tokens"]["real"]  # summed over both ranks
    steps_one, loss_one = zip(*losses(one))
    steps_two, loss_two = zip(*losses(two))
    assert steps_one == steps_two and len(steps_one) == one["global_steps"]
    first_epoch = TRAIN_ROWS // 8
    np.testing.assert_allclose(loss_two[:first_epoch], loss_one[:first_epoch], atol=SAME_BATCHES)
    np.testing.assert_allclose(loss_two, loss_one, atol=CURVE)
    assert loss_one[-1] < loss_one[0] and loss_two[-1] < loss_two[0]  # both trained
    # the validation metric the same up to noise: at most one validation example predicted differently
    n_validation = one["validation"].get("n") or 10
    assert abs(two["validation"]["accuracy"] - one["validation"]["accuracy"]) <= 1 / n_validation + 1e-9
    assert abs(two["validation"]["loss"] - one["validation"]["loss"]) < CURVE
    # the same outputs, written once by rank 0
    assert sorted(os.listdir(d["root"] / "two")) == sorted(os.listdir(d["root"] / "one"))
    assert json.load(open(d["root"] / "two.json"))["distributed"]["world_size"] == 2
    assert not os.path.exists(d["root"] / "checkpoints")  # cleaned after success


def test_the_global_batch_must_split_evenly_before_anything_starts(deterministic, tmp_path):
    d = deterministic
    with pytest.raises(BadInput, match=r"--batch-size 9 is the global batch and must split evenly over 2 process"):
        run_finetune(d["tokens"], d["base"], str(tmp_path / "m"), str(tmp_path / "h.json"),
                     finetune_params(epochs=1, batch_size=9, num_processes=2))
    with pytest.raises(BadInput, match="--gradient-accumulation-steps 3"):
        finetune_params(batch_size=8, gradient_accumulation_steps=3)
    with pytest.raises(BadInput, match="--num-processes must be a non-negative integer"):
        finetune_params(num_processes=-1)
    assert not os.listdir(tmp_path)


def test_how_many_processes(monkeypatch):
    monkeypatch.delenv(NPROC_ENV, raising=False)
    assert launch.processes_wanted(0) == 1  # CPU, nothing asked: one process
    assert launch.processes_wanted(3) == 3
    monkeypatch.setenv(NPROC_ENV, "4")  # what the compiled pipeline sets for a 4-GPU pod
    assert launch.processes_wanted(0) == 4
    assert launch.processes_wanted(1) == 1  # --num-processes wins
    monkeypatch.setenv(NPROC_ENV, "four")
    with pytest.raises(BadInput, match=f"{NPROC_ENV} must be a positive integer"):
        launch.processes_wanted(0)


DDP_STAGE = """
import sys
sys.path.insert(0, {tests!r})
from conftest import finetune_params
from domaintune.components.core.runtime import run_stage
from domaintune.components.finetune.stage import run_finetune
run_stage("finetune", run_finetune, {tokens!r}, {base!r}, {out!r}, {history!r}, finetune_params(**{params!r}))
"""


def rank_process(parent, rank: int, timeout: float = 60):
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(parent).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank) and "LOCAL_RANK" in child.environ():
                    return child
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.2)
    raise AssertionError(f"no rank {rank} worker under {parent}")


def test_a_rank_that_dies_fails_the_stage_with_one_line(deterministic, tmp_path):
    d = deterministic
    out, history = tmp_path / "model", tmp_path / "history.json"
    params = {**PARAMS, "epochs": 200, "early_stopping_patience": 200, "num_processes": 2}  # far longer than the test
    script = DDP_STAGE.format(tests=HERE, tokens=d["tokens"], base=d["base"], out=str(out), history=str(history),
                              params=params)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        for line in proc.stdout:  # rank 0's first progress line: both ranks are in the training loop
            if line.startswith("domaintune:progress"):
                break
        rank_process(proc.pid, 1).send_signal(signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    errors = [json.loads(line.split(" ", 1)[1]) for line in stdout.splitlines() if line.startswith("domaintune:error")]
    assert proc.returncode == 1, stderr[-3000:]
    assert errors == [{"stage": "finetune", "code": 1,
                       "message": "finetune: rank 1 of 2 was killed by SIGKILL; the other processes were stopped"}]
    assert stderr.rstrip().splitlines()[-1] == "error: " + errors[0]["message"]
    assert not out.exists() and not history.exists()
