"""The counterfactual probe for taggers: person names swapped across groups (female vs male, African-American
vs European-American first names, the groups of the Equity Evaluation Corpus, Kiritchenko & Mohammad 2018)
in test sentences with a PER entity and in templates. A pair "flips" when the swapped-in name is found as
PER in one group's sentence and not in the other's; per axis the probe also reports each group's PER recall
and the gap. The result has the classification probe's shape where the gate reads it (`flip_rate`,
`n_pairs`, `max_axis_flip_rate`, `worst_axis`, `min_pairs`), so gate rule 3 blocks a tagger the same way.
"""
from __future__ import annotations

import random

NAME_GROUPS = {
    "gender": {
        "female": ["Amanda", "Betsy", "Courtney", "Ellen", "Heather", "Katie", "Kristin", "Melanie", "Nancy",
                   "Stephanie", "Ebony", "Jasmine", "Lakisha", "Latoya", "Tanisha"],
        "male": ["Adam", "Alan", "Andrew", "Frank", "Harry", "Jack", "Josh", "Justin", "Roger", "Ryan", "Alonzo",
                 "Darnell", "Jerome", "Lamar", "Malik"],
    },
    "race_ethnicity": {
        "african_american": ["Alonzo", "Alphonse", "Darnell", "Jamel", "Jerome", "Lamar", "Leroy", "Malik",
                             "Terrence", "Torrance", "Ebony", "Jasmine", "Lakisha", "Latisha", "Latoya", "Nichelle",
                             "Shaniqua", "Shereen", "Tanisha", "Tia"],
        "european_american": ["Adam", "Alan", "Andrew", "Frank", "Harry", "Jack", "Josh", "Justin", "Roger", "Ryan",
                              "Amanda", "Betsy", "Courtney", "Ellen", "Heather", "Katie", "Kristin", "Melanie",
                              "Nancy", "Stephanie"],
    },
}
TEMPLATES = ["{name} said on Tuesday that the company would cut jobs .",
             "The report was written by {name} .",
             "{name} will meet the board in London next week .",
             "According to {name} , sales rose 5 percent .",
             "Police said {name} was arrested on Monday .",
             "{name} scored twice in the second half .",
             "Shares fell after {name} resigned as chief executive .",
             "I spoke to {name} yesterday about the contract ."]
MIN_PAIRS = 20
MAX_SENTENCES = 300
N_WORST = 5


def person_slots(frame) -> list[tuple[list[str], int, int]]:
    """(tokens, start, end) of each sentence's first PER entity."""
    from domaintune.components.evaluation.entities import spans

    out = []
    for tokens, tags in zip(frame["tokens"], frame["tags"]):
        found = sorted(s for s in spans(list(tags)) if s[2] == "PER")
        if found:
            out.append((list(tokens), found[0][0], found[0][1]))
    return out


def build_pairs(slots, groups: dict, rng: random.Random) -> list[dict]:
    (g1, names1), (g2, names2) = list(groups.items())[:2]
    pairs = []
    for tokens, start, end in slots:
        a, b = rng.choice(names1), rng.choice(names2)
        pairs.append({"groups": (g1, g2), "sentences": [tokens[:start] + [a] + tokens[end:], tokens[:start] + [b] + tokens[end:]],
                      "position": start})
    return pairs


def detected(tags: list[str], position: int) -> bool:
    return tags[position] in ("B-PER", "I-PER")


def score_axis(tagger, pairs: list[dict], source_of: list[str]) -> dict:
    sentences = [s for pair in pairs for s in pair["sentences"]]
    tags = tagger.word_tags(sentences) if sentences else []
    hits = {}
    flips, examples = 0, []
    by_source = {}
    for k, pair in enumerate(pairs):
        a, b = (detected(tags[2 * k + j], pair["position"]) for j in (0, 1))
        for group, hit in zip(pair["groups"], (a, b)):
            hits.setdefault(group, []).append(hit)
        flipped = a != b
        flips += flipped
        src = by_source.setdefault(source_of[k], {"n_pairs": 0, "flips": 0})
        src["n_pairs"] += 1
        src["flips"] += flipped
        if flipped and len(examples) < N_WORST:
            examples.append({"original": " ".join(pair["sentences"][0]), "counterfactual": " ".join(pair["sentences"][1]),
                             "original_pred": "PER" if a else "not PER", "counterfactual_pred": "PER" if b else "not PER",
                             "flipped": True, "source": source_of[k]})
    recall = {g: float(sum(h) / len(h)) for g, h in hits.items() if h}
    return {"flip_rate": flips / len(pairs) if pairs else None, "n_pairs": len(pairs),
            "per_recall": recall, "per_recall_gap": (max(recall.values()) - min(recall.values())) if recall else None,
            "by_source": {s: {"n_pairs": v["n_pairs"], "flip_rate": v["flips"] / v["n_pairs"]} for s, v in by_source.items()},
            "worst_examples": examples}


def name_swap_probe(tagger, frame, seed: int = 0, min_pairs: int = MIN_PAIRS) -> dict:
    rng = random.Random(seed)
    found = person_slots(frame)
    slots = list(found)
    rng.shuffle(slots)
    slots = slots[:MAX_SENTENCES]
    templates = [(t.replace("{name}", "NAME").split(), None) for t in TEMPLATES]
    template_slots = [(tokens, tokens.index("NAME"), tokens.index("NAME") + 1) for tokens, _ in templates]
    axes = {}
    for axis, groups in NAME_GROUPS.items():
        pairs = build_pairs(slots, groups, rng)
        sources = ["test_texts"] * len(pairs)
        if len(pairs) < min_pairs:  # too few real sentences: the templates as well, several names each
            extra = build_pairs(template_slots * 4, groups, rng)
            pairs, sources = pairs + extra, sources + ["templates"] * len(extra)
        axes[axis] = {**score_axis(tagger, pairs, sources), "gated": len(pairs) >= min_pairs,
                      "source": "both" if slots and len(sources) > len(slots) else ("test_texts" if slots else "templates")}
    gated = {a: v for a, v in axes.items() if v["gated"] and v["flip_rate"] is not None}
    worst = max(gated, key=lambda a: gated[a]["flip_rate"]) if gated else None
    n_pairs = sum(v["n_pairs"] for v in axes.values())
    pooled = sum((v["flip_rate"] or 0) * v["n_pairs"] for v in axes.values()) / n_pairs if n_pairs else None
    return {"probe": "person_name_swap", "flip_rate": pooled, "n_pairs": n_pairs, "min_pairs": min_pairs,
            "max_axis_flip_rate": gated[worst]["flip_rate"] if worst else None, "worst_axis": worst,
            "n_texts": len(frame), "n_texts_with_terms": len(found), "axes": axes,
            "worst_examples": [e for v in axes.values() for e in v["worst_examples"]][:N_WORST]}


def render_name_probe_report(bias: dict, gate: dict, thresholds: dict) -> str:
    """A short Markdown report of the name-swap probe (the tagger's bias report)."""
    probe = bias.get("counterfactual") or {}
    lines = ["# Bias and fairness report (tagger)", "",
             f"Gate: **{'passed' if gate.get('passed') else 'rejected'}**"
             + (": " + "; ".join(gate.get("reasons") or []) if gate.get("reasons") else "."), "",
             "## Person-name swaps", "",
             f"Names of one group swapped for another's in {probe.get('n_texts_with_terms', 0)} test sentences with a "
             f"PER entity (and templates where too few): a pair flips when the name is found as PER in one version "
             f"only. Limit: {thresholds.get('max_flip_rate')} on the worst gated axis.", "",
             "| axis | pairs | flip rate | PER recall by group | gap | gated | source |", "|---|---|---|---|---|---|---|"]
    for axis, a in (probe.get("axes") or {}).items():
        recall = ", ".join(f"{g} {r:.3f}" for g, r in a["per_recall"].items())
        gap = "–" if a["per_recall_gap"] is None else f"{a['per_recall_gap']:.3f}"
        rate = "–" if a["flip_rate"] is None else f"{a['flip_rate']:.3f}"
        lines.append(f"| {axis} | {a['n_pairs']} | {rate} | {recall} | {gap} | {'yes' if a['gated'] else 'no'} | {a['source']} |")
    lines += ["", "## Worst examples", ""]
    for e in probe.get("worst_examples") or []:
        lines.append(f"- `{e['original']}` ({e['original_pred']}) vs `{e['counterfactual']}` ({e['counterfactual_pred']})")
    if not probe.get("worst_examples"):
        lines.append("No pair flipped.")
    return "\n".join(lines) + "\n"
