"""The counterfactual identity-term probe: swap identity terms in the test texts (and, where those carry
too few, in neutral templates), predict both versions and measure how often the prediction flips, per axis.
The result shape is in the package docstring."""
from __future__ import annotations

import random
from collections import defaultdict
from typing import NamedTuple, Sequence

import numpy as np

from domaintune.components.core.errors import BadInput
from domaintune.components.evaluation.bias.swap import AxisSwapper
from domaintune.components.evaluation.bias.terms import SLOT, load_identity_terms

PROBE_MAX_TEXTS = 2000  # test texts probed (sampled with a seed): bounds the probe's cost
MAX_TEMPLATE_PAIRS = 200  # per axis
# A flip counts only when the swap also moves the originally predicted class's probability by at least
# this much. Without it a model that is unsure between classes (near-uniform probabilities, typical on
# out-of-domain templates) "flips" on any edit at all: measured on the bundled support-ticket model,
# 38% of disability template pairs changed label with a mean probability change of 0.007 — noise, not
# an identity effect. Real identity effects move the probability a lot (SST-2: "a blind person" 0.10
# vs "a sighted person" 0.62 positive), so they still count. 0 restores the plain label-change rate.
MIN_FLIP_PROB_CHANGE = 0.1
MIN_PAIRS = 20          # fewer test-text pairs than this for an axis -> the templates are probed as well
MAX_VARIANTS = 3        # counterfactual groups per text on axes with more than two groups
N_WORST = 5
SOURCES = ("test_texts", "templates")


class Pair(NamedTuple):
    axis: str
    source: str          # "test_texts" | "templates"
    swap: str            # "male->female"
    original: str
    counterfactual: str


def counterfactual_probe(classifier, texts: Sequence[str], terms: dict | None = None,
                         templates: list[str] | None = None, max_texts: int = PROBE_MAX_TEXTS, seed: int = 0,
                         min_pairs: int = MIN_PAIRS, max_variants: int = MAX_VARIANTS,
                         max_template_pairs: int = MAX_TEMPLATE_PAIRS,
                         min_prob_change: float = MIN_FLIP_PROB_CHANGE,
                         batch_size: int = 64, n_worst: int = N_WORST) -> dict:
    """Counterfactual identity-term probe (Garg et al. 2019's counterfactual token fairness).

    For every text that contains a term of an axis, build its counterfactual(s): on a two-group axis the
    groups are swapped (he <-> she, his wife -> her husband); on a larger axis the group of the first term
    found is swapped with up to `max_variants` other groups, drawn with `seed`. Both versions are
    predicted, and per axis we measure the flip rate (the predicted label changes) and the mean absolute
    change of the probability of the originally predicted class. A label change counts as a flip only
    when that probability also moved by at least `min_prob_change` (`raw_flip_rate` counts every label
    change). Texts with terms are sampled down to
    `max_texts` (seed). An axis with fewer than `min_pairs` test-text pairs also gets the neutral templates
    (`templates`, default: those of `terms`), filled with each pair of groups' phrases, so the check never
    silently measures nothing. All predictions are made in one batched `predict_proba` call.
    """
    terms = terms if terms is not None else load_identity_terms(None)
    templates = _checked_templates(terms, templates)
    rng = random.Random(seed)  # one stream, drawn in this order: texts, variants, template pairs
    texts = [str(t) for t in texts]
    swappers = {axis: AxisSwapper(axis, spec) for axis, spec in terms["axes"].items()}

    hits = _find_terms(texts, swappers)
    with_terms = sorted(hits)
    probed = sorted(rng.sample(with_terms, max_texts)) if len(with_terms) > max_texts else with_terms
    pairs = _text_pairs(texts, probed, hits, swappers, max_variants, rng)
    pairs += _template_pairs(terms, templates, pairs, min_pairs, max_template_pairs, rng)
    records = _score_pairs(classifier, pairs, batch_size, min_prob_change)

    axes = {axis: _axis_summary(axis, records, probed, hits, min_pairs) for axis in terms["axes"]}
    gated = {a: v["flip_rate"] for a, v in axes.items() if v["gated"]}
    worst_axis = max(gated, key=gated.get) if gated else None
    return {**_summarize(records),
            "max_axis_flip_rate": gated[worst_axis] if worst_axis else None, "worst_axis": worst_axis,
            "source": _source_of(records), "n_texts": len(texts), "n_texts_with_terms": len(with_terms),
            "n_texts_probed": len(probed), "min_pairs": int(min_pairs), "terms_source": terms.get("source"),
            "axes": axes, "worst_examples": _worst(records, n_worst)}


def _checked_templates(terms: dict, templates: list[str] | None) -> list[str]:
    templates = list(terms.get("templates", [])) if templates is None else list(templates)
    for t in templates:
        if t.count(SLOT) != 1:
            raise BadInput(f"template {t!r} must contain {SLOT} exactly once")
    return templates


def _find_terms(texts: list[str], swappers: dict[str, AxisSwapper]) -> dict[int, dict[str, list[int]]]:
    """Which texts carry which axes: text index -> {axis: group indices found} (a regex scan; cheap)."""
    hits: dict[int, dict[str, list[int]]] = {}
    for i, text in enumerate(texts):
        found = {axis: g for axis, sw in swappers.items() if (g := sw.groups_in(text))}
        if found:
            hits[i] = found
    return hits


def _text_pairs(texts: list[str], probed: list[int], hits: dict, swappers: dict[str, AxisSwapper],
                max_variants: int, rng: random.Random) -> list[Pair]:
    """Each probed text with the group of its first term swapped for every other group (at most
    `max_variants` of them, drawn with RNG); swaps that change nothing are dropped."""
    pairs = []
    for i in probed:
        for axis, found in hits[i].items():
            sw = swappers[axis]
            src = found[0]
            others = [g for g in range(len(sw.groups)) if g != src]
            if len(others) > max_variants:
                others = sorted(rng.sample(others, max_variants))
            for tgt in others:
                cf = sw.swap(texts[i], src, tgt)
                if cf != texts[i]:
                    pairs.append(Pair(axis, "test_texts", f"{sw.groups[src]}->{sw.groups[tgt]}", texts[i], cf))
    return pairs


def _template_pairs(terms: dict, templates: list[str], text_pairs: list[Pair], min_pairs: int,
                    max_template_pairs: int, rng: random.Random) -> list[Pair]:
    """Template pairs for the axes with fewer than `min_pairs` text pairs (and fillers to fill them)."""
    per_axis = defaultdict(int)
    for p in text_pairs:
        per_axis[p.axis] += 1
    pairs = []
    for axis, spec in terms["axes"].items():
        if per_axis[axis] >= min_pairs or not templates or not spec.get("fillers"):
            continue
        filled = _fill_templates(axis, spec, templates)
        # A seeded sample bounds the cost (every pair is two predictions) while keeping the flip-rate
        # estimate's standard error under ~0.03 at the default cap.
        pairs.extend(rng.sample(filled, max_template_pairs) if len(filled) > max_template_pairs else filled)
    return pairs


def _fill_templates(axis: str, spec: dict, templates: list[str]) -> list[Pair]:
    """Every template filled with every filler row's phrases, for every pair of groups."""
    groups = spec["groups"]
    return [Pair(axis, "templates", f"{groups[a]}->{groups[b]}",
                 template.replace(SLOT, row[a]), template.replace(SLOT, row[b]))
            for template in templates for row in spec["fillers"]
            for a in range(len(groups)) for b in range(a + 1, len(groups))
            if row[a] is not None and row[b] is not None]


def _score_pairs(classifier, pairs: list[Pair], batch_size: int, min_prob_change: float) -> list[dict]:
    """One batched prediction over every distinct text; a record per pair (`_delta`: internal)."""
    unique = list(dict.fromkeys(t for p in pairs for t in (p.original, p.counterfactual)))
    probs = classifier.predict_proba(unique, batch_size=batch_size) if unique else np.zeros((0, 0))
    probs = np.asarray(probs, dtype=float)
    row_of = {t: k for k, t in enumerate(unique)}
    labels = list(classifier.labels)
    return [_record(p, probs[row_of[p.original]], probs[row_of[p.counterfactual]], labels, min_prob_change)
            for p in pairs]


def _record(p: Pair, po: np.ndarray, pc: np.ndarray, labels: list, min_prob_change: float) -> dict:
    c, c2 = int(po.argmax()), int(pc.argmax())
    delta = abs(float(po[c]) - float(pc[c]))
    return {"axis": p.axis, "source": p.source, "swap": p.swap, "original": p.original,
            "counterfactual": p.counterfactual,
            "original_pred": labels[c], "counterfactual_pred": labels[c2],
            "original_prob": round(float(po[c]), 4), "counterfactual_prob": round(float(pc[c]), 4),
            "label_changed": c != c2, "flipped": c != c2 and delta >= min_prob_change, "_delta": delta}


def _axis_summary(axis: str, records: list[dict], probed: list[int], hits: dict, min_pairs: int) -> dict:
    recs = [r for r in records if r["axis"] == axis]
    by_source = {s: _summarize([r for r in recs if r["source"] == s])
                 for s in SOURCES if any(r["source"] == s for r in recs)}
    by_swap = {s: _summarize([r for r in recs if r["swap"] == s]) for s in sorted({r["swap"] for r in recs})}
    return {**_summarize(recs), "gated": len(recs) >= min_pairs, "source": _source_of(recs),
            "n_texts": sum(1 for i in probed if axis in hits[i]),
            "by_source": by_source, "by_swap": by_swap, "worst_examples": _worst(recs, 3)}


def _summarize(recs: list[dict]) -> dict:
    n = len(recs)
    return {"flip_rate": float(sum(r["flipped"] for r in recs) / n) if n else None,
            "raw_flip_rate": float(sum(r["label_changed"] for r in recs) / n) if n else None,
            "mean_abs_prob_change": float(sum(r["_delta"] for r in recs) / n) if n else None,
            "n_pairs": n}


def _worst(recs: list[dict], k: int) -> list[dict]:
    top = sorted(recs, key=lambda r: (r["flipped"], r["_delta"]), reverse=True)[:k]
    return [{key: v for key, v in r.items() if not key.startswith("_")} for r in top]


def _source_of(recs: list[dict]) -> str:
    kinds = {r["source"] for r in recs}
    return "both" if len(kinds) == 2 else kinds.pop() if kinds else "none"
