"""`domaintune run --runner docker`: every task in the component image, through kfp.local's DockerRunner.

The image is DOMAINTUNE_IMAGE, the setting the compiled YAML uses (components/core/images.py; build it with
docker/build.sh). The training stages too: this runner gives containers no GPU, so the CUDA image would only be
a bigger way to train on the CPU. kfp.local mounts the pipeline root at its own path; this module adds, at
their own paths as well, what the tasks read and write outside it: the local input files and base model
(read-only), the checkpoint directory, and the working directory, where MLflow's default store lives
(./mlflow.db, ./mlruns: the same store the subprocess runner writes). Tasks run as the invoking user
(files they write are that user's, as with the subprocess runner) with no capabilities, and with no network
unless the stage talks to a remote MLflow server (champion, evaluate, register) or the run uses S3: then with
the host's network, so `127.0.0.1` means the same server it means here.

kfp.local 2.17 has one set of `docker run` settings for all tasks, and its handler takes a container that
was removed before its exit status was read for a success (a SIGKILLed task would pass); so for the run's
duration the DockerRunner's task handler is this module's (`docker_handler`), which sets the per-task
settings and reads the exit status before removing the container.
"""
from __future__ import annotations

import contextlib
import os
import re

from domaintune.components.core.errors import BadInput

LABEL = "domaintune.stage"  # on every task container: `docker ps --filter label=domaintune.stage=finetune`
MLFLOW_STAGES = ("champion", "evaluate", "register")  # as pipelines/platform.py: the stages that talk to MLflow
FORWARDED_ENV = re.compile(r"(DOMAINTUNE|MLFLOW|AWS|HF|TRANSFORMERS|TOKENIZERS|OMP|MKL)_\w+")
NOT_FORWARDED = {"AWS_CA_BUNDLE", "DOMAINTUNE_RUNS_DIR", "DOMAINTUNE_IMAGE", "DOMAINTUNE_GPU_IMAGE"}
LOCAL_FILE_KEYS = ("train_data", "validation_data", "test_data", "identity_terms", "domain_corpus", "ood_data")


def docker_client():
    try:
        import docker
    except ImportError:
        raise BadInput("--runner docker needs the docker Python package: pip install docker") from None
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise BadInput(f"--runner docker: no Docker engine answers ({str(exc).splitlines()[0][:160]}); "
                       "start dockerd or set DOCKER_HOST") from None
    return client


def image_id(client, image: str, fingerprint: str) -> str:
    """The image's id, after checking it holds the code this checkout compiles the pipeline from: the spec
    (component signatures) comes from here, the stage code from the image."""
    import docker

    try:
        found = client.images.get(image)
    except docker.errors.ImageNotFound:
        raise BadInput(f"--runner docker: image {image} is not here; build it with docker/build.sh "
                       "(or set DOMAINTUNE_IMAGE to one that is)") from None
    inside = client.containers.run(image, ["python3", "-c", "from domaintune.pipelines.local_run import "
                                           "code_fingerprint; print(code_fingerprint())"],
                                   network_mode="none", remove=True).decode().strip()
    if inside != fingerprint:
        raise BadInput(f"--runner docker: image {image} holds other domaintune code than this installation "
                       f"({inside} vs {fingerprint}); rebuild it with docker/build.sh")
    return found.id


def _paths(value: str) -> list[str]:
    """The local paths in a parameter value (ood_data is comma-separated); URIs are not paths."""
    return [p for p in (v.strip() for v in str(value or "").split(",")) if p and "://" not in p]


def task_settings(values: dict, tracking_uri: str, cwd: str) -> dict:
    """What every task container gets (`docker run` arguments for the docker SDK) and which need a network."""
    from docker.types import Mount

    binds: dict[str, bool] = {cwd: False}  # path -> read-only
    for key in LOCAL_FILE_KEYS:
        for path in _paths(values.get(key)):
            for real in {os.path.abspath(path), os.path.realpath(path)}:
                binds.setdefault(os.path.dirname(real), True)
    base = values.get("base_model") or ""
    if os.path.isdir(base):
        for real in {os.path.abspath(base), os.path.realpath(base)}:
            binds.setdefault(real, True)
    checkpoint_dir = values.get("checkpoint_dir") or ""
    if checkpoint_dir and "://" not in checkpoint_dir:
        checkpoint_dir = os.path.abspath(checkpoint_dir)
        os.makedirs(checkpoint_dir, exist_ok=True)  # else the engine would create it, owned by root
        binds[checkpoint_dir] = False
    if tracking_uri.startswith("sqlite:///"):
        binds[os.path.dirname(tracking_uri[len("sqlite:///"):]) or "/"] = False
    # A directory inside another mounted one needs no mount of its own (unless it is writable and the outer not).
    mounts = [Mount(target=p, source=p, type="bind", read_only=ro) for p, ro in sorted(binds.items())
              if not any(p.startswith(q.rstrip("/") + "/") and (ro or not binds[q]) for q in binds if q != p)]
    env = {k: v for k, v in os.environ.items() if FORWARDED_ENV.fullmatch(k) and k not in NOT_FORWARDED}
    env["MLFLOW_TRACKING_URI"] = tracking_uri  # resolved here: inside, ./mlflow.db would mean the container's
    env["GIT_PYTHON_REFRESH"] = "quiet"  # the image has no git (the commit comes from DOMAINTUNE_GIT_COMMIT)
    uses_s3 = any("s3://" in str(v) for v in values.values()) or bool(  # ood_data: a comma-separated list
        values.get("s3_endpoint_url") or os.environ.get("AWS_ENDPOINT_URL"))
    remote_mlflow = tracking_uri.startswith(("http://", "https://"))
    return {
        "run_args": {"mounts": mounts, "working_dir": cwd, "environment": env,
                     "user": f"{os.getuid()}:{os.getgid()}", "group_add": ["0"],  # group 0: the image's HOME
                     "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"], "shm_size": "2g"},
        "networked": (lambda stage: True) if uses_s3 else (lambda stage: remote_mlflow and stage in MLFLOW_STAGES),
    }


def stage_of(command: list[str]) -> str:
    """The stage a task runs, from its command (`--function_to_execute finetune_op`)."""
    for flag, value in zip(command, command[1:]):
        if flag == "--function_to_execute":
            name = value.removesuffix("_op")
            return "finetune" if name == "finetune_adapted" else name
    return "task"


def docker_handler(image: str, networked, run_id: str):
    """kfp.local's DockerTaskHandler with per-task settings and a reliable exit status."""
    from kfp.local import docker_task_handler, status

    class Handler(docker_task_handler.DockerTaskHandler):
        def run(self) -> status.Status:
            import docker

            stage = stage_of(self.full_command)
            args = dict(self.runner.container_run_args)
            args["environment"] = {**self.env_vars, **args.get("environment", {})}
            args["network_mode"] = "host" if networked(stage) else "none"
            args["labels"] = {LABEL: stage, "domaintune.run": run_id}
            client = docker.from_env()
            try:
                volumes = self.get_volumes_to_mount(client)
                container = client.containers.run(image=image, command=self.full_command, volumes=volumes,
                                                  detach=True, **args)
                try:
                    for line in container.logs(stream=True, follow=True):
                        print(line.decode(errors="replace"), end="")
                    code = container.wait()["StatusCode"]
                finally:
                    with contextlib.suppress(docker.errors.APIError):
                        container.remove(force=True)
            finally:
                client.close()
            if code:
                print(f"{stage}: container exited with status {code}"
                      + (" (killed)" if code == 137 else ""), flush=True)
            return status.Status.SUCCESS if code == 0 else status.Status.FAILURE

    return Handler


@contextlib.contextmanager
def docker_runner(values: dict, run_id: str, fingerprint: str):
    """(kfp.local runner, cache tag) for the run; the per-task handler is in place while the block runs."""
    from kfp import local
    from kfp.local import docker_task_handler

    from domaintune.components.core.images import IMAGE
    from domaintune.components.registry import client as registry

    client = docker_client()
    try:
        ident = image_id(client, IMAGE, fingerprint)
        # A runner killed outright (SIGKILL) never removed its task's container: the next run does, once it exited.
        client.containers.prune(filters={"label": LABEL})
    finally:
        client.close()
    settings = task_settings(values, registry.tracking_uri(values["mlflow_tracking_uri"]), os.getcwd())
    runner = local.DockerRunner(**settings["run_args"])
    saved = docker_task_handler.DockerTaskHandler
    docker_task_handler.DockerTaskHandler = docker_handler(IMAGE, settings["networked"], run_id)
    try:
        # the cache is keyed on the image too: a rebuilt image (other dependencies) does not reuse old outputs
        yield runner, f"docker-{ident.removeprefix('sha256:')[:12]}"
    finally:
        docker_task_handler.DockerTaskHandler = saved
