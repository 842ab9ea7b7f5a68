"""Task plug-ins. `get_task(name)` for the `--task` parameter; `task_of(directory)` for any artifact
directory a stage receives (splits, tokens, a model, an ONNX export), which records the task it was made for.

Adding a task: a module here with a `Task` subclass (tasks/base.py lists what it owns), one line in `TASKS`.
"""
from __future__ import annotations

import json
import os

from domaintune.components.core.errors import BadInput
from domaintune.components.tasks.base import Task
from domaintune.components.tasks.classification import Classification
from domaintune.components.tasks.seq2seq import Seq2Seq
from domaintune.components.tasks.token_classification import TokenClassification

TASKS: dict[str, type[Task]] = {Classification.name: Classification, TokenClassification.name: TokenClassification,
                                Seq2Seq.name: Seq2Seq}
DEFAULT_TASK = Classification.name
# The files that carry the task name: label_map.json (splits, tokens), domaintune.json (model, ONNX export).
TASK_FILES = ("domaintune.json", "label_map.json")


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise BadInput(f"--task must be one of {', '.join(TASKS)} (got {name!r})")
    return TASKS[name]()


def task_of(directory: str) -> Task:
    """The task an artifact directory was made for; directories from before tasks existed are classification."""
    for name in TASK_FILES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return get_task(json.load(f).get("task") or DEFAULT_TASK)
    return get_task(DEFAULT_TASK)


__all__ = ["TASKS", "DEFAULT_TASK", "Task", "get_task", "task_of"]
