"""A training stage that runs itself under torch's elastic launcher (torchrun) when it trains on more than one
device: `torchrun --standalone --nproc-per-node N`, one process per GPU (or N CPU processes with
`--num-processes N`), the Trainer in DistributedDataParallel mode in each.

Why: a single process that sees several GPUs makes the Trainer fall back to `nn.DataParallel` (one
GIL-bound process scattering every batch; deprecated for this use). torchrun is the launcher torch ships,
so nothing here schedules processes by hand: this module only decides how many, runs torchrun in this
process (`torch.distributed.run`, the same code as the `torchrun` command), and turns a failed rank into the
stage's one-line error (core/runtime.py) with its exit code. Each worker runs the same stage function with
the same arguments; rank 0 writes the outputs and hands its report back through a file.

`python -m domaintune.components.training.launch SPEC` is the worker's entry point.
"""
from __future__ import annotations

import functools
import importlib
import os
import pickle
import sys
import tempfile

from domaintune.components.core.errors import BadInput, DomaintuneError
from domaintune.components.training import distributed

WORKER_MODULE = "domaintune.components.training.launch"
RESULT = "result.pkl"


class WorkerFailed(DomaintuneError):
    """A rank failed: its own error (with its exit code) when it raised one, else how it died."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def processes_wanted(requested: int) -> int:
    """How many processes train: REQUESTED when set (`--num-processes`), else the count the pod was given
    (DOMAINTUNE_NPROC_PER_NODE, set by the compiled pipeline), else one per visible GPU, else one."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested and requested > 0:
        n, source = int(requested), "--num-processes"
    elif os.environ.get(distributed.NPROC_ENV, "").strip():
        raw = os.environ[distributed.NPROC_ENV].strip()
        if not raw.isdigit() or int(raw) < 1:
            raise BadInput(f"{distributed.NPROC_ENV} must be a positive integer (got {raw!r})")
        n, source = int(raw), distributed.NPROC_ENV
    else:
        n, source = max(1, gpus), "the visible GPUs"
    if gpus and n > gpus:  # NCCL needs one GPU per process
        raise BadInput(f"{source} asks for {n} processes but only {gpus} GPUs are visible: at most one process per GPU")
    return n


def distributable(stage: str, check=None):
    """Decorates a stage function whose last argument is its Params (with `num_processes`): with more than one
    process wanted, and not already inside a launched run, the call runs under torchrun and returns rank 0's
    report. CHECK(params, processes) validates before anything starts (e.g. the batch splits evenly)."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            params = args[-1]
            n = 1 if distributed.launched() else processes_wanted(getattr(params, "num_processes", 0))
            if check is not None:
                check(params, distributed.world_size() if distributed.launched() else n)
            if n <= 1:
                return fn(*args, **kwargs)
            return relaunch(stage, fn, args, kwargs, n)
        return run
    return wrap


def threads_per_process(n: int) -> int:
    """The CPU cores this process may use, shared out (torchrun's own default is 1 thread each)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // n)


def torchrun_args(n: int, spec_path: str) -> list[str]:
    return ["--standalone", "--nnodes", "1", "--nproc-per-node", str(n), "--max-restarts", "0",
            "--module", WORKER_MODULE, spec_path]


def relaunch(stage: str, fn, args: tuple, kwargs: dict, n: int):
    """FN(*ARGS, **KWARGS) in N processes under torchrun; rank 0's return value, or WorkerFailed."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    with tempfile.TemporaryDirectory(prefix=f"domaintune-{stage}-ddp-") as tmp:
        spec_path = os.path.join(tmp, "spec.pkl")
        with open(spec_path, "wb") as f:
            pickle.dump({"stage": stage, "module": fn.__module__, "name": fn.__name__, "args": args,
                         "kwargs": kwargs, "dir": tmp}, f)
        argv = torchrun_args(n, spec_path)
        print(f"{stage}: {n} processes: torchrun {' '.join(argv)}", file=sys.stderr, flush=True)
        saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        for key in saved:  # torchrun's workers inherit this process's environment
            os.environ.setdefault(key, str(threads_per_process(n)))
        try:
            run(get_args_parser().parse_args(argv))
        except ChildFailedError as exc:
            raise failure(stage, tmp, exc, n) from None
        except SignalException as exc:
            raise WorkerFailed(f"{stage}: stopped by {exc.sigval.name}; the {n} worker processes were stopped") from None
        finally:
            for key, value in saved.items():
                os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        with open(os.path.join(tmp, RESULT), "rb") as f:
            return pickle.load(f)


def _error_files(directory: str) -> dict[int, dict]:
    found = {}
    for name in os.listdir(directory):
        if name.startswith("error-rank") and name.endswith(".pkl"):
            with open(os.path.join(directory, name), "rb") as f:
                found[int(name[len("error-rank"):-len(".pkl")])] = pickle.load(f)
    return found


def failure(stage: str, directory: str, exc, n: int) -> WorkerFailed:
    """The one line for a failed run, naming the root cause rather than its echoes: a bad input a rank raised
    (its own message and exit code 2); else a rank that died without raising (a signal, the OOM killer), since
    the others then fail in their next collective ("connection reset by peer") or are stopped by torchrun
    (SIGTERM); else the lowest rank's error.
    (torchrun's own "first failure" compares whole-second timestamps, so it cannot order these.)"""
    errors = _error_files(directory)
    bad = sorted(rank for rank, error in errors.items() if error["code"] == BadInput.exit_code)
    if bad:
        return WorkerFailed(errors[bad[0]]["message"], BadInput.exit_code)
    # a rank torchrun stopped (SIGTERM) after the first failure is not the cause
    died = sorted((rank for rank in exc.failures if rank not in errors),
                  key=lambda r: (exc.failures[r].signal_name() == "SIGTERM", r))
    if died:
        rank, how = died[0], exc.failures[died[0]]
        what = f"was killed by {how.signal_name()}" if how.exitcode < 0 else f"exited with code {how.exitcode}"
        return WorkerFailed(f"{stage}: rank {rank} of {n} {what}; the other processes were stopped")
    rank = min(errors)
    return WorkerFailed(f"{stage}: rank {rank} of {n} failed: {errors[rank]['message']}", errors[rank]["code"])


def worker(spec_path: str) -> int:
    """One rank: join the process group, run the stage function, and leave the report (rank 0) or the error
    behind for the launching process."""
    from domaintune.components.core.runtime import set_offline_defaults

    with open(spec_path, "rb") as f:
        spec = pickle.load(f)
    set_offline_defaults()
    rank = distributed.rank()
    try:
        distributed.init()
        fn = getattr(importlib.import_module(spec["module"]), spec["name"])
        result = fn(*spec["args"], **spec["kwargs"])
    except BaseException as exc:  # noqa: BLE001 - reported to the launcher, then re-raised or exited
        code = exc.exit_code if isinstance(exc, DomaintuneError) else 1
        message = (str(exc).splitlines() or [""])[0] or type(exc).__name__
        if not isinstance(exc, DomaintuneError):
            message = f"{type(exc).__name__}: {message}"
        with open(os.path.join(spec["dir"], f"error-rank{rank}.pkl"), "wb") as f:
            pickle.dump({"code": code, "message": message}, f)
        if isinstance(exc, DomaintuneError):
            print(f"error: rank {rank}: {message}", file=sys.stderr, flush=True)
            return code
        raise  # a bug keeps its traceback (in this rank's log)
    if distributed.is_main():
        tmp = os.path.join(spec["dir"], f".{RESULT}.tmp")
        with open(tmp, "wb") as f:
            pickle.dump(result, f)
        os.replace(tmp, os.path.join(spec["dir"], RESULT))
    _leave()
    return 0


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1]))
