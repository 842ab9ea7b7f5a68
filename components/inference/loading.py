"""Load the predictor for any model reference: the task recorded beside the model decides which."""
from __future__ import annotations

import os

from domaintune.components.core.errors import BadInput
from domaintune.components.tasks import task_of


def model_home(ref: str) -> str:
    """The directory whose files describe REF (a model or export directory, or the folder of an .onnx file)."""
    return os.path.dirname(os.path.abspath(ref)) if ref.endswith(".onnx") else ref


def load_predictor(ref: str):
    if not os.path.exists(ref):
        raise BadInput(f"--model {ref}: no such file or directory")
    return task_of(model_home(ref)).load_predictor(ref)
