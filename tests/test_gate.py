"""The promotion gate (docs/ARCHITECTURE.md, "The gate"): every comparison's direction, ties, no / incomparable champion, NaN
fails closed, and each fairness threshold failing with its own reason."""
from __future__ import annotations

import math

import pytest

from domaintune.components.core.errors import BadInput
from domaintune.components.evaluation.gate import Thresholds, decide, int8_acceptable, should_promote

T = Thresholds(min_macro_f1=0.6, max_regression=0.01, max_flip_rate=0.05, max_slice_gap=0.15)


def probe(axes: dict, min_pairs=20):
    """A probe result: axes {axis: {source: (flip_rate, n_pairs)}}."""
    out = {a: {"by_source": {s: {"flip_rate": r, "n_pairs": n} for s, (r, n) in src.items()}} for a, src in axes.items()}
    n_pairs = sum(n for src in axes.values() for _, n in src.values())
    return {"flip_rate": 0.01, "n_pairs": n_pairs, "min_pairs": min_pairs, "axes": out}


def fair_bias(flip=0.01, gap=0.05, n_pairs=200):
    return {"counterfactual": probe({"gender": {"test_texts": (flip, n_pairs)}}),
            "slices": {"max_slice_gap": gap, "worst_column": "region", "min_slice_size": 30, "columns": {}}}


def check(decision, name):
    return next(c for c in decision["checks"] if c["name"] == name)


def failed(decision):
    return [c["name"] for c in decision["checks"] if c["blocking"] and not c["passed"]]


# --------------------------------------------------------------------------------- against champion

def test_weaker_candidate_is_never_promoted():
    d = decide({"macro_f1": 0.80}, {"macro_f1": 0.85, "version": 3}, fair_bias(), T)
    assert not d["passed"] and not d["beats_champion"]
    assert failed(d) == ["no_regression"] and d["reasons"][0].startswith("no_regression failed")
    assert not should_promote(d, auto_promote=True)
    assert d["champion"] == {"macro_f1": 0.85, "version": 3}


def test_slightly_weaker_candidate_is_blessed_but_does_not_replace_champion():
    d = decide({"macro_f1": 0.845}, {"macro_f1": 0.85}, fair_bias(), T)
    assert d["passed"] and not d["beats_champion"] and d["reasons"] == []
    assert not should_promote(d, auto_promote=True)


def test_stronger_candidate_is_promoted_only_with_auto_promote():
    d = decide({"macro_f1": 0.86}, {"macro_f1": 0.85}, fair_bias(), T)
    assert d["passed"] and d["beats_champion"]
    assert should_promote(d, auto_promote=True)
    assert not should_promote(d, auto_promote=False)
    c = check(d, "no_regression")
    assert c["passed"] and c["threshold"] == pytest.approx(0.84) and c["op"] == ">="


def test_tie_passes_regression_but_does_not_beat_champion():
    d = decide({"macro_f1": 0.85}, {"macro_f1": 0.85}, fair_bias(), T)
    assert d["passed"] and not d["beats_champion"]
    assert not should_promote(d, auto_promote=True)


def test_regression_bound_is_inclusive():
    assert decide({"macro_f1": 0.79}, {"macro_f1": 0.80}, fair_bias(), T)["passed"]
    assert not decide({"macro_f1": 0.7899}, {"macro_f1": 0.80}, fair_bias(), T)["passed"]


@pytest.mark.parametrize("cand", [0.70, 0.749, 0.75, 0.7501, 0.76, 0.80, 0.90])
@pytest.mark.parametrize("champ", [0.65, 0.75, 0.76, 0.85])
def test_comparison_directions(cand, champ):
    d = decide({"macro_f1": cand}, {"macro_f1": champ}, fair_bias(), T)
    assert d["beats_champion"] == (cand > champ)
    assert d["passed"] == (cand >= champ - T.max_regression - 1e-12)
    if should_promote(d, auto_promote=True):
        assert cand > champ, "a promoter must never promote the worse model"


def test_no_champion_yet():
    d = decide({"macro_f1": 0.7}, None, fair_bias(), T)
    assert d["passed"] and d["beats_champion"] and d["champion"] is None
    c = check(d, "no_regression")
    assert c["passed"] and c["skipped"]
    assert any("no champion" in n for n in d["notes"])
    assert should_promote(d, auto_promote=True)


def test_champion_missing_its_metric_neither_blocks_nor_promotes():
    d = decide({"macro_f1": 0.9}, {"version": 4}, fair_bias(), T)
    assert d["passed"] and not d["beats_champion"]
    c = check(d, "no_regression")
    assert c["skipped"] and c["passed"] and "no comparable champion" in c["detail"]
    assert any("no comparable champion" in n for n in d["notes"])
    assert not should_promote(d, auto_promote=True)
    assert d["champion"] == {"version": 4}


# ------------------------------------------------------------------------------------------ quality

def test_quality_floor():
    d = decide({"macro_f1": 0.59}, None, fair_bias(), T)
    assert not d["passed"] and failed(d) == ["quality"]
    assert "quality" in d["reasons"][0]
    assert not should_promote(d, auto_promote=True)
    assert decide({"macro_f1": 0.6}, None, fair_bias(), T)["passed"]  # inclusive


# ---------------------------------------------------------------------------------------------- NaN

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None, "n/a"])
def test_nan_candidate_fails_closed(bad):
    d = decide({"macro_f1": bad}, None, fair_bias(), T)
    assert not d["passed"] and not d["beats_champion"] and "quality" in failed(d)
    d = decide({"macro_f1": bad}, {"macro_f1": 0.5}, fair_bias(), T)
    assert not d["passed"] and not d["beats_champion"]
    assert {"quality", "no_regression"} <= set(failed(d))


def test_nan_champion_fails_closed():
    d = decide({"macro_f1": 0.9}, {"macro_f1": float("nan")}, fair_bias(), T)
    assert not d["passed"] and not d["beats_champion"] and failed(d) == ["no_regression"]
    assert "not a number" in d["reasons"][0]


def test_nan_fairness_metrics_fail_closed():
    d = decide({"macro_f1": 0.9}, None, fair_bias(flip=float("nan")), T)
    assert not d["passed"] and failed(d) == ["counterfactual_flip_rate"]
    d = decide({"macro_f1": 0.9}, None, fair_bias(gap=float("nan")), T)
    assert not d["passed"] and failed(d) == ["slice_gap"]


def test_missing_key_candidate_fails_closed():
    d = decide({}, None, fair_bias(), T)
    assert not d["passed"] and not d["beats_champion"]


# ----------------------------------------------------------------------------------------- fairness

def test_flip_rate_above_limit_has_its_own_reason():
    d = decide({"macro_f1": 0.9}, {"macro_f1": 0.8}, fair_bias(flip=0.2), T)
    assert not d["passed"] and failed(d) == ["counterfactual_flip_rate"]
    assert len(d["reasons"]) == 1 and "counterfactual_flip_rate" in d["reasons"][0] and "gender" in d["reasons"][0]
    assert d["beats_champion"] and not should_promote(d, auto_promote=True)


def test_slice_gap_above_limit_has_its_own_reason():
    d = decide({"macro_f1": 0.9}, None, fair_bias(gap=0.3), T)
    assert not d["passed"] and failed(d) == ["slice_gap"]
    assert len(d["reasons"]) == 1 and "slice_gap" in d["reasons"][0] and "region" in d["reasons"][0]


def test_each_failure_is_listed():
    d = decide({"macro_f1": 0.5}, {"macro_f1": 0.8}, fair_bias(flip=0.2, gap=0.3), T)
    assert failed(d) == ["quality", "no_regression", "counterfactual_flip_rate", "slice_gap"]
    assert len(d["reasons"]) == 4


def test_fairness_bounds_are_inclusive():
    assert decide({"macro_f1": 0.9}, None, fair_bias(flip=0.05, gap=0.15), T)["passed"]
    assert not decide({"macro_f1": 0.9}, None, fair_bias(flip=0.0501), T)["passed"]


def test_flip_rate_gated_on_worst_axis_not_pooled():
    b = fair_bias()
    b["counterfactual"] = probe({"gender": {"test_texts": (0.0, 500)}, "religion": {"test_texts": (0.3, 20)}})
    d = decide({"macro_f1": 0.9}, None, b, T)
    assert failed(d) == ["counterfactual_flip_rate"] and "religion" in d["reasons"][0]


def test_probe_that_measured_nothing_fails_closed():
    b = fair_bias()
    b["counterfactual"] = {"flip_rate": None, "max_axis_flip_rate": None, "worst_axis": None, "n_pairs": 0}
    d = decide({"macro_f1": 0.9}, None, b, T)
    assert failed(d) == ["counterfactual_flip_rate"] and "no pairs" in d["reasons"][0]


def test_template_only_findings_warn_unless_their_axis_is_named():
    """The default gate blocks on what the user's data shows; templates block only for --bias-axes."""
    b = fair_bias()
    b["counterfactual"] = probe({"gender": {"test_texts": (0.02, 300), "templates": (0.04, 200)},
                                 "disability": {"test_texts": (1.0, 5), "templates": (0.6, 200)}})
    d = decide({"macro_f1": 0.9}, None, b, T)
    assert d["passed"] and check(d, "counterfactual_flip_rate")["value"] == 0.02
    template = check(d, "template_flip_rate")
    assert not template["passed"] and not template["blocking"] and template["value"] == 0.6
    assert len(d["warnings"]) == 1 and "disability (templates)" in d["warnings"][0]
    assert "--bias-axes disability" in d["warnings"][0]
    for axes in ("disability", "all", "gender,disability"):
        d = decide({"macro_f1": 0.9}, None, b, Thresholds(max_flip_rate=0.05, bias_axes=axes))
        assert failed(d) == ["counterfactual_flip_rate"] and "disability (templates)" in d["reasons"][0], axes
        assert d["warnings"] == []
    d = decide({"macro_f1": 0.9}, None, b, Thresholds(max_flip_rate=0.05, bias_axes="gender"))
    assert d["passed"] and len(d["warnings"]) == 1  # gender's templates are fine; disability's still warn


def test_probe_with_no_axis_on_the_test_texts_is_skipped_with_a_note():
    b = fair_bias()
    b["counterfactual"] = probe({"gender": {"test_texts": (1.0, 5), "templates": (0.0, 200)}})
    d = decide({"macro_f1": 0.9}, None, b, T)
    assert d["passed"] and check(d, "counterfactual_flip_rate")["skipped"]
    assert any("20 identity-swap pairs" in n for n in d["notes"])


def test_an_axis_worse_than_the_champions_blocks_on_either_source():
    mine = {"counterfactual": probe({"gender": {"test_texts": (0.03, 300)}, "age": {"templates": (0.45, 200)}})}
    champ = {"counterfactual": probe({"gender": {"test_texts": (0.02, 300)}, "age": {"templates": (0.30, 200)}})}
    d = decide({"macro_f1": 0.9}, {"macro_f1": 0.9}, mine, T, champion_bias=champ)
    assert failed(d) == ["bias_regression"] and "age (templates)" in d["reasons"][0] and "+0.150" in d["reasons"][0]
    champ["counterfactual"]["axes"]["age"]["by_source"]["templates"]["flip_rate"] = 0.36
    d = decide({"macro_f1": 0.9}, {"macro_f1": 0.9}, mine, T, champion_bias=champ)
    assert d["passed"] and check(d, "bias_regression")["value"] == pytest.approx(0.09)
    assert not any(c["name"] == "bias_regression" for c in decide({"macro_f1": 0.9}, None, mine, T)["checks"])


def test_bias_axes_are_validated():
    with pytest.raises(BadInput, match="'all' stands alone"):
        Thresholds(bias_axes="all,gender")
    from domaintune.components.evaluation.fairness import check_bias_axes

    with pytest.raises(BadInput, match="--bias-axes: unknown axis 'gendre'"):
        check_bias_axes("gendre", {"gender": {}, "age": {}})
    check_bias_axes("all", {"gender": {}})


def test_fairness_not_configured_is_skipped_with_a_note():
    d = decide({"macro_f1": 0.9}, None, None, T)
    assert d["passed"]
    assert check(d, "counterfactual_flip_rate")["skipped"] and check(d, "slice_gap")["skipped"]
    assert any("not run" in n for n in d["notes"]) and any("slice" in n for n in d["notes"])
    # slice columns given but no column has two gated slices
    b = fair_bias()
    b["slices"]["max_slice_gap"] = None
    d = decide({"macro_f1": 0.9}, None, b, T)
    assert d["passed"] and check(d, "slice_gap")["skipped"]


# --------------------------------------------------------------------------------------------- int8

def test_int8_rule_is_fail_closed():
    """The one int8 rule the export stage applies: a known, finite drop within the limit ships int8."""
    assert int8_acceptable(0.005, 0.01) and int8_acceptable(0.01, 0.01) and int8_acceptable(-0.02, 0.01)
    for bad in (0.02, float("nan"), float("inf"), None, "n/a", True):
        assert not int8_acceptable(bad, 0.01), bad


def test_int8_fallback_is_reported_without_blocking():
    export = {"deployable": "fp32", "int8_quality_drop": 0.03, "max_int8_drop": 0.01}
    d = decide({"macro_f1": 0.9}, None, fair_bias(), T, export=export)
    c = check(d, "int8_drop")
    assert d["passed"] and not c["passed"] and not c["blocking"]
    assert any("fp32" in n for n in d["notes"])
    shipped = {"deployable": "int8", "int8_quality_drop": 0.0, "max_int8_drop": 0.01}
    assert check(decide({"macro_f1": 0.9}, None, fair_bias(), T, export=shipped), "int8_drop")["passed"]
    assert not any(c["name"] == "int8_drop" for c in decide({"macro_f1": 0.9}, None, fair_bias(), T)["checks"])


def test_gate_reads_the_tasks_primary_metric():
    d = decide({"macro_f1": 0.1, "entity_f1": 0.9}, {"entity_f1": 0.95, "version": 1}, fair_bias(), T,
               metric="entity_f1")
    assert check(d, "quality")["passed"] and not check(d, "no_regression")["passed"]
    assert d["metric"] == "entity_f1" and "entity_f1" in d["reasons"][0]


# ------------------------------------------------------------------------------------- thresholds

def test_default_thresholds():
    from conftest import pipeline_defaults

    t = Thresholds(**pipeline_defaults(Thresholds))
    assert (t.min_macro_f1, t.max_regression, t.max_flip_rate, t.max_slice_gap) == (-1, 0.01, 0.10, 0.15)
    assert t == Thresholds()


def test_the_default_quality_floor_is_the_tasks_own():
    """-1 takes Task.quality_floor: a ROUGE-L of 0.3 is a good summarizer, a macro-F1 of 0.3 a broken classifier."""
    from domaintune.components.tasks import get_task

    default = Thresholds()
    floors = {name: get_task(name).quality_floor for name in ("classification", "token-classification", "seq2seq")}
    assert floors == {"classification": 0.6, "token-classification": 0.6, "seq2seq": 0.1}
    assert not decide({"macro_f1": 0.3}, None, fair_bias(), default, task_floor=floors["classification"])["passed"]
    summarizer = decide({"rougeL": 0.3}, None, fair_bias(), default, "rougeL", task_floor=floors["seq2seq"])
    assert summarizer["passed"] and summarizer["checks"][0]["threshold"] == 0.1
    explicit = decide({"rougeL": 0.3}, None, fair_bias(), Thresholds(min_macro_f1=0.35), "rougeL", task_floor=0.1)
    assert not explicit["passed"] and "vs floor 0.35" in explicit["reasons"][0]
    with pytest.raises(BadInput, match="--min-macro-f1 must be in \\[0, 1\\] \\(or -1"):
        Thresholds(min_macro_f1=-0.5)


@pytest.mark.parametrize("kwargs, flag", [({"max_flip_rate": -0.1}, "--max-flip-rate"),
                                          ({"min_macro_f1": 1.5}, "--min-macro-f1"),
                                          ({"max_regression": math.nan}, "--max-regression"),
                                          ({"max_slice_gap": "0.1"}, "--max-slice-gap")])
def test_invalid_thresholds_are_bad_input(kwargs, flag):
    with pytest.raises(BadInput, match=flag):
        Thresholds(**{**vars(T), **kwargs})


def test_decision_is_json_serialisable():
    import json

    d = decide({"macro_f1": 0.9}, {"macro_f1": 0.8, "version": "2"}, fair_bias(), T,
               export={"deployable": "int8", "int8_quality_drop": 0.0, "max_int8_drop": 0.01})
    assert json.loads(json.dumps(d))["passed"] is True
