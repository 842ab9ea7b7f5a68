"""Packed training batches are the padded batches' computation: same logits, same loss, same gradients, for
BERT's sequence and token heads, under SDPA and eager attention; and the finetune stage trains on them."""
import random

import pytest
import torch

from domaintune.components.training import packing
from domaintune.components.training.packing import PackingCollator, first_fit_decreasing, pack_rows


def test_pack_rows_places_every_sentence_once_in_few_even_rows():
    rng = random.Random(0)
    slots = real = 0
    for _ in range(300):
        lengths = [rng.choice([2, 4, 6, 9, 12, 15, 20, 33, 50]) for _ in range(rng.randint(1, 32))]
        rows = pack_rows(lengths, 64)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        assert len(rows) <= -(-sum(lengths) // max(64, max(lengths)))  # no more rows than the total needs
        slots += len(rows) * max(sum(lengths[i] for i in row) for row in rows)
        real += sum(lengths)
    assert slots < 1.1 * real  # even rows: under 10% padding
    assert first_fit_decreasing([30, 30, 5, 30], 64) == [[0, 1], [3, 2]]  # longest first, first row with room


def features(n, head, seed=0, vocab=1000):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.choice([2, 3, 5, 9, 17, 40, 70])  # 70: longer than a row's 64 tokens
        ids = [101] + [rng.randrange(1000, 1000 + vocab) for _ in range(length - 2)] + [102]
        labels = rng.randrange(3) if head == "sequence" else [-100] + [rng.randrange(3) for _ in ids[2:]] + [-100]
        out.append({"input_ids": ids, "token_type_ids": [0] * length, "attention_mask": [1] * length,
                    "labels": labels})
    return out


def test_collator_layout():
    feats = features(11, "sequence")
    batch = PackingCollator("sequence")(feats)
    rows, width = batch["input_ids"].shape
    assert rows < len(feats) and width >= max(len(f["input_ids"]) for f in feats)
    assert batch["attention_mask"].shape == (rows, 1, width, width) and batch["attention_mask"].dtype == torch.bool
    assert batch["real_tokens"] == sum(len(f["input_ids"]) for f in feats)
    flat_ids, flat_pos = batch["input_ids"].flatten(), batch["position_ids"].flatten()
    for f, start in zip(feats, batch["first_token"].tolist()):
        n = len(f["input_ids"])
        assert flat_ids[start:start + n].tolist() == f["input_ids"]
        assert flat_pos[start:start + n].tolist() == list(range(n))
    assert batch["labels"].tolist() == [f["labels"] for f in feats]
    # a token sees exactly its own sentence; padding sees only itself (no empty softmax row)
    owner = torch.full((rows * width,), -1)
    for i, (f, start) in enumerate(zip(feats, batch["first_token"].tolist())):
        owner[start:start + len(f["input_ids"])] = i
    owner = owner.view(rows, width)
    real = owner[:, :, None] >= 0
    expected = torch.where(real, owner[:, :, None] == owner[:, None, :], torch.eye(width, dtype=torch.bool))
    assert torch.equal(batch["attention_mask"][:, 0], expected)
    with pytest.raises(ValueError, match="head must be"):
        PackingCollator("seq2seq")


def model_of(head, attention):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    from domaintune.components.io.base_models import resolve_model

    cls = AutoModelForSequenceClassification if head == "sequence" else AutoModelForTokenClassification
    torch.manual_seed(0)
    return cls.from_pretrained(resolve_model("all-MiniLM-L6-v2"), num_labels=3, attn_implementation=attention)


def padded_loss_and_logits(model, feats):
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

    from domaintune.components.io.base_models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model("all-MiniLM-L6-v2"))
    token_head = isinstance(feats[0]["labels"], list)
    collate = DataCollatorForTokenClassification(tokenizer) if token_head else DataCollatorWithPadding(tokenizer)
    batch = collate([dict(f) for f in feats])
    out = model(**batch)
    return out.loss, out.logits, batch


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("head", ["sequence", "token"])
def test_packed_batch_gives_the_padded_batchs_logits_loss_and_gradients(head, attention):
    model = model_of(head, attention).eval()  # dropout off: the two computations must agree
    assert packing.enable(model) == head
    feats = features(13, head, seed=1)
    loss, logits, padded = padded_loss_and_logits(model, feats)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    batch = PackingCollator.for_model(model, 0)(feats)
    batch.pop("real_tokens")
    assert batch["attention_mask"].dtype == (torch.bool if attention == "sdpa" else torch.float32)
    out = model(**batch)
    out.loss.backward()
    assert torch.allclose(out.loss, loss, atol=1e-5)
    if head == "sequence":
        assert torch.allclose(out.logits, logits, atol=1e-4)
    else:  # each sentence's tokens, where its rows put them
        flat = out.logits.flatten(0, 1)
        for i, start in sentence_starts(feats, batch["input_ids"].shape[1]).items():
            n = len(feats[i]["input_ids"])
            assert torch.allclose(flat[start:start + n], logits[i, :n], atol=1e-4)
    for name, param in model.named_parameters():
        if name in grads:
            assert torch.allclose(param.grad, grads[name], atol=1e-5, rtol=1e-3), name


def sentence_starts(feats, width):
    """Each sentence's flat index in the packed batch: its row's place, plus the sentences before it there."""
    lengths = [len(f["input_ids"]) for f in feats]
    starts = {}
    for r, row in enumerate(pack_rows(lengths)):
        offset = 0
        for i in row:
            starts[i], offset = r * width + offset, offset + lengths[i]
    return starts


def test_packing_is_declined_where_it_is_not_the_same_computation():
    from types import SimpleNamespace

    other = SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa"))
    assert packing.packed_head(other) is None  # not a BERT head: length-grouped batches instead
    model = model_of("sequence", "sdpa")
    model.config._attn_implementation = "flex_attention"
    assert packing.packed_head(model) is None


def test_unpacked_calls_are_untouched():
    model = model_of("sequence", "sdpa").eval()
    feats = features(5, "sequence", seed=2)
    before = padded_loss_and_logits(model, feats)[1]
    packing.enable(model)
    packing.enable(model)  # twice: wrapped once
    assert not getattr(model.forward.__wrapped__, "packed", False)
    assert torch.equal(padded_loss_and_logits(model, feats)[1], before)


def test_finetune_trains_on_packed_batches(trained):
    import os

    from datasets import load_from_disk

    history = trained["history"]
    assert history["train_batches"].startswith("random, packed")
    tokens = history["train_tokens"]
    # every training sentence went through whole, once per epoch, in rows no wider than needed
    lengths = sum(load_from_disk(os.path.join(trained["tokens"], "train"))["length"])
    assert tokens["real"] == round(history["epochs_run"]) * lengths
    assert tokens["real"] <= tokens["padded"] < 1.5 * tokens["real"]


def test_packed_training_samples_random_batches():
    from domaintune.components.finetune.stage import training_arguments
    from conftest import finetune_params

    task = type("Task", (), {"primary_metric": "macro_f1"})()
    p = finetune_params(batch_size=16)
    assert training_arguments(task, p, "/tmp/x", "fp32", 100, packed=True).train_sampling_strategy == "random"
    assert training_arguments(task, p, "/tmp/x", "fp32", 100).train_sampling_strategy == "group_by_length"
