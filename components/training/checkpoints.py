"""Resumable checkpoints: where the last complete one is, which optimizer step it holds, and what produced them.

A checkpoint directory is bound to the training that wrote it: on first use it gets `fingerprint.json`, digests
of what determines the training (the data, the base model, the training parameters; each stage says which).
A later run resumes from it only when its own fingerprint is the same — a retried task after preemption, or a
rerun of the same command. Another training (other seed, other split, other base model) is refused with one
line naming what differs, since resuming would silently return the earlier run's model; with
`DOMAINTUNE_CHECKPOINT_MISMATCH=fresh` it starts from scratch in a sub-directory `fresh-<fingerprint>` instead
(where a retry of that run then resumes).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys

from domaintune.components.core.errors import BadInput

FINGERPRINT = "fingerprint.json"
MISMATCH_ENV = "DOMAINTUNE_CHECKPOINT_MISMATCH"  # "fresh": a new sub-directory instead of refusing
FRESH = "fresh"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")


def resumed_step(checkpoint: str | None) -> int:
    if not checkpoint:
        return 0
    try:
        return int(os.path.basename(checkpoint.rstrip("/")).rsplit("-", 1)[-1])
    except ValueError:
        return 0


def _trainer_state(checkpoint: str) -> dict | None:
    """The Trainer writes trainer_state.json last: without a readable one the checkpoint is incomplete (the
    process died while saving it)."""
    try:
        with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def checkpoints_in(directory: str) -> list[tuple[int, str]]:
    """(step, path) of every checkpoint-N directory, newest first."""
    if not os.path.isdir(directory):
        return []
    found = [(int(m.group(1)), os.path.join(directory, name)) for name in os.listdir(directory)
             if (m := CHECKPOINT.match(name)) and os.path.isdir(os.path.join(directory, name))]
    return sorted(found, reverse=True)


def last_checkpoint(directory: str) -> str | None:
    """The newest complete checkpoint in DIRECTORY (None when there is none); a newer one that a killed process
    left half-written is skipped, and the Trainer overwrites it when it gets there again."""
    for _, path in checkpoints_in(directory):
        if _trainer_state(path) is not None:
            return path
        print(f"checkpoints: skipping incomplete {path} (no readable trainer_state.json)", file=sys.stderr)
    return None


def describe_resume(stage: str, checkpoint: str | None, directory: str, fingerprint: str) -> str:
    """The line a stage logs about its checkpoints: what it resumes and from which step, or that it starts."""
    if not checkpoint:
        return f"{stage}: no checkpoint to resume in {directory} (fingerprint {fingerprint[:12]}): training from step 0"
    state = _trainer_state(checkpoint) or {}
    total = state.get("max_steps")
    epoch = state.get("epoch")
    return (f"{stage}: resuming from {os.path.basename(checkpoint)} at step {state.get('global_step', resumed_step(checkpoint))}"
            + (f" of {total}" if total else "") + (f" (epoch {epoch:g})" if isinstance(epoch, (int, float)) else "")
            + f" in {directory} (fingerprint {fingerprint[:12]})")


# ------------------------------------------------------------------------------------------ fingerprints

def digest(obj) -> str:
    """sha256 of a JSON-able object (keys sorted): what the fingerprint compares."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(paths: list[str], root: str = "") -> str:
    """sha256 over files' names (relative to ROOT) and contents, in the given order."""
    h = hashlib.sha256()
    for path in paths:
        h.update((os.path.relpath(path, root) if root else os.path.basename(path)).encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def model_digest(model_dir: str) -> str:
    """A base model directory's config and weights (content): the same base model, or another one — an
    adapted encoder from another pretraining run has the same file sizes but other weights."""
    if not os.path.isdir(model_dir):
        return digest({"model": model_dir})  # a hub id: its name is all there is before loading it
    names = sorted(n for n in os.listdir(model_dir) if os.path.isfile(os.path.join(model_dir, n))
                   and (n == "config.json" or n.endswith(WEIGHT_SUFFIXES)))
    return file_digest([os.path.join(model_dir, n) for n in names], model_dir)


def arrow_digest(dataset_dir: str) -> str:
    """A saved datasets.Dataset by its Arrow data files: those state.json lists (its `_fingerprint` is random, not
    data). Not every *.arrow there: a `map`/`sort` on the loaded dataset writes its cache-*.arrow beside them, so a
    training killed after that and retried on the same tokens would see other data and refuse to resume."""
    try:
        with open(os.path.join(dataset_dir, "state.json"), encoding="utf-8") as f:
            names = sorted(entry["filename"] for entry in json.load(f)["_data_files"])
    except (OSError, ValueError, KeyError, TypeError):
        names = sorted(n for n in os.listdir(dataset_dir) if n.endswith(".arrow") and not n.startswith("cache-"))
    return file_digest([os.path.join(dataset_dir, n) for n in names], dataset_dir)


def training_params(p, exclude: tuple[str, ...]) -> dict:
    """A Params dataclass's fields minus EXCLUDE, float fields as floats (epochs=3 and 3.0 train the same)."""
    import dataclasses

    return {f.name: (float(getattr(p, f.name)) if f.type in ("float", float) else getattr(p, f.name))
            for f in dataclasses.fields(p) if f.name not in exclude}


def fingerprint(data: dict, base_model: str, params: dict) -> dict:
    """What fingerprint.json holds: a digest of everything, the digests of the data and the base model, and
    the training parameters as they were (so a refusal can say which one differs)."""
    parts = {"data": digest(data), "base_model": base_model, "params": params}
    return {"fingerprint": digest(parts), "data": parts["data"], "base_model": base_model, "params": params}


def param_differences(old: dict, new: dict) -> list[str]:
    return [f"{key} {old.get(key, '(unset)')!r} -> {new.get(key, '(unset)')!r}"
            for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


def differences(old: dict, new: dict) -> list[str]:
    out = []
    if old.get("data") != new["data"]:
        out.append("the data (splits or tokens) differ")
    if old.get("base_model") != new["base_model"]:
        out.append("the base model differs")
    out += param_differences(old.get("params") or {}, new["params"])
    return out or ["the fingerprint differs"]


def read_fingerprint(directory: str) -> dict | None:
    path = os.path.join(directory, FINGERPRINT)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def fresh_requested() -> bool:
    return os.environ.get(MISMATCH_ENV, "").strip().lower() == FRESH


def _refusal(directory: str, why: str) -> BadInput:
    return BadInput(f"--checkpoint-dir {directory}: {why}; resuming would return that run's model. Use a new "
                    f"--checkpoint-dir, empty this one, or set {MISMATCH_ENV}={FRESH} to train from scratch in a "
                    f"sub-directory of it")


def check_params(directory: str, params: dict) -> None:
    """Preflight: refuse at once a checkpoint directory whose recorded training parameters differ from PARAMS
    (the data and base model are compared when the stage runs, once they exist)."""
    found = read_fingerprint(directory)
    if found is None or fresh_requested():
        return
    if "params" not in found:
        raise _refusal(directory, f"{FINGERPRINT} is unreadable")
    changed = param_differences(found["params"], params)
    if changed:
        raise _refusal(directory, "holds checkpoints of another training (" + ", ".join(changed) + ")")


def bind(directory: str, fp: dict) -> str:
    """The directory to checkpoint into for the training FP describes (see the module docstring): DIRECTORY
    when it is new, empty of checkpoints or bound to the same fingerprint; its `fresh-<fingerprint>`
    sub-directory when it holds another's and the user asked for that; otherwise BadInput (nothing written)."""
    found = read_fingerprint(directory)
    if found is not None and found.get("fingerprint") == fp["fingerprint"]:
        return directory
    if found is None and not checkpoints_in(directory):
        _write(directory, fp)
        return directory
    if fresh_requested():
        sub = os.path.join(directory, f"{FRESH}-{fp['fingerprint'][:12]}")
        print(f"checkpoints: {directory} holds another training's checkpoints; {MISMATCH_ENV}={FRESH}: "
              f"starting over in {sub}", file=sys.stderr)
        return bind(sub, fp)
    if found is None:
        raise _refusal(directory, f"holds checkpoints of unknown origin (no {FINGERPRINT})")
    if not found:
        raise _refusal(directory, f"{FINGERPRINT} is unreadable")
    raise _refusal(directory, "holds checkpoints of another training (" + ", ".join(differences(found, fp)) + ")")


def bind_scratch(directory: str, fp: dict) -> str:
    """A stage's own checkpoint directory (no --checkpoint-dir given): resumed by a retry of the same training,
    cleared when anything else left it there — nobody asked to keep it."""
    found = read_fingerprint(directory)
    if os.path.isdir(directory) and (found is None or found.get("fingerprint") != fp["fingerprint"]):
        shutil.rmtree(directory, ignore_errors=True)
    return bind(directory, fp)


def _write(directory: str, fp: dict) -> None:
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{FINGERPRINT}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(fp, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, os.path.join(directory, FINGERPRINT))
