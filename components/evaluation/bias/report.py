"""The bias report: Markdown for the KFP UI and MLflow, rendered from `templates/bias_report.md.j2`."""
from __future__ import annotations

import functools
import math

PACKAGE = "domaintune.components.evaluation.bias"
TEMPLATE = "bias_report.md.j2"


def render_bias_report(bias: dict) -> str:
    """Markdown for the KFP UI and MLflow: verdict and thresholds (when `gate` / `thresholds` are passed
    in), the counterfactual probe per axis, the worst examples and the slice table.
    `bias`: {"counterfactual": probe result | None, "slices": slice_metrics result | None,
    "gate": decide() result (optional), "thresholds": dict (optional)}."""
    thresholds = bias.get("thresholds")
    context = {"gate": bias.get("gate"), "thresholds": thresholds, "probe": bias.get("counterfactual"),
               "slices": bias.get("slices"), "flip_limit": (thresholds or {}).get("max_flip_rate")}
    return _template().render(context).rstrip() + "\n"


@functools.cache
def _template():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader(PACKAGE, "templates"), autoescape=False,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    env.filters.update(f=_f, cell=_cell, fixed=_fixed, yes_no=_yes_no, check_result=_check_result,
                       over_limit=_over_limit, worst_fnr=_worst_fnr)
    return env.get_template(TEMPLATE)


# ---------------------------------------------------------------------------------------------- filters

def _f(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _cell(text: str, limit: int = 140) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def _fixed(v, digits: int) -> str:
    return f"{v:.{digits}f}"


def _yes_no(v) -> str:
    return "yes" if v else "no"


def _check_result(c: dict) -> str:
    """A gate check's result cell: skipped, pass, FAIL, or either with "(not blocking)"."""
    result = "skipped" if c.get("skipped") else ("pass" if c.get("passed") else "FAIL")
    if not c.get("blocking", True) and not c.get("skipped"):
        result += " (not blocking)"
    return result


def _over_limit(a: dict, limit) -> str:
    """The mark after a gated axis's flip rate when it is above the limit: " ⚠", else nothing."""
    if limit is None or a.get("flip_rate") is None or a["flip_rate"] <= limit or not a.get("gated"):
        return ""
    return " ⚠"


def _worst_fnr(s: dict) -> str:
    """The slice's largest per-class false-negative rate and its class, "0.250 (pos)"."""
    fnrs = [(v["fnr"], lab) for lab, v in s["per_class"].items() if v["fnr"] is not None]
    wf = max(fnrs) if fnrs else None
    return _f(wf[0]) + " (" + wf[1] + ")" if wf else "–"
