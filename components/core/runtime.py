"""How a stage runs inside a KFP task: expected failures become one `domaintune:error` line and the
DESIGN.md §4 exit code (no traceback); anything unexpected keeps its traceback and exits 1."""
from __future__ import annotations

import json
import os
import sys

from domaintune.components.core.errors import DomaintuneError

ERROR_PREFIX = "domaintune:error "

# Air-gapped by default (our users' clusters, this machine); a deployment may override these.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}


def set_offline_defaults() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def run_stage(stage: str, fn, *args, **kwargs):
    set_offline_defaults()
    try:
        return fn(*args, **kwargs)
    except DomaintuneError as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(ERROR_PREFIX + json.dumps({"stage": stage, "code": exc.exit_code, "message": message}), flush=True)
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(exc.exit_code) from None


def csv_list(value: str) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def finetune_task(tokens_dir: str, model_dir: str, model, history, training_metrics, **params) -> dict:
    """The body both finetune components share (from the base model, or from the pretrained encoder)."""
    from domaintune.components.finetune.stage import FinetuneParams, run_finetune

    p = run_stage("finetune", FinetuneParams, **params)
    result = run_stage("finetune", run_finetune, tokens_dir, model_dir, model.path, history.path, p)
    pretrained = os.path.join(model_dir, "pretrain.json")
    if os.path.isfile(pretrained):  # the encoder came from the pretrain stage: keep its report with the run
        with open(pretrained) as f:
            result["pretrain"] = json.load(f)
        with open(history.path, "w") as f:
            json.dump(result, f, indent=2, default=str)
    for key in ("accuracy", "macro_f1"):
        training_metrics.log_metric(f"validation_{key}", result["validation"][key])
    training_metrics.log_metric("examples_per_second", result["examples_per_second"])
    with open(training_metrics.path, "w") as f:  # a real file, so local caching can hit
        json.dump(training_metrics.metadata, f)
    return result
