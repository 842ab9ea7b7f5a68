"""Which counterfactual findings block a candidate (gate rule 3), and which are reported as warnings.

The probe (evaluation/bias/) measures each identity axis on two sources: the user's own test texts
(`test_texts`: a real sentence of the user's data with "he" swapped for "she") and neutral templates
(`templates`: "My neighbor is a blind person." vs "... a sighted person."), the latter only where the test
texts carry too few terms. Template sentences are far from most domains' data: an SST-2, a full-data SST-2
and a Financial PhraseBank model, none trained on data that mentions disability, flipped 0.56-0.69 of the
disability template pairs, so a gate blocking on templates rejected nearly every sentiment model and was
switched off. Hence:

- blocking by default: the axes measured on the user's test texts (with at least `min_pairs` pairs), and
  any axis (either source) getting worse than the champion's by more than `max_bias_regression`;
- template findings block only for the axes the user names (`bias_axes`: "gender,race_ethnicity" or
  "all"); for the others they are warnings (bias report, model card, summary.json, the end of `run`).

A probe result's axis has `by_source` {source: {"flip_rate", "n_pairs"}} (classification and tagger probes).
"""
from __future__ import annotations

import math

from domaintune.components.core.errors import BadInput
from domaintune.components.core.params import csv_list

DATA, TEMPLATES = "test_texts", "templates"
ALL = "all"


def parse_bias_axes(value: str) -> list[str] | str:
    """`--bias-axes`: "" (none), "all", or comma-separated axis names."""
    names = csv_list(value or "")
    if ALL in names:
        if len(names) > 1:
            raise BadInput(f"--bias-axes: 'all' stands alone (got {value!r})")
        return ALL
    return names


def check_bias_axes(value: str, axes) -> None:
    """Reject a named axis the identity terms do not have (the error lists those they do)."""
    named = parse_bias_axes(value)
    unknown = [] if named == ALL else [a for a in named if a not in set(axes)]
    if unknown:
        raise BadInput(f"--bias-axes: unknown axis {unknown[0]!r} (axes: {', '.join(sorted(axes))}, or all)")


def _rate(value) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)  # NaN stays NaN: the callers fail closed on it
    except (TypeError, ValueError):
        return None


def measured(probe: dict | None) -> dict[tuple[str, str], dict]:
    """(axis, source) -> {"flip_rate", "n_pairs"} for every source with at least the probe's `min_pairs`."""
    probe = probe or {}
    min_pairs = int(probe.get("min_pairs") or 1)
    out = {}
    for axis, a in (probe.get("axes") or {}).items():
        for source, s in (a.get("by_source") or {}).items():
            if int(s.get("n_pairs") or 0) >= min_pairs:
                out[(axis, source)] = {"flip_rate": s.get("flip_rate"), "n_pairs": int(s["n_pairs"])}
    return out


def split_findings(probe: dict | None, bias_axes: str) -> dict:
    """{"blocking": {...}, "warning": {...}} keyed "axis (source)": what rule 3 gates and what it reports."""
    named = parse_bias_axes(bias_axes)
    blocking, warning = {}, {}
    for (axis, source), m in measured(probe).items():
        gated = source == DATA or named == ALL or axis in named
        (blocking if gated else warning)[f"{axis} ({source})"] = m
    return {"blocking": blocking, "warning": warning}


def worst(findings: dict) -> tuple[str | None, float | None]:
    """The finding with the highest flip rate (a NaN rate is the worst: it fails closed)."""
    if not findings:
        return None, None
    def key(k):
        r = _rate(findings[k]["flip_rate"])
        return math.inf if r is None or math.isnan(r) else r
    name = max(findings, key=key)
    return name, findings[name]["flip_rate"]


def warnings(findings: dict, limit: float) -> list[str]:
    """One line per template finding over the limit that does not block."""
    out = []
    for name, m in sorted(findings.items(), key=lambda kv: -(_rate(kv[1]["flip_rate"]) or 0)):
        rate = _rate(m["flip_rate"])
        if rate is None or math.isnan(rate) or rate > limit:
            axis = name.split(" ")[0]
            shown = "NaN" if rate is None or math.isnan(rate) else f"{rate:.3f}"
            out.append(f"bias: {name} flips {shown} of {m['n_pairs']} identity-swapped pairs "
                       f"(> {limit}) in the probe's template sentences, not your test texts: reported, not blocking "
                       f"(--bias-axes {axis} gates it)")
    return out


def regressions(probe: dict | None, champion_probe: dict | None) -> dict:
    """"axis (source)" -> {"candidate", "champion", "delta"} for every finding both measured."""
    cand, champ = measured(probe), measured(champion_probe)
    out = {}
    for key in sorted(set(cand) & set(champ)):
        a, b = _rate(cand[key]["flip_rate"]), _rate(champ[key]["flip_rate"])
        delta = None if a is None or b is None or math.isnan(a) or math.isnan(b) else a - b
        out[f"{key[0]} ({key[1]})"] = {"candidate": a, "champion": b, "delta": delta}
    return out
