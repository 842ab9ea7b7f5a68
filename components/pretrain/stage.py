"""Pretrain (optional): domain-adaptive masked-LM continued pretraining of the base encoder (DAPT / TAPT).

In: an unlabeled domain corpus (`--domain-corpus`: plain text with one document per line, or CSV/TSV/JSONL/
Parquet with a text column; local or s3://) and/or the training split's own texts (`--pretrain-on-train-text`,
task-adaptive pretraining), and the base model. Documents are tokenized, joined with the separator token and
cut into full `max_length` blocks, so no step computes on padding. A seeded slice of whole documents is held
out for perplexity.

"Before" is measured fairly: the packaged MiniLM ships no MLM head, so its perplexity with a random head says
nothing. When the head is missing from the checkpoint it is first trained alone on the corpus with the encoder
frozen (`mlm_head_warmup_steps`), and that head's held-out perplexity is "before"; the same fixed masks give
"after". The loss is computed on the masked positions only (the vocabulary projection of the other ~85% of
tokens is skipped): the same loss as the library's, in fewer FLOPs.

Out: a Hugging Face model directory (MLM weights + the base model's pooler, carried over so a reload as a
classifier initialises nothing but the classifier; tokenizer beside it; `pretrain.json`), and the report.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from domaintune.components.core.errors import BadInput, fraction, one_of, positive, require
from domaintune.components.io import storage, tables
from domaintune.components.io.base_models import PACKAGED_MODEL
from domaintune.components.training.checkpoints import last_checkpoint
from domaintune.components.training.precision import PRECISIONS, pick_precision
from domaintune.components.training.progress import progress, progress_callback

HELDOUT_FRACTION = 0.05  # of the corpus tokens, in whole documents ...
MAX_HELDOUT_BLOCKS = 256  # ... capped: ~32k tokens at block 128, ~4.8k masked tokens scored
EVAL_MLM_PROBABILITY = 0.15  # perplexity masks: BERT's 15% token masking (80/10/10), fixed seed, same before/after
EVAL_MASK_SEED = 1234
HEAD_WARMUP_LR = 3e-3  # constant; on Reuters held-out ppl at 100/200 steps: 844/691 with 1e-3, 795/631 with 3e-3
WARMUP_RATIO = 0.06
WEIGHT_DECAY = 0.01
MIN_SAVE_STEPS = 50  # checkpoint every max(this, steps/4) steps (at most 500): a few per run, none in short ones


@dataclass
class PretrainParams:
    base_model: str = PACKAGED_MODEL
    s3_endpoint_url: str = ""
    domain_corpus: str = ""
    pretrain_on_train_text: bool = False
    corpus_text_column: str = "text"
    mlm_epochs: float = 1.0
    mlm_max_steps: int = 300
    mlm_learning_rate: float = 1e-4
    mlm_probability: float = 0.15
    whole_word_masking: bool = False
    mlm_batch_size: int = 32
    mlm_head_warmup_steps: int = 200
    max_length: int = 128
    precision: str = "auto"
    seed: int = 42
    checkpoint_dir: str = ""

    @property
    def wanted(self) -> bool:
        """Whether the pipeline pretrains at all (DAPT on a corpus, or TAPT on the training texts)."""
        return bool(self.domain_corpus) or self.pretrain_on_train_text

    def __post_init__(self):
        require(bool(self.corpus_text_column), "--corpus-text-column must not be empty")
        positive("mlm-epochs", self.mlm_epochs, kind=float)
        require(not isinstance(self.mlm_max_steps, bool) and isinstance(self.mlm_max_steps, int)
                and self.mlm_max_steps >= 0,
                f"--mlm-max-steps must be a non-negative integer, 0 for no cap (got {self.mlm_max_steps!r})")
        positive("mlm-learning-rate", self.mlm_learning_rate, kind=float)
        fraction("mlm-probability", self.mlm_probability, allow_zero=False)
        positive("mlm-batch-size", self.mlm_batch_size)
        require(not isinstance(self.mlm_head_warmup_steps, bool) and isinstance(self.mlm_head_warmup_steps, int)
                and self.mlm_head_warmup_steps >= 0,
                f"--mlm-head-warmup-steps must be a non-negative integer (got {self.mlm_head_warmup_steps!r})")
        positive("max-length", self.max_length)
        require(self.max_length >= 8, f"--max-length must be at least 8 for masked-LM blocks (got {self.max_length})")
        require(self.precision in PRECISIONS,
                f"--precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")


# ---------------------------------------------------------------------------------------------- corpus


def read_corpus(uri: str, text_column: str, endpoint_url: str = "") -> tuple[list[str], str]:
    """Documents from a text file (one per line) or a table's text column; every failure names the file."""
    if any(uri.lower().endswith(e) for e in tables.READERS):
        frame, sha = tables.read_table(uri, endpoint_url)
        if text_column not in frame.columns:
            raise BadInput(f"{uri}: no column {text_column!r} (columns: {', '.join(map(str, frame.columns))}); "
                           f"set --corpus-text-column")
        values = frame[text_column].tolist()
        what = f"column {text_column!r}"
    else:
        path = storage.fetch(uri, endpoint_url)
        if os.path.isdir(path):
            raise BadInput(f"{uri}: is a directory, expected a file")
        with open(path, "rb") as f:
            raw = f.read()
        if not raw:
            raise BadInput(f"{uri}: empty file")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[:exc.start].count(b"\n") + 1
            raise BadInput(f"{uri}: not valid UTF-8 at byte {exc.start} (line {line}); "
                           f"expected UTF-8 text, one document per line") from None
        values = text.removeprefix("\ufeff").split("\n")
        what = "line"
        sha = storage.content_hash(path)
    docs = _clean_docs(values)
    if not docs:
        raise BadInput(f"{uri}: no text (every {what} is blank)")
    return docs, sha


def _clean_docs(values) -> list[str]:
    docs = []
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        s = " ".join(str(v).split())  # collapse whitespace (tabs, \r, runs of spaces)
        if s:
            docs.append(s)
    return docs


def gather_corpus(splits_dir: str, p: PretrainParams) -> tuple[list[str], dict]:
    docs, sources = [], []
    if p.domain_corpus:
        corpus, sha = read_corpus(p.domain_corpus, p.corpus_text_column, p.s3_endpoint_url)
        docs += corpus
        sources.append({"kind": "domain_corpus", "uri": p.domain_corpus, "sha256": sha, "documents": len(corpus)})
    if p.pretrain_on_train_text:
        path = os.path.join(splits_dir, "train.parquet")
        if not os.path.isfile(path):
            raise BadInput(f"{path}: no such file (--pretrain-on-train-text reads the ingest stage's train split)")
        import pandas as pd

        train = _clean_docs(pd.read_parquet(path, columns=["text"])["text"].tolist())
        require(bool(train), f"{path}: the train split has no text")
        docs += train
        sources.append({"kind": "train_text", "uri": path, "sha256": storage.content_hash(path), "documents": len(train)})
    return docs, {"sources": sources, "documents": len(docs)}


# ---------------------------------------------------------------------------------------------- blocks


def special_template(tokenizer) -> tuple[list[int], list[int], int | None]:
    """Prefix and suffix ids the tokenizer puts around one sequence ([CLS] … [SEP] for BERT), and the id that
    separates documents inside a block (the separator, or EOS)."""
    body = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(body) + 1):
        if full[i:i + len(body)] == body:
            prefix, suffix = full[:i], full[i + len(body):]
            break
    else:  # pragma: no cover - a tokenizer that rewrites the text when adding special tokens
        prefix, suffix = [], []
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    return prefix, suffix, sep


def tokenize_docs(tokenizer, docs: list[str], offsets: bool) -> dict:
    saved = tokenizer.model_max_length
    tokenizer.model_max_length = 1 << 30  # whole documents; blocks cut them, nothing is truncated
    try:
        enc = tokenizer(docs, add_special_tokens=False, return_offsets_mapping=offsets,
                        return_attention_mask=False, return_token_type_ids=False)
    finally:
        tokenizer.model_max_length = saved
    return enc


def pack_blocks(enc: dict, idx, tokenizer, max_length: int, offsets: bool) -> dict[str, np.ndarray]:
    """Concatenate the documents IDX (separator between them) and cut full blocks of MAX_LENGTH tokens,
    special tokens included. The remainder shorter than a block is dropped."""
    prefix, suffix, sep = special_template(tokenizer)
    body = max_length - len(prefix) - len(suffix)
    ids, offs = [], []
    for i in idx:
        ids.extend(enc["input_ids"][i])
        if sep is not None:
            ids.append(sep)
        if offsets:
            offs.extend(enc["offset_mapping"][i])
            if sep is not None:
                offs.append((0, 0))
    n = len(ids) // body
    ids_arr = np.asarray(ids[: n * body], dtype=np.int64).reshape(n, body)
    special = np.zeros((n, body), dtype=np.int64)
    if sep is not None:
        special[ids_arr == sep] = 1
    out = {
        "input_ids": np.concatenate([np.tile(prefix, (n, 1)), ids_arr, np.tile(suffix, (n, 1))], axis=1).astype(np.int64),
        "special_tokens_mask": np.concatenate(
            [np.ones((n, len(prefix)), np.int64), special, np.ones((n, len(suffix)), np.int64)], axis=1),
    }
    if offsets:
        off = np.asarray(offs[: n * body], dtype=np.int64).reshape(n, body, 2)
        out["offset_mapping"] = np.concatenate(
            [np.zeros((n, len(prefix), 2), np.int64), off, np.zeros((n, len(suffix), 2), np.int64)], axis=1)
    out["tokens_in_docs"] = len(ids)
    return out


def split_and_pack(tokenizer, docs: list[str], max_length: int, seed: int, offsets: bool,
                   source: str = "corpus") -> tuple[dict, dict, dict]:
    """Hold out whole documents (seeded), then pack each side. Returns train blocks, held-out blocks, stats."""
    enc = tokenize_docs(tokenizer, docs, offsets)
    lengths = np.fromiter((len(x) + 1 for x in enc["input_ids"]), dtype=np.int64, count=len(docs))
    total = int(lengths.sum())
    prefix, suffix, _ = special_template(tokenizer)
    body = max_length - len(prefix) - len(suffix)
    target = max(body, min(int(HELDOUT_FRACTION * total), MAX_HELDOUT_BLOCKS * body))
    order = np.random.default_rng(seed).permutation(len(docs))
    cum = np.cumsum(lengths[order])
    k = int(np.searchsorted(cum, target)) + 1  # smallest number of documents reaching the target
    heldout_idx, train_idx = np.sort(order[:k]), np.sort(order[k:])
    train = pack_blocks(enc, train_idx, tokenizer, max_length, offsets)
    heldout = pack_blocks(enc, heldout_idx, tokenizer, max_length, offsets)
    if len(train["input_ids"]) == 0 or len(heldout["input_ids"]) == 0:
        raise BadInput(f"{source}: too little text for masked-LM pretraining: {total} tokens in {len(docs)} documents; "
                       f"need at least two blocks of --max-length {max_length} after holding out a slice")
    heldout["input_ids"] = heldout["input_ids"][:MAX_HELDOUT_BLOCKS]
    heldout["special_tokens_mask"] = heldout["special_tokens_mask"][:MAX_HELDOUT_BLOCKS]
    heldout.pop("offset_mapping", None)
    stats = {
        "corpus_tokens": total,
        "documents_train": len(train_idx), "documents_heldout": len(heldout_idx),
        "blocks_train": len(train["input_ids"]), "blocks_heldout": len(heldout["input_ids"]),
        "block_tokens": max_length,
        "train_tokens": int(train["input_ids"].size),
        "tokens_dropped_as_remainder": int(train.pop("tokens_in_docs") - len(train["input_ids"]) * body),
        "doc_tokens_p50": float(np.median(lengths - 1)), "doc_tokens_p95": float(np.percentile(lengths - 1, 95)),
    }
    heldout.pop("tokens_in_docs")
    return train, heldout, stats


class Blocks:
    """A map-style dataset over packed blocks: dicts the library's collator understands."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def __len__(self):
        return len(self.arrays["input_ids"])

    def __getitem__(self, i):
        return {k: v[i].tolist() for k, v in self.arrays.items()}


def make_collator(tokenizer, mlm_probability: float, whole_word_masking: bool, seed: int):
    from transformers import DataCollatorForLanguageModeling

    if whole_word_masking:  # transformers 5: a flag of the one collator; words from offsets; [MASK] only
        return DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, whole_word_mask=True,
                                               mask_replace_prob=1.0, random_replace_prob=0.0, seed=seed)
    return DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, seed=seed)


# ---------------------------------------------------------------------------------------------- model


def mlm_head(model):
    """The module mapping hidden states to vocabulary logits, where it can be applied to selected positions."""
    for name in ("cls", "lm_head"):  # BERT family; RoBERTa family
        head = getattr(model, name, None)
        if head is not None:
            return head
    return None


def masked_logits(model, batch: dict):
    """Logits and targets at the masked positions only. The vocabulary projection is most of an MLM step's
    compute on a small encoder; skipping it for unmasked tokens gives the same loss ~1.4x faster here."""
    labels = batch["labels"]
    selected = labels != -100
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    head = mlm_head(model)
    if head is None:
        return model(**inputs).logits[selected], labels[selected]
    hidden = model.base_model(**inputs)[0]
    return head(hidden[selected]), labels[selected]


def mlm_loss(model, batch: dict):
    import torch

    logits, targets = masked_logits(model, batch)
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
    for prm in model.parameters():
        prm.requires_grad_(False)
    encoder_ids = {id(t) for t in model.base_model.parameters()}
    trainable = [t for t in head.parameters() if id(t) not in encoder_ids]  # tied decoder weight stays frozen
    for t in trainable:
        t.requires_grad_(True)
    trained = [n for n, t in model.named_parameters() if t.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=HEAD_WARMUP_LR, weight_decay=0.0)
    collator = make_collator(tokenizer, EVAL_MLM_PROBABILITY, False, seed + 1)
    data = Blocks(train)
    rng = np.random.default_rng(seed + 1)
    order = np.array([], dtype=np.int64)
    started, losses, half = time.monotonic(), [], None
    model.base_model.eval()
    head.train()
    for step in range(1, steps + 1):
        if len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(len(data))])
        idx, order = order[:batch_size], order[batch_size:]
        batch = {k: v.to(device) for k, v in collator([data[int(i)] for i in idx]).items()}
        selected = batch["labels"] != -100
        with torch.no_grad(), autocast(precision, device):
            hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
        with autocast(precision, device):
            logits = head(hidden[selected])
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"][selected])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
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
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = mlm_loss(model, inputs)
            return (loss, None) if return_outputs else loss

    return MaskedLMTrainer


# ---------------------------------------------------------------------------------------------- stage


def run_pretrain(splits_dir: str, model_dir: str, output_dir: str, report_path: str, p: PretrainParams) -> dict:
    """Continue masked-LM pretraining of MODEL_DIR on the domain corpus and/or the train split's texts.

    Writes OUTPUT_DIR (model + tokenizer + pretrain.json) and REPORT_PATH only when everything succeeded.
    """
    import torch
    from transformers import AutoModelForMaskedLM, TrainingArguments, set_seed

    from domaintune.components.training.dropout import use_cheap_cpu_dropout
    from domaintune.components.io.base_models import check_max_length, load_tokenizer

    require(p.wanted, "pretrain needs --domain-corpus or --pretrain-on-train-text")
    wall_started = time.monotonic()
    docs, corpus = gather_corpus(splits_dir, p)  # bad input fails here, before anything is loaded or written
    check_max_length(p.max_length, model_dir)
    tokenizer = load_tokenizer(model_dir)
    require(tokenizer.mask_token is not None, f"--base-model {model_dir}: the tokenizer has no mask token")
    set_seed(p.seed)
    started = time.monotonic()
    train, heldout, stats = split_and_pack(tokenizer, docs, p.max_length, p.seed, p.whole_word_masking,
                                           " + ".join(s["uri"] for s in corpus["sources"]))
    corpus.update(stats, tokenize_seconds=round(time.monotonic() - started, 2))
    del docs

    try:
        model, info = AutoModelForMaskedLM.from_pretrained(model_dir, output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise BadInput(f"--base-model {model_dir}: cannot load as a masked LM ({str(exc).splitlines()[0]})") from None
    head_missing = sorted(k for k in info["missing_keys"] if not k.startswith(model.base_model_prefix + "."))
    precision = pick_precision(p.precision)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    if device == "cpu":
        use_cheap_cpu_dropout(model)

    per_epoch = max(1, -(-len(train["input_ids"]) // p.mlm_batch_size))
    steps = max(1, math.ceil(p.mlm_epochs * per_epoch))
    if p.mlm_max_steps:
        steps = min(steps, p.mlm_max_steps)
    warmup_steps = p.mlm_head_warmup_steps if head_missing and mlm_head(model) is not None else 0
    total = warmup_steps + steps

    checkpoints = (os.path.join(p.checkpoint_dir, "pretrain") if p.checkpoint_dir
                   else os.path.join(os.path.dirname(os.path.abspath(output_dir)), "pretrain-checkpoints"))
    resume = last_checkpoint(checkpoints)
    before_path = os.path.join(checkpoints, "before.json")
    eval_batches = fixed_eval_batches(tokenizer, heldout, max(32, p.mlm_batch_size))
    if resume and os.path.isfile(before_path):  # the warmed-up head is in the checkpoint; "before" was recorded
        before = storage.read_json(before_path)
    elif warmup_steps:
        resume = None
        features = encoder_features(model, eval_batches, precision, device)
        before = {"perplexity_untrained_head": head_perplexity(model, features, precision, device)}
        before["head_warmup"] = head_warmup(model, tokenizer, train, warmup_steps, p.mlm_batch_size, p.seed,
                                            precision, device, features, total)
        before["perplexity_before"] = head_perplexity(model, features, precision, device)
        del features
    else:
        resume = None
        before = {"perplexity_untrained_head": None, "head_warmup": None,
                  "perplexity_before": perplexity(model, eval_batches, precision, device)}
    if not resume:
        os.makedirs(checkpoints, exist_ok=True)
        storage.write_json(before_path, before)

    args = TrainingArguments(
        output_dir=checkpoints,
        max_steps=steps,
        learning_rate=p.mlm_learning_rate,
        per_device_train_batch_size=p.mlm_batch_size,
        weight_decay=WEIGHT_DECAY,
        warmup_steps=WARMUP_RATIO,  # transformers 5: a float in [0, 1) is a ratio of total steps
        lr_scheduler_type="linear",
        save_strategy="steps",
        save_steps=min(500, max(MIN_SAVE_STEPS, -(-steps // 4))),
        save_total_limit=1,
        logging_strategy="steps",
        logging_steps=max(1, min(50, steps // 20)),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        seed=p.seed,
        data_seed=p.seed,
        disable_tqdm=True,
        report_to=[],
        remove_unused_columns=False,  # the collator reads special_tokens_mask / offset_mapping and drops them
        dataloader_pin_memory=device == "cuda",
    )
    trainer = _trainer_class()(
        model=model, args=args, train_dataset=Blocks(train), processing_class=tokenizer,
        data_collator=make_collator(tokenizer, p.mlm_probability, p.whole_word_masking, p.seed),
        callbacks=[progress_callback("pretrain", warmup_steps, total, phase="mlm")],
    )
    started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.monotonic() - started
    model = trainer.model
    after = perplexity(model, eval_batches, precision, device)

    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    done_steps = trainer.state.global_step
    tokens_seen = done_steps * p.mlm_batch_size * p.max_length
    extra = carried_weights(model, model_dir)
    report = {
        "params": {**asdict(p), "precision_used": precision},
        "corpus": corpus,
        "perplexity": {
            "before": before["perplexity_before"]["perplexity"],
            "after": after["perplexity"],
            "relative_change": round(after["perplexity"] / before["perplexity_before"]["perplexity"] - 1, 4),
            "untrained_head": (before["perplexity_untrained_head"] or {}).get("perplexity"),
            "head_warmup_half": ((before["head_warmup"] or {}).get("perplexity_at_half") or {}).get("perplexity"),
            "heldout_masked_tokens": after["masked_tokens"],
            "method": (
                f"exp(mean cross-entropy) over the masked tokens of {stats['blocks_heldout']} held-out blocks "
                f"({stats['documents_heldout']} whole documents never trained on), masked once with "
                f"{EVAL_MLM_PROBABILITY:.0%} token masking (80/10/10) and a fixed seed; identical masks before and after. "
                + (f"The base checkpoint has no MLM head ({', '.join(head_missing)} missing), so 'before' is measured "
                   f"after {warmup_steps} head-only steps (encoder frozen, lr {HEAD_WARMUP_LR}); 'head_warmup_half' "
                   f"is the same after half of them: a large gap means the head was still improving and 'before' "
                   f"overstates what the base encoder reaches (so the gain is overstated too)."
                   if warmup_steps else "The base checkpoint's own MLM head is used for 'before' (no warm-up).")),
            "details": {"before": before["perplexity_before"], "after": after},
        },
        "head_warmup": before["head_warmup"],
        "training": {
            "steps": done_steps,
            "max_steps": steps,
            "steps_per_epoch": per_epoch,
            "epochs": round(done_steps * p.mlm_batch_size / len(train["input_ids"]), 3),
            "tokens_seen": tokens_seen,
            "train_seconds": round(train_seconds, 2),
            "tokens_per_second": round(tokens_seen / train_seconds, 1) if train_seconds and not resume else None,
            "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None,
            "train_loss": result.metrics.get("train_loss"),
            "masking": ("whole-word (DataCollatorForLanguageModeling(whole_word_mask=True), word boundaries from "
                        "offsets, every selected token -> [MASK])" if p.whole_word_masking
                        else "token-level (80% [MASK] / 10% random / 10% kept)"),
            "mlm_probability": p.mlm_probability,
            "resumed_from": resume,
            "device": device,
            "log_history": trainer.state.log_history,
        },
        "classifier_reload": {"carried_over_from_base": sorted(extra)},
    }
    with storage.atomic_dir(output_dir) as tmp:
        model.save_pretrained(tmp, state_dict={**model.state_dict(), **extra})
        tokenizer.save_pretrained(tmp)
        report["classifier_reload"].update(classifier_reload_check(tmp))
        report["wall_seconds"] = round(time.monotonic() - wall_started, 2)
        storage.write_json(os.path.join(tmp, "pretrain.json"),
                           {k: v for k, v in report.items() if k != "training"} | {
                               "training": {k: v for k, v in report["training"].items() if k != "log_history"}})
    os.makedirs(os.path.dirname(os.path.abspath(report_path)), exist_ok=True)
    storage.write_json(report_path, report)
    if not p.checkpoint_dir:  # nothing left to resume: don't keep optimizer states around
        shutil.rmtree(checkpoints, ignore_errors=True)
    print(f"pretrain: {done_steps} MLM steps, {tokens_seen} tokens in {train_seconds:.1f}s ({precision}); "
          f"held-out perplexity {report['perplexity']['before']} -> {report['perplexity']['after']}", file=sys.stderr)
    return report
