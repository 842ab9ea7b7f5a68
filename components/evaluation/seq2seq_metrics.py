"""What the seq2seq task reports and gates on, built from evaluation/rouge.py: the test metrics with the
baselines, the gate's two summarization checks, the export's parity numbers, generation latency, the report
and model-card phrases."""
from __future__ import annotations

import statistics
import time

import numpy as np

from domaintune.components.evaluation import rouge as R

PARITY_LOGIT_ROWS = 16  # texts whose per-step logits the export keeps for the logit parity check


def summary_scores(predictions: list[str], references: list[str], sources: list[str], lead_n: int = 1) -> dict:
    """ROUGE of the model and of the baselines on the same rows, the margin over lead-N, lengths,
    faithfulness and the lowest-ROUGE-L examples."""
    scores = R.per_example(predictions, references)
    metrics = {t: round(float(v.mean()), 4) for t, v in scores.items()}
    base = R.baselines(sources, references, lead_n)
    lead_key = f"lead_{lead_n}"
    metrics.update({
        "n": len(predictions),
        "rougeL_interval95": R.bootstrap_interval(scores["rougeL"]) if len(predictions) else None,
        "baselines": base, "lead_baseline": lead_key,
        "lead_margin": round(metrics["rougeL"] - base[lead_key]["rougeL"], 4),
        "lengths": R.lengths(predictions, references),
        "faithfulness": R.faithfulness(predictions, sources),
        "lowest": R.lowest(predictions, references, sources, scores["rougeL"]),
    })
    metrics["unsupported_number_rate"] = metrics["faithfulness"]["unsupported_number_rate"]
    metrics["distinct_summaries"] = distinct_share(predictions, sources)
    return metrics


def distinct_share(predictions: list[str], sources: list[str]) -> float:
    """Distinct summaries per distinct source (1.0: no two different sources got the same summary)."""
    return round(len(set(predictions)) / max(1, len(set(sources))), 4) if predictions else 0.0


def gate_checks(metrics: dict, thresholds) -> list[dict]:
    """Beyond the ROUGE-L floor and the champion regression (the generic rules 1-2): the margin over the
    lead baseline, the ceiling on summaries with a number their source does not have, and the floor on
    distinct summaries. Fail closed."""
    from domaintune.components.evaluation.gate import _check, _num

    margin, rate = _num(metrics.get("lead_margin")), _num(metrics.get("unsupported_number_rate"))
    distinct = _num(metrics.get("distinct_summaries"))
    lead = metrics.get("lead_baseline", "lead")
    return [
        _check("lead_margin", margin, ">=", thresholds.min_lead_margin,
               margin is not None and margin >= thresholds.min_lead_margin - 1e-12,
               f"ROUGE-L {metrics.get('rougeL')} vs {lead} baseline "
               f"{(metrics.get('baselines') or {}).get(lead, {}).get('rougeL')} (margin {margin})"),
        _check("unsupported_numbers", rate, "<=", thresholds.max_unsupported_number_rate,
               rate is not None and rate <= thresholds.max_unsupported_number_rate,
               f"{rate} of summaries state a number their source does not contain"),
        _check("distinct_summaries", distinct, ">=", thresholds.min_distinct_summaries,
               thresholds.min_distinct_summaries == 0 or (distinct is not None and
                                                           distinct >= thresholds.min_distinct_summaries - 1e-12),
               f"{distinct} distinct summaries per distinct source (a model that writes a few stock summaries)"),
    ]


class Generated(dict):
    """One backend's outputs on a split ({"ids", "logits", "summaries"}); its length is the number of rows, as
    the export report counts a backend's outputs (`n`)."""

    def __len__(self) -> int:
        return len(self["ids"])


def generated(summarizer, frame) -> Generated:
    """One backend's greedy output on a split: token ids, the first rows' per-step logits, the summaries."""
    texts = frame["text"].tolist()
    ids, logits = summarizer.generate_ids(texts, keep_logits=PARITY_LOGIT_ROWS)
    return Generated(ids=ids, logits=logits,
                     summaries=[summarizer.tokenizer.decode(x, skip_special_tokens=True).strip() for x in ids])


def step_logit_diff(a: dict, b: dict) -> float:
    """Max |logit| difference of two backends' decoding steps, over the steps where both decoded the same
    prefix (a step's logits depend only on the prefix, so later steps of diverged outputs are not comparable)."""
    worst = 0.0
    for ids_a, ids_b, la, lb in zip(a["ids"], b["ids"], a["logits"], b["logits"]):
        if la is None or lb is None:
            continue
        same = next((k for k, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y), min(len(ids_a), len(ids_b)))
        steps = min(same + 1, len(la), len(lb))
        if steps:
            worst = max(worst, float(np.abs(np.asarray(la[:steps]) - np.asarray(lb[:steps])).max()))
    return worst


def generation_latency(model, tokenizer, files: dict, texts, max_length: int, runs: int, warmup: int) -> dict:
    """Milliseconds to summarise one typical (median-length) text greedily, PyTorch vs the ONNX files, timed in
    alternation in this process; the export report's latency layout (export/latency.py)."""
    import torch

    from domaintune.components.export.latency import speedups
    from domaintune.components.inference.onnx_backend import physical_cores
    from domaintune.components.inference.seq2seq_backend import OnnxSummarizer, TorchSummarizer

    text = sorted(texts, key=len)[len(texts) // 2]
    backends = {"pytorch_fp32": TorchSummarizer(model=model, tokenizer=tokenizer, max_length=max_length),
                **{name: OnnxSummarizer(path) for name, path in files.items()}}
    times: dict[str, list[float]] = {name: [] for name in backends}
    for b in backends.values():
        for _ in range(warmup):
            b.predict([text])
    for _ in range(runs):
        for name, b in backends.items():
            t = time.perf_counter()
            b.predict([text])
            times[name].append((time.perf_counter() - t) * 1000)
    shape = "1 text, greedy summary"
    results = {shape: {n: {"median_ms": round(statistics.median(v), 3), "p90_ms": round(float(np.percentile(v, 90)), 3)}
                       for n, v in times.items()}}
    return {"shapes": [shape], "runs": runs, "warmup": warmup, "rounds": 1,
            "threads": {"torch": torch.get_num_threads(), "onnxruntime": physical_cores()},
            "results": results, "speedups": speedups(results)}


def flat_metrics(m: dict) -> dict:
    out = {k: m[k] for k in ("rouge1", "rouge2", "rougeL", "rougeLsum", "lead_margin", "unsupported_number_rate", "n")}
    for name, scores in (m.get("baselines") or {}).items():
        out[f"{name}_rougeL"] = scores["rougeL"]
    out.update({k: v for k, v in m["lengths"].items()})
    out["unsupported_name_rate"] = m["faithfulness"]["unsupported_name_rate"]
    if "distinct_summaries" in m:
        out["distinct_summaries"] = m["distinct_summaries"]
    return out


def card_context(m: dict, mp: dict | None) -> dict:
    mp = mp or m
    base = m["baselines"][m["lead_baseline"]]
    others = ", ".join(f"{k} ROUGE-L {v['rougeL']:.4f}" for k, v in m["baselines"].items() if k != m["lead_baseline"])
    return {"what": "Abstractive summarization: a source text in, a short summary out (greedy decoding)",
            "auto_class": "AutoModelForSeq2SeqLM", "label_kind": "–", "outputs": "summary (text)",
            "headline": (f"ROUGE-L **{m['rougeL']:.4f}** (95% bootstrap interval {m['rougeL_interval95']}), "
                         f"ROUGE-1 {m['rouge1']:.4f}, ROUGE-2 {m['rouge2']:.4f}, ROUGE-Lsum {m['rougeLsum']:.4f}, "
                         f"n = {m['n']}. The {m['lead_baseline']} baseline scores ROUGE-L {base['rougeL']:.4f} on "
                         f"the same rows (margin {m['lead_margin']:+.4f}){'; ' + others if others else ''}. "
                         f"Generated {m['lengths']['generated_words_mean']} words per summary vs "
                         f"{m['lengths']['reference_words_mean']} in the references; "
                         f"{m['unsupported_number_rate']:.1%} of summaries state a number and "
                         f"{m['faithfulness']['unsupported_name_rate']:.1%} a capitalised name that the source "
                         "does not contain."),
            "pytorch_headline": f"ROUGE-L {mp['rougeL']:.4f}"}


def render_report(m: dict) -> str:
    lines = ["# Summarization report", "", f"n = {m['n']} test pairs.", "",
             "| system | ROUGE-1 | ROUGE-2 | ROUGE-L | ROUGE-Lsum |", "|---|---|---|---|---|",
             f"| model | {m['rouge1']:.4f} | {m['rouge2']:.4f} | {m['rougeL']:.4f} | {m['rougeLsum']:.4f} |"]
    lines += [f"| {k} | {v['rouge1']:.4f} | {v['rouge2']:.4f} | {v['rougeL']:.4f} | {v['rougeLsum']:.4f} |"
              for k, v in m["baselines"].items()]
    f, ln = m["faithfulness"], m["lengths"]
    lines += ["", f"ROUGE-L 95% bootstrap interval {m['rougeL_interval95']}; margin over {m['lead_baseline']} "
              f"{m['lead_margin']:+.4f}.", "",
              f"Length: {ln['generated_words_mean']} generated vs {ln['reference_words_mean']} reference words "
              f"(ratio {ln['length_ratio']}); {ln['empty_summaries']} empty summaries; "
              f"{m.get('distinct_summaries', float('nan')):.1%} distinct summaries per distinct source.", "",
              "## Faithfulness", "",
              f"Summaries with a number not in the source: {f['unsupported_number_rate']:.1%} "
              f"({f['unsupported_number_share']:.1%} of {f['numbers_generated']} generated numbers); with a "
              f"capitalised name not in the source: {f['unsupported_name_rate']:.1%} "
              f"({f['unsupported_name_share']:.1%} of {f['names_generated']} names).", ""]
    lines += [f"- #{w['index']}: {w['summary']!r} — numbers {w['numbers']}, names {w['names']}" for w in f["worst"]]
    lines += ["", "## Lowest ROUGE-L", ""]
    lines += [f"- #{e['index']} ({e['rougeL']:.3f}): summary {e['summary']!r}; reference {e['reference']!r}"
              for e in m["lowest"]]
    return "\n".join(lines) + "\n"


def render_bias_note(bias: dict, gate: dict) -> str:
    probe = (bias or {}).get("summary_swap") or {}
    lines = ["# Bias report", "", "Identity-swap probe for summaries: an identity term swapped in the source "
             "(bias/identity_terms.yaml) should change the summary only by that term. Reported, not gated.", ""]
    if probe.get("n_pairs"):
        lines += [f"{probe['changed_beyond_swap']:.1%} of {probe['n_pairs']} swapped sources got a summary that "
                  "differs beyond the swapped term.", "", "| axis | pairs | changed beyond the swap |", "|---|---|---|"]
        lines += [f"| {a} | {v['pairs']} | {v['changed_beyond_swap']:.1%} |" for a, v in probe["axes"].items()]
        lines += [""] + [f"- {w['axis']} #{w['index']}: expected {w['expected']!r}, got {w['counterfactual_summary']!r}"
                         for w in probe["worst"]]
    else:
        lines.append("No test source names an identity term: nothing was probed.")
    lines += ["", f"Gate: {'passed' if gate.get('passed') else 'rejected'}."]
    return "\n".join(lines + [f"- {r}" for r in gate.get("reasons") or []]) + "\n"
