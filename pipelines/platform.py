"""Cluster settings for each task: resources, GPU pool, secrets, retries. Compile-time settings (env
vars read by `domaintune compile`), not pipeline parameters: Kubernetes needs them fixed in the spec.
kfp.local ignores all of them, so the same pipeline runs on a laptop."""
from __future__ import annotations

import json
import os

from kfp import kubernetes

from domaintune.components.training import trainjob
from domaintune.components.training.distributed import NPROC_ENV

# Node pool contract documented in k8s/README.md: GPU nodes carry this label and taint.
GPU_NODE_LABEL = ("domaintune/pool", "gpu")
GPU_TAINT_KEY = "nvidia.com/gpu"
MLFLOW_SECRET = "domaintune-mlflow"
IMAGE_UID = 10001
S3_SECRET = "domaintune-s3"
SHM_SIZE = "2Gi"  # NCCL's shared-memory transport between the GPU processes of one pod (counts as pod memory)

# (cpu request, cpu limit, memory request, memory limit): sized for a MiniLM/BERT-base job; the data
# stages are light, finetune holds the model, optimizer states and batches.
RESOURCES = {
    "plan": ("100m", "500m", "256Mi", "512Mi"),
    "champion": ("100m", "1", "512Mi", "1Gi"),
    "ingest": ("1", "2", "2Gi", "4Gi"),
    "tokenize": ("2", "4", "4Gi", "8Gi"),
    "pretrain": ("4", "8", "16Gi", "32Gi"),
    "finetune": ("4", "8", "16Gi", "32Gi"),
    "evaluate": ("2", "4", "8Gi", "16Gi"),
    "export": ("2", "4", "8Gi", "16Gi"),
    "register": ("1", "2", "4Gi", "8Gi"),
    # finetune compiled for Kubeflow Trainer: it submits, waits and copies the model (the job's nodes train)
    "trainjob-submit": ("250m", "1", "1Gi", "4Gi"),
}
GPU_STAGES = ("pretrain", "finetune")
# Retried where a retry is safe and can help: GPU pods get preempted (training resumes from its
# checkpoint dir), and the registry is a network service (register is idempotent per pipeline run).
# Data stages fail on bad input, which a retry cannot fix. Backoff 30 s, doubling (configure below).
# Bounded for a registry that is down: each attempt of champion/evaluate/register gives up on it within
# ~2 s (refused) to ~16 s (silent) in its health check, or ~7 s per request after that (registry/client.py),
# so register fails after at most 3 attempts + 30 s + 60 s of backoff: under 3 minutes, not 20.
RETRIES = {"pretrain": 2, "finetune": 2, "champion": 2, "evaluate": 1, "register": 2}
# kfp.local (`domaintune run`) runs the same spec on one machine, where nothing gets preempted and a registry
# that is down is not back in a minute: a training task is retried once after a short wait (a killed process
# resumes from its checkpoints), every other task fails at once, so a run with MLflow down at register fails
# in well under a minute; rerunning reuses the cached stages.
LOCAL_RETRIES = {"pretrain": 1, "finetune": 1}
LOCAL_BACKOFF_SECONDS = 2
MLFLOW_ENV = {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
              "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"}
S3_ENV = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
          "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL"}


def gpu_count() -> int:
    """DOMAINTUNE_GPUS at compile time: 0 for CPU-only clusters, else 1, 2, 4, 8 or 16 per training pod."""
    value = int(os.environ.get("DOMAINTUNE_GPUS", "1"))
    if value not in (0, 1, 2, 4, 8, 16):
        raise ValueError(f"DOMAINTUNE_GPUS must be 0, 1, 2, 4, 8 or 16 (got {value})")
    return value


def trainer_nodes() -> int:
    """DOMAINTUNE_TRAINER_NODES at compile time: 0 (default) trains in the finetune task's own pod; N >= 1 makes
    the finetune task submit a Kubeflow Trainer TrainJob of N nodes x DOMAINTUNE_GPUS GPUs and wait for it."""
    value = int(os.environ.get(trainjob.NODES_ENV, "0") or 0)
    if value < 0 or value > 64:
        raise ValueError(f"{trainjob.NODES_ENV} must be 0 (off) or 1..64 nodes (got {value})")
    return value


def configure_trainjob(task, nodes: int) -> None:
    """The finetune task as a TrainJob submitter: no GPU of its own (the job's nodes have them), the job's
    shape in its environment (components/training/trainjob.py), its namespace from the downward API."""
    from domaintune.components.core.images import GPU_IMAGE

    per_node = max(1, gpu_count())
    task.set_env_variable(trainjob.NODES_ENV, str(nodes)).set_env_variable(trainjob.GPUS_ENV, str(per_node))
    task.set_env_variable(trainjob.IMAGE_ENV, GPU_IMAGE)
    task.set_env_variable(trainjob.RUNTIME_ENV, os.environ.get(trainjob.RUNTIME_ENV, trainjob.DEFAULT_RUNTIME))
    cpu_req, cpu_lim, mem_req, mem_lim = RESOURCES["finetune"]
    task.set_env_variable(trainjob.RESOURCES_ENV, json.dumps(
        {"requests": {"cpu": cpu_req, "memory": mem_req}, "limits": {"cpu": cpu_lim, "memory": mem_lim}}))
    kubernetes.use_field_path_as_env(task, trainjob.NAMESPACE_ENV, "metadata.namespace")


def configure_processes(task, gpus: int) -> None:
    """One training process per GPU: the stage reads DOMAINTUNE_NPROC_PER_NODE and, above one, runs itself under
    torchrun (components/training/launch.py) with DistributedDataParallel; `--num-processes` overrides it.
    NCCL exchanges gradients between the processes through /dev/shm, which a container gets at 64 MiB unless
    a memory-backed volume replaces it."""
    if gpus <= 1:  # one GPU: one process, found without help (and kfp.local runs see no setting)
        return
    task.set_env_variable(NPROC_ENV, str(gpus))
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                               size_limit=SHM_SIZE)


def configure(task, stage: str):
    submitter = stage == "finetune" and trainer_nodes() > 0
    cpu_req, cpu_lim, mem_req, mem_lim = RESOURCES["trainjob-submit" if submitter else stage]
    task.set_cpu_request(cpu_req).set_cpu_limit(cpu_lim).set_memory_request(mem_req).set_memory_limit(mem_lim)
    task.set_display_name(stage)
    if submitter:
        configure_trainjob(task, trainer_nodes())
    elif stage in GPU_STAGES and gpu_count():
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpu_count())
        kubernetes.add_node_selector(task, *GPU_NODE_LABEL)
        kubernetes.add_toleration(task, key=GPU_TAINT_KEY, operator="Exists", effect="NoSchedule")
        configure_processes(task, gpu_count())
    if stage in RETRIES:
        task.set_retry(num_retries=RETRIES[stage], backoff_duration="30s", backoff_factor=2.0,
                       backoff_max_duration="600s")
    # The image's non-root user (docker/Dockerfile*); pods must not fall back to root.
    kubernetes.set_security_context(task, run_as_user=IMAGE_UID, run_as_group=IMAGE_UID, run_as_non_root=True)
    # optional=True: a cluster with public data and an in-namespace MLflow needs neither secret.
    kubernetes.use_secret_as_env(task, S3_SECRET, S3_ENV, optional=True)
    if stage in ("champion", "evaluate", "register"):
        kubernetes.use_secret_as_env(task, MLFLOW_SECRET, MLFLOW_ENV, optional=True)
    return task
