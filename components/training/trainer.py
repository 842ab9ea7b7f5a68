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
        def __init__(self, *args, train_collator=None, **kwargs):
            super().__init__(*args, **kwargs)
            # the training batches' collator where it differs from evaluation's (packing.PackingCollator:
            # evaluation and prediction keep one padded row per example)
            self.train_collator = train_collator
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

        def _get_train_sampler(self, *args, **kwargs):
            sampler = super()._get_train_sampler(*args, **kwargs)
            return shuffled_batches(sampler)

        def get_train_dataloader(self):
            if self.train_collator is None:
                return super().get_train_dataloader()
            evaluation, self.data_collator = self.data_collator, self.train_collator
            try:
                return super().get_train_dataloader()
            finally:
                self.data_collator = evaluation

        def training_step(self, model, inputs, *args, **kwargs):
            real = inputs.pop("real_tokens", None) if hasattr(inputs, "pop") else None
            mask = inputs.get("attention_mask") if hasattr(inputs, "get") else None
            if real is not None:  # packed: rows of real tokens and a little padding, attention per row
                rows, width = inputs["input_ids"].shape
                self.train_tokens["real"] += int(real)
                self.train_tokens["padded"] += rows * width
                self.train_tokens["padded_squared"] += rows * width ** 2
            elif mask is not None and mask.device.type == "cpu":  # never a device sync for a statistic
                self.train_tokens["real"] += int(mask.sum())
                self.train_tokens["padded"] += mask.numel()
                if mask.dim() == 2:
                    self.train_tokens["padded_squared"] += mask.shape[0] * mask.shape[1] ** 2
            return super().training_step(model, inputs, *args, **kwargs)

    return TimedTrainer


def shuffled_batches(sampler):
    """The Trainer's length-grouped sampler with its batches in random order (anything else is returned as is).

    Hugging Face's LengthGroupedSampler cuts a shuffled epoch into mega-batches of 50 batches and sorts each
    by length, longest first: the batches come in a saw-tooth, 50 steps from long sentences down to one-word
    phrases, then again. Measured on 4,000 SST-2 rows (1 epoch, batch 16): dev accuracy 0.787 against 0.831
    with random batches (bench/BENCHMARKS.md "Accuracy at every data size"). The same batches in random
    order keep the padding saving (each batch is still of like lengths) and lose the saw-tooth; the longest
    batch stays first (an out-of-memory error shows at step 1)."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class ShuffledLengthGroupedSampler(LengthGroupedSampler):
        def __iter__(self):
            # Under DDP each rank takes every world_size-th per-device batch of this one sequence, so an
            # optimizer step is world_size consecutive batches: they move together, and a step holds the same
            # examples as one process at the same global batch.
            unit = self.batch_size * _world_size()
            return iter(length_grouped_in_random_order(self.lengths, unit, self.generator))

    if type(sampler) is LengthGroupedSampler:
        sampler.__class__ = ShuffledLengthGroupedSampler
    return sampler


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def length_grouped_in_random_order(lengths, batch_size: int, generator=None) -> list[int]:
    """Hugging Face's length-grouped indices, cut into batches of BATCH_SIZE, the batches shuffled but the
    first (the longest) kept first."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    indices = get_length_grouped_indices(lengths, batch_size, generator=generator)
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    order = [0] + [1 + int(i) for i in torch.randperm(len(batches) - 1, generator=generator)] if batches else []
    return [i for b in order for i in batches[b]]


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
