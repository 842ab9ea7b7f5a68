"""Progress lines a training stage prints (the CLI draws its progress bar from them; on a cluster they are
plain, greppable log lines), and the Trainer callback that prints them."""
from __future__ import annotations

import json
import time


def progress(stage: str, **fields) -> None:
    """One machine-readable line per update: the CLI draws its progress bar from these; on a cluster
    they are plain, greppable log lines."""
    print(f"domaintune:progress {json.dumps({'stage': stage, **fields})}", flush=True)


def progress_callback(stage: str, offset: int = 0, total: int | None = None, **fields):
    """A Trainer callback that prints `progress` lines: about 100 per run, plus each evaluation. `offset`
    and `total` place this Trainer's steps inside a longer stage (pretrain runs a head warm-up first). In a
    distributed run only the main process prints (the others train the same steps)."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def __init__(self):
            self.started = time.monotonic()
            self.every = 1
            self.quiet = False

        def _total(self, state) -> int:
            return total if total is not None else state.max_steps

        def on_train_begin(self, args, state, control, **kwargs):
            self.quiet = not state.is_world_process_zero
            if self.quiet:
                return
            self.every = max(1, state.max_steps // 100)
            progress(stage, step=offset, total=self._total(state), **fields)

        def on_step_end(self, args, state, control, **kwargs):
            if self.quiet:
                return
            if state.global_step % self.every == 0 or state.global_step == state.max_steps:
                loss = next((h["loss"] for h in reversed(state.log_history) if "loss" in h), None)
                progress(stage, step=offset + state.global_step, total=self._total(state), loss=loss, **fields,
                         elapsed=round(time.monotonic() - self.started, 1))

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if metrics and not self.quiet:
                progress(stage, step=offset + state.global_step, total=self._total(state), **fields,
                         **{k: v for k, v in metrics.items() if k.startswith("eval_") and isinstance(v, float)
                            and not k.endswith(("_runtime", "_per_second"))})

    return ProgressCallback()
