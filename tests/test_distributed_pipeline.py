"""The compiled pipeline's distributed settings (compile-time, like DOMAINTUNE_GPUS): a multi-GPU pod runs its
training stages under torchrun, one process per GPU; DOMAINTUNE_TRAINER_NODES makes the finetune task a
Kubeflow TrainJob submitter that holds no GPU itself."""
import os
import subprocess
import sys

import pytest
import yaml

from domaintune.components.training import trainjob
from domaintune.components.training.distributed import NPROC_ENV

BIN = os.path.dirname(sys.executable)
FINETUNE = ("finetune-op", "finetune-adapted-op")


def compiled(tmp_path, **env) -> tuple[dict, dict]:
    out = tmp_path / "pipeline.yaml"
    proc = subprocess.run([os.path.join(BIN, "domaintune"), "compile", "--output", str(out)], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    docs = list(yaml.safe_load_all(out.read_text()))
    return docs[0]["deploymentSpec"]["executors"], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def env_of(container) -> dict:
    return {e["name"]: e["value"] for e in container.get("env", [])}


@pytest.fixture(scope="module")
def four_gpus(tmp_path_factory):
    return compiled(tmp_path_factory.mktemp("gpus4"), DOMAINTUNE_GPUS="4")


def test_four_gpus_run_finetune_and_pretrain_under_torchrun_with_one_process_per_gpu(four_gpus):
    executors, k8s = four_gpus
    for name in (*FINETUNE, "pretrain-op"):
        container = executors[f"exec-{name}"]["container"]
        assert container["resources"]["accelerator"]["resourceCount"] == "4"
        # the stage reads it (training/launch.py) and relaunches itself: torchrun --nproc-per-node 4
        assert env_of(container)[NPROC_ENV] == "4", name
        shm = k8s[f"exec-{name}"]["emptyDirMounts"]
        assert {"mountPath": "/dev/shm", "medium": "Memory"}.items() <= shm[0].items(), shm  # NCCL's transport
    for name in ("ingest-op", "export-op", "evaluate-op"):  # the other stages stay single-process, no GPU
        assert NPROC_ENV not in env_of(executors[f"exec-{name}"]["container"])


def test_the_default_compile_sets_no_process_count(tmp_path):
    from domaintune.pipelines.compile import DEFAULT_PATH

    executors = list(yaml.safe_load_all(open(DEFAULT_PATH)))[0]["deploymentSpec"]["executors"]
    assert not any(NPROC_ENV in env_of(e["container"]) for e in executors.values())  # 1 GPU: one process


def test_trainer_nodes_make_finetune_a_trainjob_submitter_without_a_gpu(tmp_path):
    executors, k8s = compiled(tmp_path, DOMAINTUNE_GPUS="8", DOMAINTUNE_TRAINER_NODES="3")
    for name in FINETUNE:
        container = executors[f"exec-{name}"]["container"]
        env = env_of(container)
        assert "accelerator" not in container["resources"] and "nodeSelector" not in k8s[f"exec-{name}"]
        assert env[trainjob.NODES_ENV] == "3" and env[trainjob.GPUS_ENV] == "8"
        assert env[trainjob.IMAGE_ENV].endswith("-cuda") and env[trainjob.RUNTIME_ENV] == trainjob.DEFAULT_RUNTIME
        assert k8s[f"exec-{name}"]["fieldPathAsEnv"] == [{"name": trainjob.NAMESPACE_ENV,
                                                          "fieldPath": "metadata.namespace"}]
    pretrain = executors["exec-pretrain-op"]["container"]  # pretraining still runs in its own 8-GPU pod
    assert pretrain["resources"]["accelerator"]["resourceCount"] == "8" and env_of(pretrain)[NPROC_ENV] == "8"
