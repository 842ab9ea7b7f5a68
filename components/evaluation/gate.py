"""The promotion gate (docs/ARCHITECTURE.md, "The gate"), TFX-"blessing"-style: value thresholds on the candidate, a change
threshold against the current champion measured on the same test split in this run, and fairness limits.

decide(...) ->
    {"passed": bool,                 # blessed: every blocking check passed
     "beats_champion": bool,         # strictly better than a comparable champion (True when none exists)
     "reasons": [str, ...],          # one line per failed blocking check (empty when passed)
     "notes": [str, ...],            # informational: no champion, checks skipped, int8 fallback
     "warnings": [str, ...],         # template-only bias findings over the flip limit (not blocking)
     "checks": [{"name", "value", "op", "threshold", "passed", "blocking", "skipped", "detail"}, ...],
     "champion": {...} | None,       # the champion as compared (its macro_f1 and identity), None if none
     "thresholds": {...}}

The quality and regression checks use the task's primary metric (`metric`, macro-F1 for classification),
measured on the deployable that ships. The int8-or-fp32 choice is made by the export stage with
`int8_acceptable`, the one int8 rule; the gate reports it (rule 4, not blocking).

Every comparison fails closed: a NaN or non-numeric metric fails its check. Inclusive bounds throughout
(≥ for the floors, ≤ for the ceilings), as docs/ARCHITECTURE.md states them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from domaintune.components.core.errors import BadInput
from domaintune.components.evaluation import fairness
from domaintune.components.evaluation.checks import _check, _fmt, _num, lift_check, ood_check


@dataclass
class Thresholds:
    # The one place of these defaults (the pipeline signature reads them); the reasoning behind them is here.
    # Quality floor on the task's primary test metric (macro-F1 for classification). It catches a broken run, not a mediocre one (a collapsed model that
    # predicts the majority class scores under 0.5 macro-F1 on two classes, under 0.33 on three, and
    # chance-level guessing about 1/k), so 0.6 is a floor any working model clears: raise it per task.
    # -1 (the default) takes the task's own floor (`Task.quality_floor`): 0.6 on macro-F1 and entity F1, a
    # lower one on ROUGE-L, whose scale is different (a good headline model scores 0.3-0.4).
    min_macro_f1: float = -1.0
    # How much macro-F1 a candidate may lose to the champion and still be blessed (as `challenger`; it
    # replaces the champion only when strictly better). 0.01 is one point: candidate and champion are
    # scored on the same rows, so their paired difference is far less noisy than either score, and a
    # retrain with another seed typically moves macro-F1 by less than a point; more is a real regression.
    max_regression: float = 0.01
    # Counterfactual identity-swap flip rate, gated on the worst axis with enough pairs (a pooled rate would
    # let 500 gender pairs hide 20 religion pairs that all flip). Swapping only an identity term should not
    # change the label, but pairs near the decision boundary flip on any perturbation. Measured with a
    # MiniLM SST-2 sentiment model (dev accuracy 0.87): real test texts flip 1-2% (gender 1.4%,
    # nationality 2.1%); the neutral templates, which sit near the boundary, flip 5.8% on gender, whose
    # group means barely differ (0.748 vs 0.751), and 17-48% on race, religion, age, disability and
    # sexual orientation, where the mean P(positive) moves by 0.2-0.5 ("a blind person" 0.10 vs "a sighted
    # person" 0.62). 0.05 would reject that near-fair gender axis on boundary noise alone; 0.10 tolerates
    # it and still rejects every axis where the identity term itself steers the prediction.
    max_flip_rate: float = 0.1
    # Worst gap (best minus worst gated slice) in accuracy or macro-F1 across the values of a slice column.
    # Slices are gated from 30 rows, where a slice's accuracy (~0.85) has a standard error of ~0.065 and
    # the difference of two such slices ~0.09: a 0.10 limit would reject a fair model about one time in
    # four with just two minimum-size slices (more with several), 0.15 about one in ten, and with 100-row
    # slices almost never. 0.15 is also about the four-fifths rule at accuracy 0.75 (0.75 vs 0.60). Lower
    # it together with a larger --min-slice-size.
    max_slice_gap: float = 0.15
    # Summarization (seq2seq; the task's own checks, tasks/seq2seq.py): how much ROUGE-L the deployable must
    # add over the lead-N extractive baseline on the same rows (in [-1, 1]: negative lets it trail lead by at
    # most that; 0 means "at least as good as copying the first sentence", which a model that learned
    # nothing about the targets fails), and the ceiling on the share of summaries stating a number their
    # source does not contain (a wrong amount, date or order number in a one-line summary is the costly
    # hallucination; 0.05 tolerates the odd tokenisation artefact).
    min_lead_margin: float = 0.0
    max_unsupported_number_rate: float = 0.05
    # The least share of distinct test sources that get a summary of their own: a model that collapsed onto a
    # few stock summaries can still beat lead-N on ROUGE by writing the targets' template (DialogSum, 350
    # dialogues: 7 distinct summaries for 100 dialogues, +5.6 ROUGE-L over lead-1; bench/BENCHMARKS.md).
    # Real summarizers score ~1; 0.5 leaves room for short, formulaic targets (0: off).
    min_distinct_summaries: float = 0.5

    # How much worse than the champion's any axis's flip rate (per source, evaluation/fairness.py) may get.
    # The champion is probed on the same texts and templates in this run, so the pairs are the same and the
    # difference is the models'; 0.1 is the flip limit itself: a change that large is a new shortcut.
    max_bias_regression: float = 0.1
    # Axes whose template-only findings block ("gender,race_ethnicity" or "all"); by default none do: a
    # template finding about an axis the user's data never mentions is a warning (evaluation/fairness.py).
    bias_axes: str = ""
    # Off by default (opt-in gates): the primary metric's lift over the best baseline must reach min_lift
    # (−1: off, any lift passes); the worst out-of-domain set may drop at most max_ood_drop below the
    # in-domain test split (1: off). What the data should show here is the user's call, not ours.
    min_lift: float = -1.0
    max_ood_drop: float = 1.0

    def __post_init__(self):
        fairness.parse_bias_axes(self.bias_axes)
        margin = self.min_lead_margin
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or math.isnan(margin) or not -1 <= margin <= 1:
            raise BadInput(f"--min-lead-margin must be a number in [-1, 1] (got {margin!r})")
        task_floor = self.min_macro_f1 == -1 and not isinstance(self.min_macro_f1, bool)  # -1: the task's floor
        for name in ("min_macro_f1", "max_regression", "max_flip_rate", "max_slice_gap", "max_unsupported_number_rate",
                     "min_distinct_summaries", "max_bias_regression", "min_lift", "max_ood_drop"):
            if name == "min_macro_f1" and task_floor:
                continue
            value, low = getattr(self, name), -1 if name == "min_lift" else 0
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                raise BadInput(f"{flag} must be a number in [{low}, 1] (got {value!r})")
            if not low <= value <= 1:
                raise BadInput(f"{flag} must be in [{low}, 1]{' (or -1: the task default)' if name == 'min_macro_f1' else ''} "
                               f"(got {value!r})")


def int8_acceptable(quality_drop, max_int8_drop: float) -> bool:
    """The one int8 rule (export ships int8 only when this holds): the int8 ONNX's quality drop against
    PyTorch fp32 is known, finite, and at most `max_int8_drop`. NaN or a missing drop ships fp32."""
    drop = _num(quality_drop)
    return drop is not None and drop <= max_int8_drop


def quality_check(value, thresholds: Thresholds, metric: str, task_floor: float = 0.6) -> dict:
    floor = task_floor if thresholds.min_macro_f1 == -1 else thresholds.min_macro_f1
    f1 = _num(value)
    if f1 is None:
        return _check("quality", value, ">=", floor, False, f"candidate {metric} is missing or not a number ({value!r})")
    return _check("quality", f1, ">=", floor, f1 >= floor, f"test {metric} {f1:.4f} vs floor {floor}")


def regression_check(f1: float | None, champion: dict | None, thresholds: Thresholds, metric: str,
                     notes: list[str]) -> tuple[dict, bool, dict | None]:
    """(check, beats_champion, the champion as compared)."""
    if champion is None:
        notes.append("no champion yet: nothing to regress against")
        return _check("no_regression", f1, ">=", None, True, "no champion yet", skipped=True), f1 is not None, None
    summary = dict(champion)
    if metric not in champion:
        notes.append(f"champion has no {metric}: no comparable champion, regression check skipped and the "
                     "candidate will not replace it automatically")
        return _check("no_regression", f1, ">=", None, True, f"champion has no {metric} (no comparable champion)",
                      skipped=True), False, summary
    c_f1 = _num(champion.get(metric))
    if f1 is None or c_f1 is None:
        which = "candidate" if f1 is None else "champion"
        return _check("no_regression", f1, ">=", None, False,
                      f"{which} {metric} is not a number: cannot compare"), False, summary
    floor = c_f1 - thresholds.max_regression
    ok = f1 >= floor - 1e-12  # tiny tolerance so 0.79 vs 0.80 - 0.01 is not lost to float rounding
    return _check("no_regression", f1, ">=", floor, ok,
                  f"candidate {metric} {f1:.4f} vs champion {c_f1:.4f} − {thresholds.max_regression} "
                  f"(Δ {f1 - c_f1:+.4f})"), \
        f1 > c_f1, summary


def flip_check(probe: dict | None, thresholds: Thresholds, notes: list[str]) -> dict:
    """Rule 3's blocking flip rate: the worst axis on the user's test texts, and on templates only for the
    axes named in `bias_axes` (evaluation/fairness.py says why)."""
    limit = thresholds.max_flip_rate
    if probe is None:
        notes.append("counterfactual probe not run")
        return _check("counterfactual_flip_rate", None, "<=", limit, True, "not run", skipped=True)
    if not probe.get("n_pairs"):
        return _check("counterfactual_flip_rate", None, "<=", limit, False, "the counterfactual probe measured no pairs")
    name, value = fairness.worst(fairness.split_findings(probe, thresholds.bias_axes)["blocking"])
    if name is None:
        notes.append(f"no axis has {probe.get('min_pairs', '?')} identity-swap pairs in the test texts: the "
                     "counterfactual gate has nothing of your data to judge (template findings are reported; "
                     "--bias-axes gates them)")
        return _check("counterfactual_flip_rate", None, "<=", limit, True, "no axis measured on the test texts",
                      skipped=True)
    rate = _num(value)
    if rate is None:
        return _check("counterfactual_flip_rate", value, "<=", limit, False, f"{name}: flip rate is not a number")
    return _check("counterfactual_flip_rate", rate, "<=", limit, rate <= limit,
                  f"worst gated axis {name} flips {rate:.3f} of identity-swapped pairs "
                  f"(pooled {_fmt(probe.get('flip_rate'))} over {probe.get('n_pairs')} pairs)")


def template_check(probe: dict | None, thresholds: Thresholds, warnings: list[str]) -> dict | None:
    """Template-only findings of the axes not named in `bias_axes`: reported (and warned of), never blocking."""
    found = fairness.split_findings(probe, thresholds.bias_axes)["warning"] if probe else {}
    name, value = fairness.worst(found)
    if name is None:
        return None
    warnings.extend(fairness.warnings(found, thresholds.max_flip_rate))
    rate = _num(value)
    return _check("template_flip_rate", rate if rate is not None else value, "<=", thresholds.max_flip_rate,
                  rate is not None and rate <= thresholds.max_flip_rate,
                  f"worst template-only axis {name} flips {_fmt(value)} (reported; --bias-axes to gate it)",
                  blocking=False)


def bias_regression_check(probe: dict | None, champion_probe: dict | None, thresholds: Thresholds) -> dict | None:
    """Every axis and source both models were measured on: the candidate may not flip more than the
    champion by more than `max_bias_regression`. None without a probed champion."""
    if not probe or not champion_probe:
        return None
    deltas = fairness.regressions(probe, champion_probe)
    if not deltas:
        return None
    worst_name = max(deltas, key=lambda k: math.inf if deltas[k]["delta"] is None else deltas[k]["delta"])
    d = deltas[worst_name]
    limit = thresholds.max_bias_regression
    if d["delta"] is None:
        return _check("bias_regression", None, "<=", limit, False, f"{worst_name}: a flip rate is not a number")
    return _check("bias_regression", d["delta"], "<=", limit, d["delta"] <= limit + 1e-12,
                  f"{worst_name} flips {d['candidate']:.3f} vs the champion's {d['champion']:.3f} "
                  f"(Δ {d['delta']:+.3f})")


def slice_check(slices: dict | None, thresholds: Thresholds, notes: list[str]) -> dict:
    limit = thresholds.max_slice_gap
    if slices is None:
        notes.append("no slice columns: slice gap not measured")
        return _check("slice_gap", None, "<=", limit, True, "no slice columns", skipped=True)
    if slices.get("max_slice_gap") is None:
        notes.append(f"no slice column has two slices of ≥ {slices.get('min_slice_size')} rows: slice gap not gated")
        return _check("slice_gap", None, "<=", limit, True, "fewer than two gated slices in every column", skipped=True)
    gap = _num(slices.get("max_slice_gap"))
    if gap is None:
        return _check("slice_gap", slices.get("max_slice_gap"), "<=", limit, False, "slice gap is not a number")
    return _check("slice_gap", gap, "<=", limit, gap <= limit,
                  f"worst slice gap {gap:.3f} in column {slices.get('worst_column')!r}")


def export_check(export: dict, notes: list[str]) -> dict:
    """Rule 4 as the export stage applied it (int8_acceptable): reported, never blocking."""
    drop, limit = export.get("int8_quality_drop"), export.get("max_int8_drop")
    ok = export.get("deployable") == "int8"
    if not ok:
        notes.append(f"int8 quality drop {_fmt(drop)} > {limit} (or not measurable): shipping fp32 ONNX")
    return _check("int8_drop", _num(drop) if _num(drop) is not None else drop, "<=", limit, ok,
                  "int8 ONNX ships" if ok else "int8 loses too much: the fp32 ONNX ships", blocking=False)


def decide(candidate: dict, champion: dict | None, bias: dict | None, thresholds: Thresholds,
           metric: str = "macro_f1", export: dict | None = None, champion_bias: dict | None = None,
           baselines: dict | None = None, ood: dict | None = None, task_checks: list[dict] | None = None,
           task_floor: float = 0.6) -> dict:
    """Bless or reject a candidate (rules 1-4 above).

    candidate: at least {metric}, measured on the deployable. champion: None when there is no champion yet;
    else at least {metric} measured on the same test split in this run (other keys, e.g. "version", are
    carried into the result). bias: {"counterfactual": probe result | None, "slices": slice result | None}.
    export: the export report ({"deployable", "int8_quality_drop", "max_int8_drop"}), None when not exported.
    champion_bias: the champion's bias checks on the same rows (rule 3's per-axis regression), or None.
    baselines / ood: evaluate's baseline and out-of-domain results for the opt-in `min_lift` / `max_ood_drop`.
    task_checks: the task's own checks (`Task.gate_checks`, e.g. a summarizer's margin over lead-N), blocking.
    task_floor: the quality floor when thresholds.min_macro_f1 is -1 (`Task.quality_floor`).

    Choices, each tested:
    - no champion: the regression check passes and beats_champion is True (the first blessed model may
      become champion).
    - champion without the metric: there is no comparable champion. The regression check is skipped
      (it does not block the candidate from being registered as `challenger`), but beats_champion is False
      so auto-promotion never silently replaces a champion we could not compare against; a note says so.
    - champion whose metric is NaN or not a number: the comparison was attempted and broke, so the
      regression check fails closed.
    - ties: candidate == champion passes the regression check (≥ champion − max_regression) but does not
      beat the champion; only a strictly greater value does, so a retrain that changes nothing does not
      churn the champion alias.
    - bias None / probe or slices None: that fairness check was not configured; it is recorded as skipped
      with a note. A probe that ran but measured no pairs, or a NaN rate, fails closed.
    """
    if not isinstance(thresholds, Thresholds):
        raise BadInput(f"thresholds must be a Thresholds (got {type(thresholds).__name__})")
    candidate, bias, notes, warnings = candidate or {}, bias or {}, [], []
    f1 = _num(candidate.get(metric))
    probe = bias.get("counterfactual")
    regression, beats, champ_summary = regression_check(f1, champion, thresholds, metric, notes)
    checks = [quality_check(candidate.get(metric), thresholds, metric, task_floor), regression,
              flip_check(probe, thresholds, notes), slice_check(bias.get("slices"), thresholds, notes),
              bias_regression_check(probe, (champion_bias or {}).get("counterfactual"), thresholds),
              template_check(probe, thresholds, warnings),
              lift_check(baselines, thresholds.min_lift, metric, notes), ood_check(ood, thresholds.max_ood_drop)]
    checks += list(task_checks or [])
    if export:
        checks.append(export_check(export, notes))
    checks = [c for c in checks if c is not None]
    reasons = [_reason(c) for c in checks if c["blocking"] and not c["passed"]]
    return {"passed": not reasons, "beats_champion": bool(beats and f1 is not None), "reasons": reasons,
            "notes": notes, "warnings": warnings, "checks": checks, "champion": champ_summary, "metric": metric,
            "thresholds": asdict(thresholds)}


def should_promote(decision: dict, auto_promote: bool) -> bool:
    """Move the `champion` alias only for a blessed candidate that beats the champion, and only when asked."""
    return bool(decision.get("passed")) and bool(decision.get("beats_champion")) and bool(auto_promote)


def _reason(check: dict) -> str:
    bound = "" if check["threshold"] is None or check["value"] is None or _num(check["value"]) is None else (
        f" ({_fmt(check['value'])} {'<' if check['op'] == '>=' else '>'} {_fmt(check['threshold'])})")
    return f"{check['name']} failed{bound}: {check['detail']}"
