"""Bias checks for the evaluate stage (docs/ARCHITECTURE.md, "The gate"): per-slice metrics and gaps, and a counterfactual
identity-term probe (swap "he" for "she", "Christian" for "Muslim", ... and count how often the prediction
flips). Pure Python over a classification predictor (components/inference/); no KFP or MLflow here.

Modules: `terms` (load and validate `identity_terms.yaml`), `swap` (whole-word, case-preserving term swaps),
`probe` (the counterfactual probe), `slices` (per-slice metrics and gaps), `report` (the Markdown report,
rendered from `templates/bias_report.md.j2`). Every public name is re-exported here: `bias.slice_metrics`.

Result shapes (JSON-serialisable; the gate and the report read them):

slice_metrics(...) ->
    {"min_slice_size": int,
     "columns": {column: {"slices": {value: {"n", "gated", "accuracy", "macro_f1",
                                             "per_class": {label: {"support", "fpr", "fnr"}}}},
                          "n_gated": int, "accuracy_gap", "macro_f1_gap", "fpr_gap", "fnr_gap", "max_gap",
                          "best_slice", "worst_slice"}},       # gaps None when < 2 gated slices
     "max_slice_gap": float | None, "worst_column": str | None}

counterfactual_probe(...) ->
    {"flip_rate", "mean_abs_prob_change", "n_pairs",                 # pooled over every axis
     "max_axis_flip_rate", "worst_axis",                             # over axes with n_pairs >= min_pairs
     "source": "test_texts" | "templates" | "both" | "none",
     "n_texts", "n_texts_with_terms", "n_texts_probed", "min_pairs", "terms_source",
     "axes": {axis: {"flip_rate", "mean_abs_prob_change", "n_pairs", "n_texts", "gated", "source",
                     "by_source": {"test_texts" | "templates": {"flip_rate", "mean_abs_prob_change", "n_pairs"}},
                     "by_swap": {"male->female": {...}, ...}, "worst_examples": [example, ...]}},
     "worst_examples": [{"axis", "source", "swap", "original", "counterfactual", "original_pred",
                         "counterfactual_pred", "original_prob", "counterfactual_prob", "flipped"}]}
"""
from __future__ import annotations

from domaintune.components.evaluation.bias.probe import (  # noqa: F401
    MAX_TEMPLATE_PAIRS, MAX_VARIANTS, MIN_FLIP_PROB_CHANGE, MIN_PAIRS, N_WORST, PROBE_MAX_TEXTS, counterfactual_probe)
from domaintune.components.evaluation.bias.report import _cell, _f, render_bias_report  # noqa: F401
from domaintune.components.evaluation.bias.slices import (  # noqa: F401
    _label_ids, _macro_f1_present, _max_or_none, _rate, _slice_stats, _spread, slice_metrics)
from domaintune.components.evaluation.bias.swap import (  # noqa: F401
    FUNCTION_WORDS, AxisSwapper, _article_for, match_case, swap_terms)
from domaintune.components.evaluation.bias.terms import (  # noqa: F401
    PACKAGED_TERMS, SLOT, _validate_terms, load_identity_terms)

__all__ = [
    "AxisSwapper", "FUNCTION_WORDS", "MAX_TEMPLATE_PAIRS", "MAX_VARIANTS", "MIN_FLIP_PROB_CHANGE", "MIN_PAIRS",
    "N_WORST", "PACKAGED_TERMS", "PROBE_MAX_TEXTS", "SLOT", "counterfactual_probe", "load_identity_terms",
    "match_case", "render_bias_report", "slice_metrics", "swap_terms",
]
