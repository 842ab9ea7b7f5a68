"""Cluster settings for each task: resources, GPU pool, secrets, retries. Compile-time settings (env
vars read by `domaintune compile`), not pipeline parameters: Kubernetes needs them fixed in the spec.
kfp.local ignores all of them, so the same pipeline runs on a laptop."""
from __future__ import annotations

import os

from kfp import kubernetes

# Node pool contract documented in k8s/README.md: GPU nodes carry this label and taint.
GPU_NODE_LABEL = ("domaintune/pool", "gpu")
GPU_TAINT_KEY = "nvidia.com/gpu"
MLFLOW_SECRET = "domaintune-mlflow"
IMAGE_UID = 10001
S3_SECRET = "domaintune-s3"

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


def configure(task, stage: str):
    cpu_req, cpu_lim, mem_req, mem_lim = RESOURCES[stage]
    task.set_cpu_request(cpu_req).set_cpu_limit(cpu_lim).set_memory_request(mem_req).set_memory_limit(mem_lim)
    task.set_display_name(stage)
    if stage in GPU_STAGES and gpu_count():
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpu_count())
        kubernetes.add_node_selector(task, *GPU_NODE_LABEL)
        kubernetes.add_toleration(task, key=GPU_TAINT_KEY, operator="Exists", effect="NoSchedule")
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
