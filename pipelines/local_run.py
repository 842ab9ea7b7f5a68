"""`domaintune run`: the pipeline through kfp.local (SubprocessRunner in this environment, caching on).

kfp.local streams every task's raw output; we keep all of it in `DIR/pipeline.log` and show the user
which stage is running, its elapsed time, a progress bar during training and a final table.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
import uuid
import warnings

from domaintune.components.io import storage
from domaintune.components.core.errors import BadInput
from domaintune.components.core.runtime import ERROR_PREFIX, set_offline_defaults

PROGRESS_PREFIX = "domaintune:progress "
ANSI = re.compile(r"\x1b\[[0-9;]*m")
TASK_EVENT = re.compile(r"(?:Executing task '(?P<start>[\w-]+)')|(?:Task '(?P<end>[\w-]+)' finished with status (?P<status>\w+))"
                        r"|(?:Task (?P<cached>[\w-]+) cache hit)")


def runs_root() -> str:
    return os.path.abspath(os.environ.get("DOMAINTUNE_RUNS_DIR", "domaintune-runs"))


def new_run_id() -> str:
    return f"{dt.datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def code_fingerprint() -> str:
    """The local cache keys on the component shells and arguments, not on the stage code behind them;
    keying the cache directory on the installed code keeps an upgraded or edited install from reusing
    outputs of older code."""
    import domaintune.components as components
    import domaintune.pipelines as pipelines

    h = hashlib.sha256()
    for package in (components, pipelines):
        root = os.path.dirname(package.__file__)
        for folder, dirs, files in sorted(os.walk(root)):
            dirs.sort()
            for name in sorted(files):
                if name.endswith((".py", ".yaml", ".j2")):
                    with open(os.path.join(folder, name), "rb") as f:
                        h.update(os.path.relpath(os.path.join(folder, name), root).encode() + f.read())
    return h.hexdigest()[:16]


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


def preflight(values: dict) -> dict:
    """Cheap checks before any task starts, with the stages' own validators: bad parameters and
    missing local files fail in a second, not after ingest and tokenize have run."""
    from domaintune.components.core.params import from_values
    from domaintune.components.io.base_models import check_max_length, resolve_model

    built = {cls.__name__: from_values(cls, values) for cls in stage_params_classes()}
    ingest = built["IngestParams"]
    local_files = []
    for key in ("train_data", "validation_data", "test_data", "identity_terms", "domain_corpus"):
        uri = values[key] or (ingest.train_data if key == "train_data" else "")
        if uri and not uri.startswith("s3://"):
            if not os.path.isfile(uri):
                raise BadInput(f"--{key.replace('_', '-')} {uri}: no such file")
            local_files.append(uri)
    model_dir = resolve_model(values["base_model"], values["s3_endpoint_url"])
    if os.path.isdir(model_dir):
        check_max_length(values["max_length"], model_dir)
    resolved = dict(values)
    if not resolved["data_version"] and local_files:
        # kfp caches on arguments, not on the bytes behind a path: hash local inputs so edited data re-runs.
        resolved["data_version"] = "sha256:" + hashlib.sha256(
            "".join(storage.content_hash(f) for f in local_files).encode()).hexdigest()[:16]
    return resolved


class Monitor:
    """A stdout stand-in for kfp.local's output: everything goes to the log; task events, progress and
    error lines drive a compact display on stderr."""

    def __init__(self, log_path: str, verbose: bool):
        self.log = open(log_path, "a", encoding="utf-8", buffering=1)  # line-buffered: tail -f works
        self.verbose = verbose
        self.tty = sys.stderr.isatty() and not verbose
        self.buffer = ""
        self.stages: list[dict] = []
        self.error: dict | None = None
        self.current: dict | None = None
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.ticker = threading.Thread(target=self._tick, daemon=True)
        if self.tty:
            self.ticker.start()

    # file-like API used by print() and logging
    def write(self, text: str) -> int:
        self.log.write(text)
        if self.verbose:
            sys.__stdout__.write(text)
        self.buffer += text
        while "\n" in self.buffer:
            line, self.buffer = self.buffer.split("\n", 1)
            self._line(ANSI.sub("", line).strip())
        return len(text)

    def flush(self) -> None:
        self.log.flush()

    def isatty(self) -> bool:
        return False

    def _line(self, line: str) -> None:
        if line.startswith(PROGRESS_PREFIX) and self.current is not None:
            with contextlib.suppress(ValueError):
                self.current["progress"] = json.loads(line[len(PROGRESS_PREFIX):])
            return
        if line.startswith(ERROR_PREFIX):
            with contextlib.suppress(ValueError):
                self.error = json.loads(line[len(ERROR_PREFIX):])
            return
        match = TASK_EVENT.search(line)
        if not match:
            return
        with self.lock:
            if match["start"]:
                self.current = {"name": stage_name(match["start"]), "started": time.monotonic(), "status": "running"}
                self.stages.append(self.current)
                self._show()
            elif match["cached"]:
                self.stages.append({"name": stage_name(match["cached"]), "seconds": 0.0, "status": "cached"})
                self._print_done(self.stages[-1])
            elif match["end"] and self.current is not None:
                self.current["seconds"] = time.monotonic() - self.current["started"]
                self.current["status"] = "done" if match["status"] == "SUCCESS" else "failed"
                self._print_done(self.current)
                self.current = None

    def _tick(self) -> None:
        while not self.stop.wait(0.5):
            with self.lock:
                self._show()

    def _show(self) -> None:
        stage = self.current
        if stage is None:
            return
        elapsed = time.monotonic() - stage["started"]
        text = f"  ▸ {stage['name']:<9} {fmt_seconds(elapsed)}"
        prog = stage.get("progress") or {}
        if prog.get("total"):
            done = prog.get("step", 0) / prog["total"]
            bar = "█" * int(24 * done) + "·" * (24 - int(24 * done))
            text += f"  {bar} {prog.get('step', 0)}/{prog['total']} steps"
            if prog.get("loss") is not None:
                text += f"  loss {prog['loss']:.3f}"
        if self.tty:
            sys.__stderr__.write("\r\033[K" + text)
            sys.__stderr__.flush()
        elif prog == {}:
            sys.__stderr__.write(text.rstrip() + "\n")

    def _print_done(self, stage: dict) -> None:
        mark = {"done": "✓", "cached": "✓", "failed": "✗"}[stage["status"]]
        note = " (cached)" if stage["status"] == "cached" else ""
        prefix = "\r\033[K" if self.tty else ""
        sys.__stderr__.write(f"{prefix}  {mark} {stage['name']:<9} {fmt_seconds(stage['seconds'])}{note}\n")
        sys.__stderr__.flush()

    def close(self) -> None:
        self.stop.set()
        self.log.close()


def stage_name(task: str) -> str:
    """evaluate-op-2 -> evaluate: the tail after fine-tuning is wired once per pipeline branch."""
    return re.sub(r"-op(-\d+)?$", "", task)


def fmt_seconds(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def run_local(values: dict, output_dir: str | None, verbose: bool = False) -> tuple[dict | None, int, str]:
    """Run the pipeline; returns (summary or None, exit code, message)."""
    from kfp import local

    from domaintune.pipelines.training_pipeline import training_pipeline

    set_offline_defaults()
    values = preflight(values)
    run_id = new_run_id()
    out = os.path.abspath(output_dir or os.path.join(runs_root(), run_id))
    if os.path.exists(out) and os.listdir(out):
        raise BadInput(f"--output {out}: exists and is not empty (earlier results are never overwritten)")
    kfp_root = os.path.join(runs_root(), ".kfp")
    os.makedirs(kfp_root, exist_ok=True)
    log_path = os.path.join(kfp_root, f"{run_id}.log")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=kfp_root, raise_on_error=True,
               enable_caching=True, cache_root=os.path.join(kfp_root, f"cache-{code_fingerprint()}"))

    monitor = Monitor(log_path, verbose)
    handler = logging.StreamHandler(monitor)
    root_logger = logging.getLogger()
    old_level = root_logger.level
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.INFO)
    started = time.monotonic()
    failure = None
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(monitor):
            warnings.simplefilter("ignore")  # kfp warns per task about our (non-"python") image name
            task = training_pipeline(**values)
    except RuntimeError as exc:
        failure = str(exc)
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(old_level)
        monitor.close()
    seconds = time.monotonic() - started

    if failure is not None:
        if monitor.error:
            return None, int(monitor.error["code"]), f"{monitor.error['stage']}: {monitor.error['message']}"
        return None, 1, f"{ANSI.sub('', failure)}; full log: {log_path}"

    summary = storage.read_json(task.output)  # the summary's path, returned by register
    write_run_dir(out, summary, log_path, run_id, seconds, monitor.stages, values)
    os.remove(log_path)
    code = 0 if summary["status"] == "registered" else 3
    return summary, code, ""


def write_run_dir(out: str, summary: dict, log_path: str, run_id: str, seconds: float, stages: list[dict],
                  values: dict) -> None:
    """The run directory: copies (never links into the kfp.local cache, which later runs reuse) of the model,
    the deployable the gate judged, the evaluation, the reports, the card and the log; then summary.json."""
    with storage.atomic_dir(out) as tmp:
        artifacts = summary.pop("artifacts", {})
        shutil.copytree(artifacts["model"], os.path.join(tmp, "model"))
        if artifacts.get("export"):
            shutil.copytree(artifacts["export"], os.path.join(tmp, "deployable"))
        shutil.copytree(artifacts["evaluation"], os.path.join(tmp, "evaluation"))
        os.makedirs(os.path.join(tmp, "reports"))
        for name in ("data_report", "history"):
            shutil.copy(artifacts[name], os.path.join(tmp, "reports", f"{name}.json"))
        shutil.copy(log_path, os.path.join(tmp, "pipeline.log"))
        card = summary.pop("model_card", None)
        if card:
            with open(os.path.join(tmp, "model_card.md"), "w") as f:
                f.write(card)
        export = summary.get("export") or {}
        deployable = os.path.join(out, "deployable", export["deployable_file"]) if export.get("deployable_file") else None
        summary.update({"model_dir": os.path.join(out, "model"), "deployable_path": deployable,
                        "output_dir": out, "run_id": run_id, "wall_seconds": round(seconds, 1), "stages": [
                            {k: (round(v, 2) if k == "seconds" else v) for k, v in s.items() if k in ("name", "status", "seconds")}
                            for s in stages], "parameters": values})
        storage.write_json(os.path.join(tmp, "summary.json"), summary)
