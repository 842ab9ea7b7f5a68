"""Fine-tuning on several nodes through Kubeflow Trainer: what the finetune task submits.

Target: Kubeflow Trainer v2's `TrainJob` (trainer.kubeflow.org/v1alpha1), not the Training Operator v1
`PyTorchJob`: v1 is in maintenance since Trainer v2 (Kubeflow 1.10) and new clusters install v2; a TrainJob
names a torch runtime (mlPolicy.torch: the controller sets torchrun's PET_NNODES / PET_NPROC_PER_NODE /
PET_NODE_RANK / PET_MASTER_ADDR / PET_MASTER_PORT in every node's pod) and only says what differs per job.

The job carries only fields stable across Trainer v2 releases (runtimeRef and trainer: image, command, args,
env, numNodes, numProcPerNode, resourcesPerNode). The pod-level settings the pipeline's GPU tasks use (the GPU
pool's node selector and toleration, the image's non-root user, a memory-backed /dev/shm for NCCL) live in
the namespaced TrainingRuntime `domaintune-torch-distributed` (k8s/trainer/), because the TrainJob field that
overrides pod specs changed name in each recent release (podSpecOverrides, podTemplateOverrides, runtimePatches).
The S3 and MLflow Secrets reach the trainer as env (secretKeyRef, optional), the same keys as the KFP tasks.

The job's shape comes from the finetune task's environment, which pipelines/platform.py fixes at compile time
(DOMAINTUNE_TRAINER_NODES=N): Kubernetes resources cannot be pipeline parameters, and a task that only submits
must not hold GPUs itself. `trainjob_run` submits and waits; `trainjob_worker` is what each trainer process runs.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass

from domaintune.components.core.errors import BadInput

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
NODES_ENV = "DOMAINTUNE_TRAINER_NODES"        # nodes of the job; set: the finetune task submits a TrainJob
GPUS_ENV = "DOMAINTUNE_TRAINER_GPUS"          # GPUs (= processes) per node
IMAGE_ENV = "DOMAINTUNE_TRAINER_IMAGE"        # the project's GPU image
RUNTIME_ENV = "DOMAINTUNE_TRAINER_RUNTIME"    # KIND/NAME of the runtime
NAMESPACE_ENV = "DOMAINTUNE_NAMESPACE"        # the task pod's namespace (downward API)
RESOURCES_ENV = "DOMAINTUNE_TRAINER_RESOURCES"  # JSON: resourcesPerNode requests/limits besides the GPUs
DEFAULT_RUNTIME = "TrainingRuntime/domaintune-torch-distributed"
WORKER_MODULE = "domaintune.components.training.trainjob_worker"
# Secret -> keys the trainer reads, as the pipeline's tasks do (pipelines/platform.py)
SECRETS = {"domaintune-s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"),
           "domaintune-mlflow": ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}


@dataclass
class TrainerSettings:
    nodes: int
    gpus_per_node: int
    image: str
    runtime_kind: str
    runtime_name: str
    namespace: str
    resources: dict


def requested() -> bool:
    return bool(os.environ.get(NODES_ENV, "").strip())


def settings() -> TrainerSettings:
    """The job's shape from the task's environment; a bad value is one line naming the variable."""
    def positive(name: str, default: str = "") -> int:
        raw = os.environ.get(name, default).strip()
        if not raw.isdigit() or int(raw) < 1:
            raise BadInput(f"{name} must be a positive integer (got {raw!r})")
        return int(raw)

    kind, _, name = os.environ.get(RUNTIME_ENV, DEFAULT_RUNTIME).partition("/")
    if kind not in ("TrainingRuntime", "ClusterTrainingRuntime") or not name:
        raise BadInput(f"{RUNTIME_ENV} must be TrainingRuntime/NAME or ClusterTrainingRuntime/NAME")
    image = os.environ.get(IMAGE_ENV, "").strip()
    if not image:
        raise BadInput(f"{IMAGE_ENV} must name the training image")
    try:
        resources = json.loads(os.environ.get(RESOURCES_ENV) or "{}")
    except ValueError:
        raise BadInput(f"{RESOURCES_ENV} must be JSON ({{\"requests\": {{...}}, \"limits\": {{...}}}})") from None
    return TrainerSettings(positive(NODES_ENV), positive(GPUS_ENV, "1"), image, kind, name,
                           os.environ.get(NAMESPACE_ENV, "").strip() or "default", resources)


def job_name(staging_uri: str) -> str:
    """One name per task execution (its output location): a retried task finds the job its previous attempt
    submitted instead of training twice. RFC 1035 label, as the CRD requires."""
    return "domaintune-ft-" + hashlib.sha256(staging_uri.encode()).hexdigest()[:16]


def resources_per_node(s: TrainerSettings) -> dict:
    gpu = {"nvidia.com/gpu": str(s.gpus_per_node)}
    return {"requests": {**s.resources.get("requests", {}), **gpu}, "limits": {**s.resources.get("limits", {}), **gpu}}


def secret_env() -> list[dict]:
    return [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
            for secret, keys in SECRETS.items() for key in keys]


def worker_spec(tokens_uri: str, model_ref: str, staging_uri: str, params) -> str:
    """What every trainer process is told: where its inputs are, where rank 0 leaves the outputs, the
    FinetuneParams (one JSON argument)."""
    return json.dumps({"tokens": tokens_uri, "model": model_ref, "staging": staging_uri, "params": asdict(params)},
                      sort_keys=True)


def manifest(name: str, s: TrainerSettings, spec: str, labels: dict | None = None) -> dict:
    """The TrainJob: the project image on N nodes x G GPUs, torchrun over the worker module."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": s.namespace,
                     "labels": {"app.kubernetes.io/name": "domaintune", "app.kubernetes.io/component": "finetune",
                                **(labels or {})}},
        "spec": {
            "runtimeRef": {"apiGroup": GROUP, "kind": s.runtime_kind, "name": s.runtime_name},
            "trainer": {
                "image": s.image,
                # torchrun takes --nnodes, --nproc-per-node, --node-rank and the rendezvous from the PET_*
                # variables the torch runtime sets in each node's pod
                "command": ["torchrun", "--module", WORKER_MODULE],
                "args": [spec],
                "numNodes": s.nodes,
                "numProcPerNode": s.gpus_per_node,
                "resourcesPerNode": resources_per_node(s),
                "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
                        *secret_env()],
            },
        },
    }
