"""What the server serves: where the model comes from (`Source`), one loaded version (`LoadedModel`) and
the holder that swaps versions atomically (`ModelHolder`).

A request takes a reference to the current model when it starts (`acquire`) and gives it back when it
has its answer (`release`); every text of the request runs on that model, and its response names that
model's version. `swap` makes a new, already warmed-up version current in one step under a lock; the old
one is retired and closed (session dropped, downloaded files deleted) when its last request releases it.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from domaintune.components.core.errors import BadInput

log = logging.getLogger("domaintune.serving")
WARM_UP_TEXTS = ["warm up", "a longer warm-up text, so that the session also sees a sequence of some length " * 4]


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


@dataclass
class Source:
    """The --model reference: a registry version or alias, or a directory (a run's, or an export)."""
    ref: str
    name: str
    tracking_uri: str = ""
    alias: str | None = None
    version: str | None = None
    directory: str | None = None

    @classmethod
    def parse(cls, ref: str, tracking_uri: str = "", name: str = "") -> "Source":
        if ref.startswith("models:/"):
            from domaintune.components.registry.client import parse_ref

            registered, alias, version = parse_ref(ref)
            return cls(ref, name or registered, tracking_uri, alias=alias, version=version)
        if not os.path.exists(ref):
            raise BadInput(f"--model {ref}: no such file or directory")
        directory, version, registered = os.path.abspath(ref), "local", ""
        summary_path = os.path.join(directory, "summary.json")
        if os.path.isfile(summary_path):  # a `domaintune run` output directory
            with open(summary_path, encoding="utf-8") as f:
                summary = json.load(f)
            if summary.get("status") != "registered":
                raise BadInput(f"--model {ref}: the gate rejected this run's candidate (status "
                               f"{summary.get('status')!r}); serve a blessed run or a registered version")
            registry = summary.get("registry") or {}
            registered, version = registry.get("model_name") or "", str(registry.get("version") or "local")
            directory = os.path.join(directory, "deployable")
        if not os.path.isdir(directory):
            raise BadInput(f"--model {ref}: not a run directory (no deployable/) or an ONNX export directory")
        return cls(ref, name or _safe_name(registered or os.path.basename(directory.rstrip("/"))), tracking_uri,
                   version=version, directory=directory)

    @property
    def registry_name(self) -> str:
        from domaintune.components.registry.client import parse_ref

        return parse_ref(self.ref)[0]

    def wanted_version(self) -> str | None:
        """The version to serve now: where the alias points (None: nowhere), the pinned one, or "local"."""
        if self.alias is None:
            return self.version
        from domaintune.components.registry.client import alias_version, client

        found = alias_version(client(self.tracking_uri), self.registry_name, self.alias)
        return None if found is None else str(found.version)


@dataclass(eq=False)
class LoadedModel:
    name: str
    version: str
    task: object
    predictor: object
    directory: str
    scratch: str | None = None
    load_seconds: float = 0.0
    refs: int = 0
    retired: bool = False
    labels: list[str] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    input_name: str = "text"

    @property
    def file(self) -> str:
        return os.path.basename(getattr(self.predictor, "model_path", "") or self.directory)

    def predict(self, texts: list[str], batch_size: int):
        return self.predictor.predict(texts, batch_size=batch_size)

    def answers(self, outputs, texts: list[str], details: bool = False) -> list[dict]:
        return self.task.serving_answers(self.predictor, outputs, texts, details)

    def close(self) -> None:
        close = getattr(self.predictor, "close", None)
        if close is not None:
            close()
        self.predictor = None
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)


def load_model(source: Source, version: str, intra_op_threads: int | None, batch_size: int) -> LoadedModel:
    """Download (registry), load and warm up one version. Blocking: the server runs it on a worker thread."""
    from domaintune.components.inference.onnx_backend import physical_cores
    from domaintune.components.tasks import task_of

    started = time.monotonic()
    scratch, directory = None, source.directory
    if directory is None:
        from domaintune.components.registry.client import resolve_model_ref

        scratch = tempfile.mkdtemp(prefix=f"domaintune-serve-{_safe_name(source.name)}-v{version}-")
        try:
            directory = resolve_model_ref(f"models:/{source.registry_name}/{version}", scratch, source.tracking_uri)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    try:
        if not os.path.isfile(os.path.join(directory, "model.onnx")):
            raise BadInput(f"--model {source.ref}: version {version} has no ONNX export (domaintune serve runs the "
                           "ONNX deployable the export stage wrote; register a version made with the export)")
        task = task_of(directory)
        predictor = task.serving_predictor(directory, intra_op_threads)
        for _ in range(2):
            predictor.predict(WARM_UP_TEXTS, batch_size=batch_size)
    except BaseException:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    labels = list(getattr(predictor, "labels", []))
    model = LoadedModel(source.name, str(version), task, predictor, directory, scratch,
                        round(time.monotonic() - started, 3), labels=labels, outputs=task.serving_outputs(labels),
                        input_name=task.pyfunc_signature()[0][0][1])
    log.info("model_ready", extra={"fields": {
        "model": model.name, "version": model.version, "file": model.file, "task": task.name,
        "load_seconds": model.load_seconds, "intra_op_threads": intra_op_threads or physical_cores(),
        "torch_imported": "torch" in sys.modules}})
    return model


class ModelHolder:
    def __init__(self):
        self._lock = threading.Lock()
        self.current: LoadedModel | None = None

    def acquire(self) -> LoadedModel | None:
        with self._lock:
            model = self.current
            if model is not None:
                model.refs += 1
            return model

    def release(self, model: LoadedModel) -> None:
        with self._lock:
            model.refs -= 1
            drop = model.retired and model.refs == 0
        if drop:
            self._drop(model)

    def swap(self, new: LoadedModel) -> LoadedModel | None:
        """Make NEW current; the previous model is closed now if idle, else by its last `release`."""
        with self._lock:
            old, self.current = self.current, new
            drop = False
            if old is not None:
                old.retired = True
                drop = old.refs == 0
        if drop:
            self._drop(old)
        return old

    @staticmethod
    def _drop(model: LoadedModel) -> None:
        log.info("model_released", extra={"fields": {"model": model.name, "version": model.version}})
        model.close()
