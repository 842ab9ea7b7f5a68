"""Entity-level metrics for tagging tasks (seqeval): precision/recall/F1 per type, micro and macro, in the
CoNLL-eval mode (seqeval's default, as conlleval scores) and the strict IOB2 mode; a confusion table over
entity types with missed and spurious entities; boundary vs type errors; the worst sentences."""
from __future__ import annotations

from collections import Counter

import numpy as np

MISSED, SPURIOUS = "(missed)", "(spurious)"


def spans(tags: list[str]) -> set[tuple[int, int, str]]:
    """IOB2 entity spans (start, end exclusive, type); a stray I-X starts an entity, as conlleval reads it."""
    out, start, kind = set(), None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, etype = tag.partition("-")
        if start is not None and (prefix != "I" or etype != kind):
            out.add((start, i, kind))
            start = None
        if prefix == "B" or (prefix == "I" and start is None):
            start, kind = i, etype
    return out


def entity_metrics(gold: list[list[str]], pred: list[list[str]], analysis: bool = True) -> dict:
    """Entity metrics; `analysis` adds the confusion, error kinds and worst sentences (not needed per epoch)."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    report = classification_report(gold, pred, output_dict=True, zero_division=0)
    per_type = {k: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]),
                    "support": int(v["support"])} for k, v in report.items() if "avg" not in k}
    strict = dict(mode="strict", scheme=IOB2, zero_division=0)
    tokens = sum(len(g) for g in gold)
    return {
        "n": len(gold),
        "entity_f1": float(f1_score(gold, pred, zero_division=0)),
        "entity_precision": float(precision_score(gold, pred, zero_division=0)),
        "entity_recall": float(recall_score(gold, pred, zero_division=0)),
        "entity_macro_f1": float(f1_score(gold, pred, average="macro", zero_division=0)),
        "entity_f1_strict": float(f1_score(gold, pred, **strict)),
        "entity_precision_strict": float(precision_score(gold, pred, **strict)),
        "entity_recall_strict": float(recall_score(gold, pred, **strict)),
        "token_accuracy": float(sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p)) / tokens) if tokens else 0.0,
        "per_type": per_type,
        **(error_analysis(gold, pred) if analysis else {}),
    }


def error_analysis(gold: list[list[str]], pred: list[list[str]], worst: int = 5) -> dict:
    """Confusion over entity types (gold rows, predicted columns, with missed / spurious), boundary errors
    (overlapping spans of the same type with other edges) vs type errors (same span, other type)."""
    confusion: Counter = Counter()
    errors = Counter()
    per_sentence = []
    for i, (g, p) in enumerate(zip(gold, pred)):
        gs, ps = spans(g), spans(p)
        wrong = len(gs ^ ps)
        per_sentence.append((wrong, i))
        by_range = {(s, e): t for s, e, t in ps}
        matched_pred = set()
        for s, e, t in gs:
            if (s, e) in by_range:
                confusion[(t, by_range[(s, e)])] += 1
                matched_pred.add((s, e, by_range[(s, e)]))
                errors["type" if by_range[(s, e)] != t else "correct"] += 1
            elif any(ps_ < e and pe > s for ps_, pe, pt in ps):
                errors["boundary"] += 1
                confusion[(t, MISSED)] += 1
            else:
                errors["missed"] += 1
                confusion[(t, MISSED)] += 1
        for span in ps - matched_pred:
            if not any(gs_ < span[1] and ge > span[0] for gs_, ge, _ in gs):
                errors["spurious"] += 1
                confusion[(SPURIOUS, span[2])] += 1
    types = sorted({t for pair in confusion for t in pair} - {MISSED, SPURIOUS})
    rows, cols = types + [SPURIOUS], types + [MISSED]
    table = [[int(confusion[(r, c)]) for c in cols] for r in rows]
    order = sorted(per_sentence, reverse=True)[:worst]
    return {"entity_confusion": {"rows": rows, "columns": cols, "counts": table},
            "errors": {k: int(errors[k]) for k in ("correct", "type", "boundary", "missed", "spurious")},
            "worst_sentences": [i for wrong, i in order if wrong]}


def tags_from_logits(outputs, labels: list[str]) -> list[list[str]]:
    return [[labels[int(i)] for i in np.asarray(o).argmax(axis=-1)] for o in outputs]


def render_entity_report(m: dict) -> str:
    """Markdown: headline numbers in both modes, the per-type table, the entity confusion, the error kinds."""
    lines = ["# Entity-level evaluation (test split)", "",
             f"Entity F1 **{m['entity_f1']:.4f}** (CoNLL-eval mode), strict IOB2 {m['entity_f1_strict']:.4f}; "
             f"precision {m['entity_precision']:.4f}, recall {m['entity_recall']:.4f}; macro-F1 over types "
             f"{m['entity_macro_f1']:.4f}; token accuracy {m['token_accuracy']:.4f}; {m['n']} sentences.", "",
             "| type | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    lines += [f"| {t} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | {v['support']} |"
              for t, v in m["per_type"].items()]
    c = m["entity_confusion"]
    lines += ["", "## Confusion over entity types (gold rows, predicted columns; same span)", "",
              "| gold \\ predicted | " + " | ".join(c["columns"]) + " |", "|---|" + "---|" * len(c["columns"])]
    lines += [f"| {row} | " + " | ".join(str(x) for x in counts) + " |" for row, counts in zip(c["rows"], c["counts"])]
    e = m["errors"]
    lines += ["", "## Errors", "",
              f"{e['correct']} entities right; {e['type']} with the right span but the wrong type; {e['boundary']} "
              f"boundary errors (overlapping, other edges); {e['missed']} missed; {e['spurious']} spurious.",
              f"Worst test sentences (most wrong entities, row numbers of predictions.parquet): {m['worst_sentences']}.", ""]
    return "\n".join(lines)
