"""The masked-LM model side of pretraining: the loss on masked positions only, perplexity on fixed masks, the
head-only warm-up that makes "before" fair when the checkpoint ships no MLM head, and the handoff to the
classifier (the base model's pooler carried over, and a check of what a classifier reload would create).

The loss is computed on the masked positions only (the vocabulary projection of the other ~85% of tokens is
skipped): the same loss as the library's, in fewer FLOPs.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np

from domaintune.components.pretrain.blocks import Blocks, make_collator
from domaintune.components.training.progress import progress

EVAL_MLM_PROBABILITY = 0.15  # perplexity masks: BERT's 15% token masking (80/10/10), fixed seed, same before/after
EVAL_MASK_SEED = 1234
HEAD_WARMUP_LR = 3e-3  # constant; on Reuters held-out ppl at 100/200 steps: 844/691 with 1e-3, 795/631 with 3e-3


def mlm_head(model):
    """The module mapping hidden states to vocabulary logits, where it can be applied to selected positions."""
    for name in ("cls", "lm_head"):  # BERT family; RoBERTa family
        head = getattr(model, name, None)
        if head is not None:
            return head
    return None


def masked_logits(model, batch: dict, whole_forward: bool = False):
    """Logits and targets at the masked positions only. The vocabulary projection is most of an MLM step's
    compute on a small encoder; skipping it for unmasked tokens gives the same loss ~1.4x faster here.
    WHOLE_FORWARD: through the model's own forward (a DistributedDataParallel wrapper all-reduces gradients
    from hooks on its forward; calling the encoder and the head beside it would skip them)."""
    labels = batch["labels"]
    selected = labels != -100
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    head = None if whole_forward else mlm_head(model)
    if head is None:
        return model(**inputs).logits[selected], labels[selected]
    hidden = model.base_model(**inputs)[0]
    return head(hidden[selected]), labels[selected]


def mlm_loss(model, batch: dict, whole_forward: bool = False):
    import torch

    logits, targets = masked_logits(model, batch, whole_forward)
    return torch.nn.functional.cross_entropy(logits.float(), targets)


def autocast(precision: str, device: str):
    import contextlib

    import torch

    if precision in ("bf16", "fp16"):
        return torch.autocast(device, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


def fixed_eval_batches(tokenizer, heldout: dict, batch_size: int) -> list[dict]:
    """Held-out blocks masked once, with a fixed seed: before and after are scored on the same masks."""
    collator = make_collator(tokenizer, EVAL_MLM_PROBABILITY, False, EVAL_MASK_SEED)
    data = Blocks(heldout)
    return [collator([data[i] for i in range(s, min(s + batch_size, len(data)))])
            for s in range(0, len(data), batch_size)]


def perplexity(model, batches: list[dict], precision: str, device: str) -> dict:
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode(), autocast(precision, device):
        for batch in batches:
            logits, targets = masked_logits(model, {k: v.to(device) for k, v in batch.items()})
            total += float(torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum"))
            count += int(targets.numel())
    model.train(was_training)
    loss = total / max(count, 1)
    return {"perplexity": round(math.exp(loss), 3), "loss": round(loss, 5), "masked_tokens": count}


def encoder_features(model, batches: list[dict], precision: str, device: str):
    """The frozen encoder's hidden states at the masked positions of BATCHES, and their targets: while only
    the head trains, held-out perplexity is the head applied to these (what `perplexity` computes, at the cost
    of one encoder pass for all the scores taken during the warm-up)."""
    import torch

    model.eval()
    hidden, targets = [], []
    with torch.inference_mode(), autocast(precision, device):
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            selected = batch["labels"] != -100
            out = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
            hidden.append(out[selected])
            targets.append(batch["labels"][selected])
    model.train()
    return torch.cat(hidden), torch.cat(targets)


def head_perplexity(model, features, precision: str, device: str) -> dict:
    import torch

    hidden, targets = features
    head = mlm_head(model)
    was_training = head.training
    head.eval()
    total = 0.0
    with torch.inference_mode(), autocast(precision, device):
        for s in range(0, len(targets), 2048):
            logits = head(hidden[s:s + 2048])
            total += float(torch.nn.functional.cross_entropy(logits.float(), targets[s:s + 2048], reduction="sum"))
    head.train(was_training)
    loss = total / max(len(targets), 1)
    return {"perplexity": round(math.exp(loss), 3), "loss": round(loss, 5), "masked_tokens": int(len(targets))}


def head_warmup(model, tokenizer, train: dict, steps: int, batch_size: int, seed: int, precision: str,
                device: str, features, total_steps: int) -> dict:
    """Train the MLM head alone (encoder frozen, in eval mode, no gradients through it) so that "before"
    is the base encoder's perplexity with a fitted head rather than a random one. Scored at half and at the
    end of the warm-up: a large gap between the two means the head had not converged."""
    import torch

    head = mlm_head(model)
    frozen = {n: prm.requires_grad for n, prm in model.named_parameters()}
    trainable = _train_only_the_head(model, head)
    trained = [n for n, t in model.named_parameters() if t.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=HEAD_WARMUP_LR, weight_decay=0.0)
    batches = _warmup_batches(tokenizer, train, batch_size, seed, device)
    started, losses, half = time.monotonic(), [], None
    model.base_model.eval()
    head.train()
    for step in range(1, steps + 1):
        losses.append(_head_step(model, head, next(batches), optimizer, precision, device))
        if step % max(1, steps // 20) == 0 or step == steps:
            progress("pretrain", step=step, total=total_steps, loss=round(float(np.mean(losses[-10:])), 4),
                     phase="head_warmup")
        if step == steps // 2 and steps >= 2:
            half = head_perplexity(model, features, precision, device)
    for n, prm in model.named_parameters():
        prm.requires_grad_(frozen[n])
    model.train()
    return {"steps": steps, "learning_rate": HEAD_WARMUP_LR, "trained": trained,
            "loss_first": round(float(np.mean(losses[:10])), 4) if losses else None,
            "loss_last": round(float(np.mean(losses[-10:])), 4) if losses else None,
            "perplexity_at_half": half, "seconds": round(time.monotonic() - started, 2)}


def _train_only_the_head(model, head) -> list:
    """Freeze everything, then unfreeze the head's own parameters (a decoder weight tied to the encoder's
    embeddings stays frozen). Returns the parameters to train."""
    for prm in model.parameters():
        prm.requires_grad_(False)
    encoder_ids = {id(t) for t in model.base_model.parameters()}
    trainable = [t for t in head.parameters() if id(t) not in encoder_ids]
    for t in trainable:
        t.requires_grad_(True)
    return trainable


def _warmup_batches(tokenizer, train: dict, batch_size: int, seed: int, device: str):
    """Endless masked batches of the train blocks, in seeded shuffles (seed + 1), on DEVICE."""
    collator = make_collator(tokenizer, EVAL_MLM_PROBABILITY, False, seed + 1)
    data = Blocks(train)
    rng = np.random.default_rng(seed + 1)
    order = np.array([], dtype=np.int64)
    while True:
        if len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(len(data))])
        idx, order = order[:batch_size], order[batch_size:]
        yield {k: v.to(device) for k, v in collator([data[int(i)] for i in idx]).items()}


def _head_step(model, head, batch: dict, optimizer, precision: str, device: str) -> float:
    """One optimizer step of the head on the frozen encoder's hidden states at the masked positions."""
    import torch

    selected = batch["labels"] != -100
    with torch.no_grad(), autocast(precision, device):
        hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
    with autocast(precision, device):
        logits = head(hidden[selected])
    loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"][selected])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def carried_weights(model, base_dir: str) -> dict:
    """Weights of the base checkpoint that the MLM model does not hold (BERT's pooler): saved with the
    adapted model so a reload as a classifier uses the base model's pooler instead of a random one."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    own = model.state_dict()
    prefix = model.base_model_prefix
    files = [os.path.join(base_dir, f) for f in os.listdir(base_dir) if f.endswith(".safetensors")]
    if files:
        base_sd = {}
        for f in files:
            base_sd.update(load_file(f))
    else:  # e.g. a pytorch_model.bin checkpoint: let the library read it
        base_sd = AutoModel.from_pretrained(base_dir).state_dict()
    extra = {}
    for key, tensor in base_sd.items():
        name = key if key.startswith(prefix + ".") else f"{prefix}.{key}"
        if name not in own and name.split(".")[1] == "pooler":
            extra[name] = tensor.detach().clone().contiguous()
    return extra


def classifier_reload_check(model_dir: str) -> dict:
    """Which weights a reload as AutoModelForSequenceClassification would create new (should be only the
    classifier) and which it would ignore (the MLM head), read from the saved files."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForSequenceClassification

    saved = set()
    for f in os.listdir(model_dir):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(model_dir, f), "pt") as fh:
                saved.update(fh.keys())
    config = AutoConfig.from_pretrained(model_dir, num_labels=2)
    with torch.device("meta"):
        expected = set(AutoModelForSequenceClassification.from_config(config).state_dict())
    return {"new_on_classifier_load": sorted(expected - saved), "unused_on_classifier_load": sorted(saved - expected)}


def _trainer_class():
    from transformers import Trainer

    class MaskedLMTrainer(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.model_accepts_loss_kwargs = False  # mlm_loss is a mean: see training/trainer.py

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # model is the DDP wrapper in a distributed run: its forward, not the encoder beside it
            loss = mlm_loss(model, inputs, whole_forward=model is not self.model)
            return (loss, None) if return_outputs else loss

    return MaskedLMTrainer
