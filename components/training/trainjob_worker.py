"""What each process of a Kubeflow TrainJob runs (`torchrun --module domaintune.components.training.
trainjob_worker SPEC`, training/trainjob.py): fetch the inputs from the run's object storage (once per node),
fine-tune as one rank of the job (the finetune stage, unchanged: the Trainer is in DDP mode across nodes),
and leave the outputs (rank 0) or a failing rank's error in the staging location the submitting task reads.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

from domaintune.components.core.errors import DomaintuneError
from domaintune.components.io import storage
from domaintune.components.training import distributed

INPUTS = os.path.join(tempfile.gettempdir(), "domaintune-trainjob-inputs")


def inputs_on_this_node(spec: dict) -> tuple[str, str]:
    """The tokens and the base model as local directories: each node's first process downloads them, the
    others use its copy (the nodes share no filesystem)."""
    from domaintune.components.io.base_models import resolve_model

    paths_file = os.path.join(INPUTS, "paths.json")
    endpoint = spec["params"].get("s3_endpoint_url", "")
    if distributed.local_rank() == 0:
        os.makedirs(INPUTS, exist_ok=True)
        tokens = storage.fetch(spec["tokens"], endpoint, cache_dir=os.path.join(INPUTS, "tokens"))
        model = resolve_model(storage.object_uri(spec["model"]), endpoint)
        storage.write_json(paths_file, {"tokens": str(tokens), "model": str(model)})
    distributed.barrier()
    paths = storage.read_json(paths_file)
    return paths["tokens"], paths["model"]


def train(spec: dict) -> None:
    from domaintune.components.finetune.stage import FinetuneParams, run_finetune

    tokens, model = inputs_on_this_node(spec)
    params = FinetuneParams(**spec["params"])
    with tempfile.TemporaryDirectory(prefix="domaintune-trainjob-out-") as out:
        model_out, history = os.path.join(out, "model"), os.path.join(out, "history.json")
        run_finetune(tokens, model, model_out, history, params)  # a launched rank: trains in place
        if distributed.is_main():
            storage.upload(model_out, spec["staging"] + "/model", params.s3_endpoint_url)
            storage.upload(history, spec["staging"] + "/history.json", params.s3_endpoint_url)


def report_error(spec: dict, exc: BaseException) -> int:
    """This rank's error beside the outputs, for the submitting task to show as its one line."""
    code = exc.exit_code if isinstance(exc, DomaintuneError) else 1
    message = (str(exc).splitlines() or [""])[0] or type(exc).__name__
    if not isinstance(exc, DomaintuneError):
        message = f"{type(exc).__name__}: {message}"
    rank = distributed.rank()
    print(f"error: rank {rank}: {message}", file=sys.stderr, flush=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"rank": rank, "code": code, "message": message}, f)
    try:
        storage.upload(f.name, f"{spec['staging']}/errors/rank-{rank}.json", spec["params"].get("s3_endpoint_url", ""))
    except DomaintuneError as upload_failed:  # the job fails either way; its log keeps the reason
        print(f"error: rank {rank}: could not record the error: {upload_failed}", file=sys.stderr, flush=True)
    finally:
        os.unlink(f.name)
    return code


def main(argv: list[str]) -> int:
    from domaintune.components.core.runtime import set_offline_defaults

    spec = json.loads(argv[0])
    set_offline_defaults()
    try:
        distributed.init()
        train(spec)
    except DomaintuneError as exc:
        return report_error(spec, exc)
    except BaseException as exc:
        report_error(spec, exc)
        raise  # a bug keeps its traceback in this rank's log
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
