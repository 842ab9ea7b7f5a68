"""Summaries against references: ROUGE (the `rouge-score` package, Google's re-implementation of ROUGE-1.5.5),
extractive baselines scored the same way, a faithfulness check and the lowest-scoring examples.

No downloads at run time: ROUGE-Lsum needs one sentence per line, and nltk's punkt splitter needs data files,
so `sentences` splits on sentence-final punctuation followed by white space and on line breaks (a
dialogue's turns), which is what the summaries and sources here have.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
TURN = re.compile(r"^\s*(#?[A-Z][\w]*#?\s?\d*#?|[A-Z][\w .'-]{0,24}):\s*(.*)$")
NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")
# a capitalised word not at the start of a sentence: a name, a product, a place (what the faithfulness check
# looks for); the turn markers of dialogue data (#Person1#) are not names
NAME = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-z]+(?:[A-Z][a-z]+)*\b")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE_END.split(text or "") if s and s.strip()]


def scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True, split_summaries=False)


def per_example(predictions: Sequence[str], references: Sequence[str]) -> dict[str, np.ndarray]:
    """F-measure per example and ROUGE type (Lsum on the sentences joined by newlines)."""
    s = scorer()
    out = {t: np.zeros(len(predictions)) for t in ROUGE_TYPES}
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        scores = s.score("\n".join(sentences(ref)), "\n".join(sentences(pred)))
        for t in ROUGE_TYPES:
            out[t][i] = scores[t].fmeasure
    return out


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    scores = per_example(predictions, references)
    return {t: round(float(v.mean()), 4) if len(v) else float("nan") for t, v in scores.items()}


def lead(text: str, n: int = 1) -> str:
    """The first n sentences: the classic extractive baseline (lead-3 on news articles, lead-1 for one-line targets)."""
    return " ".join(sentences(text)[:n])


def turns(text: str) -> list[str]:
    """A dialogue's turns without their speaker tags; [] when the text is not a dialogue (under two tagged lines)."""
    found = [m.group(2).strip() for m in (TURN.match(line) for line in text.splitlines()) if m and m.group(2).strip()]
    return found if len(found) >= 2 else []


def longest_turn(text: str) -> str:
    found = turns(text)
    return max(found, key=lambda t: len(t.split())) if found else lead(text)


def baselines(sources: Sequence[str], references: Sequence[str], lead_n: int = 1) -> dict[str, dict]:
    """Lead-n on every source, and the longest turn when most sources are dialogues."""
    out = {f"lead_{lead_n}": rouge([lead(s, lead_n) for s in sources], references)}
    if sum(bool(turns(s)) for s in sources) * 2 > len(sources):
        out["longest_turn"] = rouge([longest_turn(s) for s in sources], references)
    return out


def unsupported(summary: str, source: str) -> dict[str, list[str]]:
    """Numbers and capitalised names in a summary that its source does not contain (case-insensitive for names)."""
    source_numbers = set(NUMBER.findall(source))
    source_words = {w.lower() for w in re.findall(r"\w+", source)}
    numbers = [n for n in NUMBER.findall(summary) if n not in source_numbers]
    names = [n for n in NAME.findall(summary) if n.lower() not in source_words]
    return {"numbers": numbers, "names": names}


def faithfulness(summaries: Sequence[str], sources: Sequence[str], worst: int = 5) -> dict:
    """Rates of summaries with an unsupported number / name, the shares of generated numbers and names that are
    unsupported, and the summaries with the most unsupported items."""
    found = [unsupported(m, s) for m, s in zip(summaries, sources)]
    n = max(len(found), 1)
    numbers = sum(len(NUMBER.findall(m)) for m in summaries)
    names = sum(len(NAME.findall(m)) for m in summaries)
    bad_numbers, bad_names = sum(len(f["numbers"]) for f in found), sum(len(f["names"]) for f in found)
    order = sorted(range(len(found)), key=lambda i: -(len(found[i]["numbers"]) + len(found[i]["names"])))
    return {"unsupported_number_rate": round(sum(bool(f["numbers"]) for f in found) / n, 4),
            "unsupported_name_rate": round(sum(bool(f["names"]) for f in found) / n, 4),
            "unsupported_number_share": round(bad_numbers / numbers, 4) if numbers else 0.0,
            "unsupported_name_share": round(bad_names / names, 4) if names else 0.0,
            "numbers_generated": numbers, "names_generated": names,
            "worst": [{"index": i, "summary": summaries[i], **found[i]} for i in order[:worst]
                      if found[i]["numbers"] or found[i]["names"]]}


def lowest(predictions: Sequence[str], references: Sequence[str], sources: Sequence[str],
           scores: np.ndarray, k: int = 5) -> list[dict]:
    order = np.argsort(scores, kind="stable")[:k]
    return [{"index": int(i), "rougeL": round(float(scores[i]), 4), "reference": references[i],
             "summary": predictions[i], "source": sources[i][:500]} for i in order]


def lengths(predictions: Sequence[str], references: Sequence[str]) -> dict:
    gen = np.array([len(p.split()) for p in predictions])
    ref = np.array([len(r.split()) for r in references])
    return {"generated_words_mean": round(float(gen.mean()), 2) if len(gen) else 0.0,
            "reference_words_mean": round(float(ref.mean()), 2) if len(ref) else 0.0,
            "length_ratio": round(float(gen.sum() / max(ref.sum(), 1)), 4),
            "empty_summaries": int((gen == 0).sum())}


def bootstrap_interval(scores: np.ndarray, rounds: int = 1000, seed: int = 0, level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of a mean (examples resampled with replacement)."""
    rng = np.random.default_rng(seed)
    means = rng.choice(scores, size=(rounds, len(scores)), replace=True).mean(axis=1)
    tail = (1 - level) / 2
    return [round(float(np.quantile(means, tail)), 4), round(float(np.quantile(means, 1 - tail)), 4)]
