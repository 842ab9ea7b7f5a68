"""The Trainer as both training stages run it: timed (where the time inside `train()` goes), and the
logged evaluation of the best checkpoint."""
from __future__ import annotations

import time


def timed_trainer_class(base=None):
    """The Trainer (or `base`, a subclass such as Seq2SeqTrainer), plus where its time goes: evaluation and checkpoint time inside `train()` (so the
    history can give the pure training throughput beside the stage's), and the real and padded tokens
    of the training batches (padding efficiency, FLOP counts for bench/mfu.py)."""
    from transformers import Trainer

    class TimedTrainer(base or Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # The task heads compute a mean loss and ignore `num_items_in_batch`, though their forward takes
            # **kwargs: left True, the Trainer multiplies the loss by the number of processes (2x gradients and
            # logged loss under DDP) and skips its division by the accumulation steps.
            self.model_accepts_loss_kwargs = False
            self.timing = {"eval_seconds": 0.0, "checkpoint_seconds": 0.0, "eval_cpu_seconds": 0.0,
                           "checkpoint_cpu_seconds": 0.0}
            # padded_squared: sum over batches of batch size x padded length^2 (attention FLOPs)
            self.train_tokens = {"real": 0, "padded": 0, "padded_squared": 0}

        def _timed(self, key, fn, *args, **kwargs):
            wall, cpu = time.monotonic(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.timing[f"{key}_seconds"] += time.monotonic() - wall
                self.timing[f"{key}_cpu_seconds"] += time.process_time() - cpu

        def evaluate(self, *args, **kwargs):
            return self._timed("eval", super().evaluate, *args, **kwargs)

        def _save_checkpoint(self, *args, **kwargs):
            return self._timed("checkpoint", super()._save_checkpoint, *args, **kwargs)

        def _load_best_model(self, *args, **kwargs):
            return self._timed("checkpoint", super()._load_best_model, *args, **kwargs)

        def training_step(self, model, inputs, *args, **kwargs):
            mask = inputs.get("attention_mask") if hasattr(inputs, "get") else None
            if mask is not None and mask.device.type == "cpu":  # never a device sync for a statistic
                self.train_tokens["real"] += int(mask.sum())
                self.train_tokens["padded"] += mask.numel()
                if mask.dim() == 2:
                    self.train_tokens["padded_squared"] += mask.shape[0] * mask.shape[1] ** 2
            return super().training_step(model, inputs, *args, **kwargs)

    return TimedTrainer


def best_evaluation(state, metric: str) -> dict | None:
    """The logged evaluation of the checkpoint that load_best_model_at_end restored: the same numbers a
    second `trainer.evaluate()` would compute, without another pass over the validation set."""
    step = getattr(state, "best_global_step", None)
    if not step:
        return None
    for entry in reversed(state.log_history):
        if entry.get("step") == step and f"eval_{metric}" in entry:
            return entry
    return None
