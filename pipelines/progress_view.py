"""What `domaintune run` shows while kfp.local runs: everything goes to the log; task events, progress and
error lines drive a compact display on stderr (each stage with its elapsed time, a progress bar in training)."""
from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
import time

from domaintune.components.core.runtime import ERROR_PREFIX

PROGRESS_PREFIX = "domaintune:progress "
ANSI = re.compile(r"\x1b\[[0-9;]*m")
TASK_EVENT = re.compile(r"(?:Executing task '(?P<start>[\w-]+)')|(?:Task '(?P<end>[\w-]+)' finished with status (?P<status>\w+))"
                        r"|(?:Task (?P<cached>[\w-]+) cache hit)")


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
