"""Random training batches without their padding: each batch's sentences packed into a few rows, each row
attending only within its own sentences.

Why: a random batch of 16 SST-2 sentences pads to its longest (547 tokens for 203 real ones), so the Trainer's
random sampler runs at ~60% of the length-grouped batches' speed; the length-grouped batches hold sentences
of one length each, and cost accuracy at small data sizes (bench/BENCHMARKS.md "Accuracy at every data
size"). Packed, a random batch keeps its mix of lengths near the grouped speed (ROW_TOKENS), and it is the same
computation as the padded batch: the block-diagonal mask keeps every sentence to itself, position ids restart
at 0 for each, and the loss is the mean over the same examples (tests/test_packing.py checks the logits and
the loss against the padded batch). Hugging Face's `DataCollatorWithFlattening` packs for flash-attention's
variable-length kernels only (CUDA); on the CPU's SDPA the block mask has to be written out, so by hand here.

Which models: BERT's sequence and token classification heads (the packaged base model's family), whose
absolute positions start at 0 and whose classifier reads the first token of a sentence. Any other model
trains on length-grouped batches, as before (`packed_head` is None).
"""
from __future__ import annotations

import functools

import torch

# A row's length: about this many tokens, or the batch's longest sentence. Attention costs a row's length
# squared and the linear layers its token count: in the stage on 4,000 SST-2 rows (batch 16, bf16), rows of
# 32 trained 8% faster than rows of 64 (122.4, 131.3 vs 119.3, 116.3 examples/s alternated; padding 7.5%
# vs 4.4%, attention slots per token 40 vs 61); in a hand loop 128 was 6-11% slower than 64.
ROW_TOKENS = 32
HEADS = {"BertForSequenceClassification": "sequence", "BertForTokenClassification": "token"}
SUPPORTED_ATTENTION = ("sdpa", "eager")
ADDITIVE_MASK = ("eager",)  # attention implementations that add the mask to the scores (SDPA takes booleans)


def task_model(model):
    """The transformers model under a PEFT wrapper (or MODEL itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def packed_head(model) -> str | None:
    """"sequence" or "token" where MODEL's head trains on packed batches (see the module docstring), else None."""
    inner = task_model(model)
    if getattr(inner.config, "_attn_implementation", None) not in SUPPORTED_ATTENTION:
        return None
    return HEADS.get(type(inner).__name__)


def pack_rows(lengths: list[int], row_tokens: int = ROW_TOKENS) -> list[list[int]]:
    """The indices of LENGTHS in as few rows of about ROW_TOKENS as their total needs, the rows as even as
    first-fit decreasing makes them: the width starts at the total over that row count (or the longest
    sentence) and grows by 1/16 until the sentences fit. Rows of capacity ROW_TOKENS filled first-fit left
    a fifth of the slots empty on SST-2 (241 for 203 tokens a batch of 16); even rows leave a few."""
    total, longest = sum(lengths), max(lengths)
    count = -(-total // max(row_tokens, longest))
    width = max(longest, -(-total // count))
    while len(rows := first_fit_decreasing(lengths, width)) > count:
        width += -(-width // 16)
    return rows


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """The indices of LENGTHS in rows of at most CAPACITY tokens, longest first, each into the first row with room."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r, free in enumerate(room) if free >= lengths[i]), len(rows))
        if r == len(rows):
            rows.append([])
            room.append(capacity)
        rows[r].append(i)
        room[r] -= lengths[i]
    return rows


class PackingCollator:
    """Features (input_ids, optional token_type_ids, labels) -> a packed batch.

    Keys: input_ids, token_type_ids, position_ids (R x L), attention_mask (R x 1 x L x L: a token sees the
    tokens of its own sentence, padding sees itself, so no softmax row is empty; boolean for SDPA, additive
    float for eager attention, `ADDITIVE_MASK`), labels, and `real_tokens`
    (a count the trainer takes out before the forward pass). HEAD "sequence": labels one per sentence in
    feature order, and `first_token` (the flat index in R x L of each sentence's first token, for the wrapped
    forward of `enable`); "token": labels laid out like input_ids (-100 on padding)."""

    def __init__(self, head: str, pad_token_id: int = 0, row_tokens: int = ROW_TOKENS, additive_mask: bool = False):
        if head not in ("sequence", "token"):
            raise ValueError(f"head must be 'sequence' or 'token', got {head!r}")
        self.head, self.pad_token_id, self.row_tokens = head, pad_token_id, row_tokens
        self.additive_mask = additive_mask

    @classmethod
    def for_model(cls, model, pad_token_id: int) -> "PackingCollator":
        """The collator for MODEL (`enable` said yes): its head, and the mask in the form its attention takes."""
        attention = task_model(model).config._attn_implementation
        return cls(packed_head(model), pad_token_id, additive_mask=attention in ADDITIVE_MASK)

    def __call__(self, features: list[dict]) -> dict:
        lengths = [len(f["input_ids"]) for f in features]
        rows = pack_rows(lengths, self.row_tokens)
        width = max(sum(lengths[i] for i in row) for row in rows)
        shape = (len(rows), width)
        input_ids = torch.full(shape, self.pad_token_id, dtype=torch.long)
        token_type_ids = torch.zeros(shape, dtype=torch.long)
        position_ids = torch.zeros(shape, dtype=torch.long)
        # padding gets ids no sentence has (-1 - position), so it matches only itself in the mask below
        sentence = -1 - torch.arange(width).repeat(len(rows), 1)
        token_labels = torch.full(shape, -100, dtype=torch.long) if self.head == "token" else None
        first_token = [0] * len(features)
        for r, row in enumerate(rows):
            start = 0
            for i in row:
                n, f, span = lengths[i], features[i], slice(start, start + lengths[i])
                input_ids[r, span] = torch.as_tensor(f["input_ids"])
                if "token_type_ids" in f:
                    token_type_ids[r, span] = torch.as_tensor(f["token_type_ids"])
                position_ids[r, span] = torch.arange(n)
                sentence[r, span] = i
                if token_labels is not None:
                    token_labels[r, span] = torch.as_tensor(f["labels"])
                first_token[i] = r * width + start
                start += n
        mask = (sentence[:, :, None] == sentence[:, None, :])[:, None]
        if self.additive_mask:  # eager attention adds the mask to its scores
            mask = torch.zeros(mask.shape).masked_fill_(~mask, torch.finfo(torch.float32).min)
        batch = {"input_ids": input_ids, "token_type_ids": token_type_ids, "position_ids": position_ids,
                 "attention_mask": mask, "real_tokens": sum(lengths)}
        if self.head == "token":
            return {**batch, "labels": token_labels}
        return {**batch, "labels": torch.as_tensor([int(f["labels"]) for f in features]),
                "first_token": torch.as_tensor(first_token)}


def enable(model) -> str | None:
    """Let MODEL train on packed batches: the sequence head reads each sentence's first token (its forward,
    wrapped, takes `first_token`); the token head needs nothing. Returns packed_head(MODEL)."""
    head = packed_head(model)
    inner = task_model(model)
    if head == "sequence" and not getattr(inner.forward, "packed", False):
        inner.forward = _sequence_forward(inner, inner.forward)
    return head


def _sequence_forward(model, forward):
    """MODEL's forward, which with `first_token` classifies each packed sentence from its first token (BERT's
    pooler, dropout and classifier, as BertForSequenceClassification does per padded row). The model is still
    called through its own forward, so DDP and PEFT wrappers see an ordinary call."""
    from transformers.modeling_outputs import SequenceClassifierOutput

    @functools.wraps(forward)
    def packed_forward(*args, first_token=None, **kwargs):
        if first_token is None:
            return forward(*args, **kwargs)
        labels = kwargs.pop("labels", None)
        hidden = model.bert(*args, **kwargs).last_hidden_state
        first = hidden.flatten(0, 1)[first_token]
        logits = model.classifier(model.dropout(model.bert.pooler(first[:, None])))
        loss = None if labels is None else torch.nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    packed_forward.packed = True
    return packed_forward

