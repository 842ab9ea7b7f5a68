"""What a fine-tuning run reports (`history.json`): its parameters, where the time went, throughput,
tokens, the best validation metrics and the Trainer's log."""
from __future__ import annotations

import os
from dataclasses import asdict

from domaintune.components.training.checkpoints import resumed_step


def timing(trainer, clock: dict) -> dict:
    inside = dict(trainer.timing)  # evaluation and checkpoint time within train()
    step_seconds = clock["train_seconds"] - inside["eval_seconds"] - inside["checkpoint_seconds"]
    return {"setup_seconds": round(clock["started"] - clock["stage_started"], 2),
            "train_seconds": round(clock["train_seconds"], 2),
            "eval_seconds": round(inside["eval_seconds"], 2),
            "checkpoint_seconds": round(inside["checkpoint_seconds"], 2),
            "step_seconds": round(step_seconds, 2),
            # process CPU time (all threads): moves far less than wall time when the machine is shared
            "train_cpu_seconds": round(clock["train_cpu_seconds"], 2),
            "step_cpu_seconds": round(clock["train_cpu_seconds"] - inside["eval_cpu_seconds"]
                                      - inside["checkpoint_cpu_seconds"], 2)}


def token_counts(trainer) -> dict:
    t = trainer.train_tokens
    return {**t, "padding_fraction": round(1 - t["real"] / t["padded"], 4) if t["padded"] else None}


def examples_in_steps(steps: int, train_size: int, batch: int) -> int:
    """Examples in the first STEPS optimizer steps of epochs of TRAIN_SIZE examples in batches of BATCH (the
    last batch of an epoch is the short one)."""
    if steps <= 0 or train_size <= 0:
        return 0
    per_epoch = max(1, -(-train_size // batch))
    epochs, rest = divmod(steps, per_epoch)
    return epochs * train_size + min(rest * batch, train_size)


def build_history(task, p, trainer, result, best: dict, clock: dict, resume: str | None, train_size: int,
                  resolved: dict) -> dict:
    import torch

    train_seconds = clock["train_seconds"]
    spent = timing(trainer, clock)
    # all attempts together: what the model has seen
    examples_seen = int(round(result.metrics.get("epoch", p.epochs) * train_size))
    # this attempt alone (a resumed run skips what its checkpoint already did): the throughput's numerator,
    # since train_seconds is this attempt's time
    start_step = resumed_step(resume)
    steps_trained = max(0, trainer.state.global_step - start_step)
    args = trainer.args
    batch = args.train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
    examples_trained = (max(0, examples_seen - examples_in_steps(start_step, train_size, batch)) if resume
                        else examples_seen)
    validation = {key[len("eval_"):]: value for key, value in best.items()
                  if key.startswith("eval_") and isinstance(value, (int, float))
                  and key not in ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")}
    return {
        "params": {**asdict(p), "precision_used": resolved["precision_used"], "max_length": resolved["max_length"]},
        "task": task.name,
        "primary_metric": task.primary_metric,
        "parameters": resolved["parameters"],
        "cheap_cpu_dropout_modules": resolved["cheap_cpu_dropout_modules"],
        "train_batches": resolved["train_batches"],
        "train_examples": train_size,
        "examples_seen": examples_seen,
        "examples_trained": examples_trained,
        "steps_trained": steps_trained,
        "train_seconds": round(train_seconds, 2),
        # this attempt's examples over this attempt's time (after a resume: the steps it trained, not all)
        "examples_per_second": round(examples_trained / train_seconds, 2) if train_seconds else None,
        # train_seconds is trainer.train(): the optimizer steps plus the per-epoch evaluations and
        # checkpoints; step_seconds is the steps alone (the number to compare with a bare training loop).
        "timing": spent,
        "examples_per_second_steps": (round(examples_trained / spent["step_seconds"], 2)
                                      if spent["step_seconds"] > 0 and examples_trained else None),
        "train_tokens": token_counts(trainer),
        "epochs_run": result.metrics.get("epoch"),
        "global_steps": trainer.state.global_step,
        "stopped_early": trainer.state.global_step < trainer.state.max_steps,
        "best_checkpoint": trainer.state.best_model_checkpoint and os.path.basename(trainer.state.best_model_checkpoint),
        "validation": validation,
        "resumed_from": resume,
        "resumed_step": start_step,
        "log_history": trainer.state.log_history,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
