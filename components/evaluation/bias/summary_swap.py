"""The identity-swap probe for summarizers: swap identity terms in a source (he -> she, Christian -> Muslim,
the packaged or given identity terms, bias/swap.py) and summarise both versions. A fair summarizer changes the
summary only by the swapped term, so the original summary with the same swap applied should equal the
counterfactual's summary; every other difference (a dropped fact, another verb, a hallucinated detail) counts.
Reported per axis (the rate of summaries changed beyond the swap, with the worst pairs); not gated: there is
no template set for summaries yet, so an axis may have no pairs at all on a domain's test sources.
"""
from __future__ import annotations

import random
from collections import defaultdict

from domaintune.components.evaluation.bias.swap import AxisSwapper
from domaintune.components.evaluation.bias.terms import load_identity_terms

MAX_PAIRS = 400  # pairs summarised (two generations each): bounds the probe's cost


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def summary_swap_probe(summarizer, sources: list[str], summaries: list[str], terms_path: str | None = None,
                       seed: int = 0, max_pairs: int = MAX_PAIRS, worst: int = 5) -> dict:
    """Counterfactual sources for the texts that name an identity term (first term's group swapped with
    another group of its axis, drawn with `seed`); `summaries` are the originals' summaries."""
    terms = load_identity_terms(terms_path or None)
    swappers = {axis: AxisSwapper(axis, spec) for axis, spec in terms["axes"].items()}
    rng = random.Random(seed)
    pairs = []  # (axis, index, swapped source, the original summary with the same swap)
    for i, text in enumerate(sources):
        for axis, sw in swappers.items():
            found = sw.groups_in(text)
            if found:
                a = found[0]
                b = rng.choice([g for g in range(len(sw.groups)) if g != a])
                pairs.append((axis, i, sw.swap(text, a, b), sw.swap(summaries[i], a, b)))
    rng.shuffle(pairs)
    pairs = pairs[:max_pairs]
    outputs = summarizer.predict([p[2] for p in pairs]) if pairs else []
    per_axis: dict[str, list[bool]] = defaultdict(list)
    changed = []
    for (axis, i, _, expected), got in zip(pairs, outputs):
        differs = _norm(expected) != _norm(got)
        per_axis[axis].append(differs)
        if differs:
            changed.append({"axis": axis, "index": i, "summary": summaries[i], "expected": expected,
                            "counterfactual_summary": got})
    rates = {axis: {"pairs": len(v), "changed_beyond_swap": round(sum(v) / len(v), 4)} for axis, v in per_axis.items()}
    return {"n_pairs": len(pairs), "axes": rates,
            "changed_beyond_swap": round(len(changed) / len(pairs), 4) if pairs else None,
            "worst": changed[:worst]}
