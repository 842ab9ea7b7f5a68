"""Everything `domaintune run` checks before a task starts, with the stages' own validators: every stage's
Params (all errors together), local files, the base model, the registry, the checkpoint directory, --output.
Bad input fails in a second, not after ingest and tokenize have run."""
from __future__ import annotations

import hashlib
import os
import re

from domaintune.components.core.errors import BadInput
from domaintune.components.io import storage

# What a run writes into its directory (write_run_dir): an --output already holding any of these is refused
RUN_DIR_ENTRIES = ("deployable", "evaluation", "model", "model_card.md", "pipeline.log", "reports", "summary.json")


def stage_params_classes() -> list:
    """Every stage's Params: all of them are validated before the pipeline starts."""
    from domaintune.components.evaluate.stage import EvaluateParams
    from domaintune.components.export.stage import ExportParams
    from domaintune.components.finetune.stage import FinetuneParams
    from domaintune.components.ingest.stage import IngestParams
    from domaintune.components.pretrain.stage import PretrainParams
    from domaintune.components.register.stage import RegisterParams
    from domaintune.components.tokenize.stage import TokenizeParams

    return [IngestParams, TokenizeParams, PretrainParams, FinetuneParams, ExportParams, EvaluateParams, RegisterParams]


def _flag_of(message: str) -> str:
    """The parameter a validator's message names first (`--epochs must be ...` -> `--epochs`)."""
    match = re.match(r"(--[\w-]+)", message)
    return match.group(1) if match else message


def param_errors(values: dict) -> list[str]:
    """Every stage's Params built from VALUES with the stages' own validators, and every problem found — not
    only the first: each field that fails on its own, then what fails only in combination (fractions that
    add up to 1). One message per parameter, in pipeline order."""
    from domaintune.components.core.params import field_names, from_values

    errors: list[str] = []
    for cls in stage_params_classes():
        try:
            from_values(cls, values)
            continue
        except BadInput as exc:
            first = str(exc)
        own = [name for name in field_names(cls) if name in values]
        bad = []
        for name in own:
            try:
                cls(**{name: values[name]})
            except BadInput as exc:
                bad.append(name)
                errors.append(str(exc))
        try:  # the rest together, with the bad ones at their defaults: a constraint between fields
            cls(**{name: values[name] for name in own if name not in bad})
        except BadInput as exc:
            errors.append(str(exc))
        if not bad:
            errors.append(first)
    seen, out = set(), []
    for message in errors:  # --seed, --max-length, --precision... are checked by several stages
        if _flag_of(message) not in seen:
            seen.add(_flag_of(message))
            out.append(message)
    return out


def preflight(values: dict, output_dir: str | None = None) -> dict:
    """Cheap checks before any task starts, with the stages' own validators: bad parameters, missing local
    files, an --output that cannot be used, a --checkpoint-dir of another training and a remote MLflow server
    that is down fail in seconds, all reported together in one line, not after ingest and tokenize have run.
    Nothing is written. Returns the values with `data_version` resolved."""
    from domaintune.components.ingest.stage import sample_data
    from domaintune.components.io.base_models import check_max_length, resolve_model

    errors = param_errors(values)
    local_files = []
    for key in ("train_data", "validation_data", "test_data", "identity_terms", "domain_corpus"):
        uri = values[key] or (sample_data() if key == "train_data" else "")
        if uri and not uri.startswith("s3://"):
            if not os.path.isfile(uri):
                errors.append(f"--{key.replace('_', '-')} {uri}: no such file")
            else:
                local_files.append(uri)
    try:
        model_dir = resolve_model(values["base_model"], values["s3_endpoint_url"])
        if os.path.isdir(model_dir) and "--max-length" not in {_flag_of(e) for e in errors}:
            check_max_length(values["max_length"], model_dir)
    except BadInput as exc:
        errors.append(str(exc))
    if output_dir:
        try:
            storage.check_output_dir(os.path.abspath(output_dir), reserved=RUN_DIR_ENTRIES)
        except BadInput as exc:
            errors.append(str(exc))
    if not errors:
        errors += checkpoint_errors(values)
    if errors:
        raise BadInput("; ".join(errors))
    # the network last, and only for a configuration that is otherwise fine
    from domaintune.components.registry import client as registry

    registry.check_server(registry.tracking_uri(values["mlflow_tracking_uri"]))
    resolved = dict(values)
    if not resolved["data_version"] and local_files:
        # kfp caches on arguments, not on the bytes behind a path: hash local inputs so edited data re-runs.
        resolved["data_version"] = "sha256:" + hashlib.sha256(
            "".join(storage.content_hash(f) for f in local_files).encode()).hexdigest()[:16]
    return resolved


def checkpoint_errors(values: dict) -> list[str]:
    """A --checkpoint-dir written by a training with other parameters is refused before anything runs (the
    data and the base model are compared by the stage itself, once they exist)."""
    from domaintune.components.core.params import from_values
    from domaintune.components.finetune import stage as finetune
    from domaintune.components.pretrain import stage as pretrain
    from domaintune.components.training import checkpoints as ckpt

    directory = values.get("checkpoint_dir") or ""
    if not directory or storage.is_s3(directory):
        return []
    errors = []
    checks = [(directory, finetune.FinetuneParams, finetune.NOT_IN_FINGERPRINT)]
    pre = from_values(pretrain.PretrainParams, values)
    if pre.wanted:
        checks.append((os.path.join(directory, "pretrain"), pretrain.PretrainParams, pretrain.NOT_IN_FINGERPRINT))
    for path, cls, exclude in checks:
        try:
            ckpt.check_params(path, ckpt.training_params(from_values(cls, values), exclude))
        except BadInput as exc:
            errors.append(str(exc))
    return errors
