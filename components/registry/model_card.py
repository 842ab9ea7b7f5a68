"""The model card: one Markdown page per candidate, registered or rejected, built from the run's summary.

`render_model_card(summary, data_report=None, lineage=None)` is a pure function of dicts (no MLflow, no
files): `summary` is register's summary (status, metrics, bias, gate, export, training, registry,
parameters, task_card), `data_report` the ingest report (splits, label counts, sources and their sha256),
`lineage` the run's lineage tags (git commit, package versions, pipeline run id). Any of the optional parts
may be missing; the card says so instead of failing. The text is the template `templates/model_card.md.j2`;
`card_context` gathers what it shows. `description(card)` shortens the card for the registered model
version's description field (MLflow stores at most 5,000 characters there).
"""
from __future__ import annotations

import functools
import math

DESCRIPTION_LIMIT = 5000
TRUNCATION_NOTE = "\n\n… (shortened: the full card is the MLflow run's artifact `model_card.md`)\n"
PACKAGE = "domaintune.components.registry"
TEMPLATE = "model_card.md.j2"
# Used when the summary has no `task_card` (the task's own phrases, components/tasks): a classifier's card.
DEFAULT_AUTO_CLASS = "AutoModelForSequenceClassification"
DEFAULT_OUTPUTS = "label, score"


def render_model_card(summary: dict, data_report: dict | None = None, lineage: dict | None = None) -> str:
    return _template().render(card_context(summary, data_report, lineage))


def description(card: str, limit: int = DESCRIPTION_LIMIT) -> str:
    """The card cut at a line boundary to fit MLflow's model version description (5,000 characters)."""
    if len(card) <= limit:
        return card
    budget = limit - len(TRUNCATION_NOTE)
    cut = card.rfind("\n", 0, budget)
    return card[: cut if cut > 0 else budget].rstrip() + TRUNCATION_NOTE


# ---------------------------------------------------------------------------------------------- context

def card_context(summary: dict, data_report: dict | None = None, lineage: dict | None = None) -> dict:
    """Everything the template shows, from the summary, the data report and the lineage tags."""
    s, data, lineage = summary or {}, data_report or {}, lineage or {}
    ctx = _identity(s, data, lineage)
    ctx.update(_task_phrases(s, ctx["labels"]))
    ctx.update(_data_context(s, data, ctx["params"], ctx["labels"]))
    ctx.update(_metrics_context(s))
    ctx.update(_gate_context(s))
    ctx.update(_export_context(s))
    ctx.update(_lineage_context(s, lineage, ctx["base_model"], ctx["data_params"]))
    return ctx


def _identity(s: dict, data: dict, lineage: dict) -> dict:
    """Which model this is: name, version, registered or not, labels, base model, the summary's parts."""
    reg, params = s.get("registry") or {}, s.get("parameters") or {}
    test = (s.get("metrics") or {}).get("test") or {}
    name = reg.get("model_name") or params.get("model_name") or "domaintune model"
    version = reg.get("version")
    return {
        "s": s, "reg": reg, "params": params, "gate": s.get("gate") or {}, "training": s.get("training") or {},
        "name": name, "version": version, "registered": s.get("status") == "registered" and version is not None,
        "aliases": ", ".join(f"`{a}`" for a in reg.get("aliases") or []) or "none",
        "pipeline_run": s.get("pipeline_run_id") or lineage.get("pipeline_run_id") or "–",
        "labels": data.get("labels") or (s.get("data") or {}).get("labels") or list(test.get("per_class") or {}),
        "base_model": params.get("base_model") or lineage.get("base_model") or "–",
        "max_length": (s.get("training") or {}).get("max_length") or params.get("max_length"),
        "ref_version": f"models:/{name}/{version}", "ref_alias": f"models:/{name}@champion",
        "task_card": s.get("task_card") if isinstance(s.get("task_card"), dict) else None,
    }


def _task_phrases(s: dict, labels: list) -> dict:
    """What the model does, the class that loads it and what it predicts: the task's `task_card` where the
    summary has one, a classifier's phrases otherwise."""
    card = s.get("task_card") if isinstance(s.get("task_card"), dict) else {}
    what = card.get("what") or (f"Text classification into {len(labels)} classes "
                                f"({', '.join(f'`{lab}`' for lab in labels) or '–'})")
    return {"what": what, "auto_class": card.get("auto_class") or DEFAULT_AUTO_CLASS,
            "outputs": card.get("outputs") or DEFAULT_OUTPUTS}


def _data_context(s: dict, data: dict, params: dict, labels: list) -> dict:
    """The split table, the sources and data version, how the split was made, leakage."""
    rows = data.get("rows") or (s.get("data") or {}).get("rows") or {}
    counts = data.get("label_counts") or {}
    dparams = data.get("params") or {}
    leakage = data.get("leakage") or (s.get("data") or {}).get("leakage") or {}
    stratified = data.get("stratified")
    return {
        "split_rows": rows, "sources": data.get("data_sha256") or {}, "data_params": dparams,
        "split_header": ["split", "rows", *labels] if counts else ["split", "rows"],
        "split_table": [[split, n, *([counts.get(split, {}).get(lab) for lab in labels] if counts else [])]
                        for split, n in rows.items()],
        "data_version": dparams.get("data_version") or params.get("data_version"),
        "split_kind": (None if "stratified" not in data else "stratified" if stratified
                       else "given files" if stratified is None else "random"),
        "split_seed": dparams.get("seed", params.get("seed", "–")),
        "leaked": {k: v.get("identical_texts", 0) for k, v in leakage.items() if isinstance(v, dict)},
    }


def _metrics_context(s: dict) -> dict:
    """Test and validation metrics, the per-class table, the PyTorch model's test metrics."""
    metrics = s.get("metrics") or {}
    test = metrics.get("test") or {}
    per_class = test.get("per_class") or test.get("per_type") or {}  # classes, or a tagger's entity types
    pytorch = metrics.get("test_pytorch")
    baselines, ood = s.get("baselines") or {}, s.get("ood") or {}
    return {"test": test, "validation": metrics.get("validation") or {},
            "baseline_table": [[name, b.get("accuracy"), b.get("macro_f1"), b.get("lift"), _fmt(b.get("seconds"), 1)]
                               for name, b in (baselines.get("models") or {}).items()],
            "calibration": s.get("calibration") or None,
            "ood_table": [[name, o.get("n"), o.get("accuracy"), o.get("macro_f1"), o.get("drop")]
                          for name, o in (ood.get("sets") or {}).items()],
            "per_class_table": [[lab, v.get("precision"), v.get("recall"), v.get("f1"), v.get("support")]
                                for lab, v in per_class.items()],
            "test_pytorch": pytorch if isinstance(pytorch, dict) else None,
            "pretrain": s.get("pretrain"), "bias": s.get("bias") or {}}


def _gate_context(s: dict) -> dict:
    checks = (s.get("gate") or {}).get("checks") or []
    return {"check_table": [[c.get("name"), c.get("value"), _bound(c), _check_result(c)] for c in checks]}


def _bound(check: dict) -> str:
    if check.get("threshold") is None:
        return "–"
    return f"{check.get('op', '')} {_fmt(check.get('threshold'))}"


def _check_result(check: dict) -> str:
    if check.get("skipped"):
        return "skipped"
    if check.get("passed"):
        return "pass"
    return "FAIL" if check.get("blocking", True) else "fail (not blocking)"


def _export_context(s: dict) -> dict:
    export = s.get("export") or None
    if not export:
        return {"export": None}
    return {"export": export, "sizes": export.get("sizes") or {},
            "export_table": [[k, v.get("accuracy"), v.get("macro_f1"), v.get("n")]
                             for k, v in (export.get("metrics") or {}).items()],
            "latency": {shape: ", ".join(f"{k} {_fmt(v.get('median_ms'), 1)}" for k, v in r.items()
                                         if isinstance(v, dict))
                        for shape, r in ((export.get("latency") or {}).get("results") or {}).items()}}


def _lineage_context(s: dict, lineage: dict, base_model: str, dparams: dict) -> dict:
    keys = [("pipeline run", lineage.get("pipeline_run_id") or s.get("pipeline_run_id")),
            ("code (git commit)", lineage.get("git_commit")), ("base model", base_model),
            ("data version", lineage.get("data_version") or dparams.get("data_version"))]
    versions = {k.split(".", 1)[1]: v for k, v in lineage.items() if k.startswith("version.")}
    return {"lineage_keys": [(k, v) for k, v in keys if v],
            "packages": ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))}


# ---------------------------------------------------------------------------------------------- filters

def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _pct(value) -> str:
    return "–" if value is None else f"{100 * float(value):.1f}%"


def _ci95(p: float | None, n: int | None) -> str:
    """Wilson 95% interval for a proportion (accuracy) on n examples."""
    if p is None or not n:
        return "–"
    z = 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return f"{max(0.0, centre - half):.3f}–{min(1.0, centre + half):.3f}"


def _pm95(p: float | None, n: int) -> str:
    """Half-width of the normal-approximation 95% interval of a proportion on n examples."""
    return f"{1.96 * math.sqrt(max(p or 0, 1e-9) * (1 - (p or 0)) / n):.3f}"


def _points(fraction: float) -> str:
    return f"{100 * fraction:.2f}"


@functools.cache
def _template():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader(PACKAGE, "templates"), autoescape=False,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    env.filters.update(fmt=_fmt, pct=_pct, ci95=_ci95, pm95=_pm95, points=_points)
    return env.get_template(TEMPLATE)
