"""Is fine-tuning worth it, and can its confidence be trusted? The evaluate result's baselines, calibration
and out-of-domain sets as flat metrics (KFP, MLflow) and as a Markdown page (the KFP UI's `quality_report`,
the evaluation directory's `quality_report.md`)."""
from __future__ import annotations

import base64
import os

QUALITY_REPORT = "quality_report.md"


def quality_metrics(result: dict) -> dict:
    """baseline_<name>_{accuracy,macro_f1,seconds,lift}, baseline_lift, calibration ECE before/after and the
    temperature, ood_<set>_{accuracy,macro_f1,drop}: single numbers (MLflow metric names)."""
    out = {}
    baselines = result.get("baselines") or {}
    for name, m in (baselines.get("models") or {}).items():
        out.update({f"baseline_{name}_{k}": m[k] for k in ("accuracy", "macro_f1", "seconds", "lift") if k in m})
    if baselines:
        out["baseline_lift"] = baselines.get("lift")
    cal = result.get("calibration") or {}
    out.update({f"calibration_{k}": cal[k] for k in ("ece_before", "ece_after", "temperature") if k in cal})
    for name, s in ((result.get("ood") or {}).get("sets") or {}).items():
        key = "".join(c if c.isalnum() or c in "_-." else "_" for c in name)
        out.update({f"ood_{key}_{k}": s[k] for k in ("accuracy", "macro_f1", "drop", "n") if k in s})
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _f(v, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _baselines(result: dict) -> list[str]:
    b = result.get("baselines")
    if not b:
        return ["No baselines (not a classification run, or `--baseline-max-rows 0`)."]
    m = result["metrics"]
    lines = [f"Fit on {b['rows_fit']} training rows (cap {b['max_rows']}), C chosen on {b['rows_validation']} "
             f"validation rows, scored on the same {b['n_test']} test rows as the fine-tuned model.", "",
             "| model | accuracy | macro-F1 | lift (macro-F1) | seconds |", "|---|---:|---:|---:|---:|",
             f"| fine-tuned (deployable) | {_f(m.get('accuracy'))} | {_f(m.get('macro_f1'))} | – | – |"]
    names = {"frozen_embeddings": "frozen base model embeddings + logistic regression",
             "tfidf": "TF-IDF (1-2-grams) + logistic regression"}
    for name, r in b["models"].items():
        lines.append(f"| {names.get(name, name)} | {_f(r['accuracy'])} | {_f(r['macro_f1'])} | "
                     f"{r['lift']:+.4f} | {_f(r['seconds'], 1)} |")
    return lines + ["", f"Lift over the best baseline ({b['best']}): **{b['lift']:+.4f}** macro-F1."]


def _calibration(result: dict, directory: str, inline: bool) -> list[str]:
    c = result.get("calibration")
    if not c:
        return ["Not measured for this task."]
    lines = [f"Temperature **{c['temperature']:.3f}** (fitted on the validation split, saved with the model and "
             f"applied by every predictor). Test ECE ({c['n_bins']} bins, n={c['n']}): "
             f"**{c['ece_before']:.4f}** before, **{c['ece_after']:.4f}** after.", ""]
    path = os.path.join(directory, c.get("plot") or "")
    if c.get("plot") and os.path.isfile(path):
        if inline:  # the KFP UI renders the Markdown artifact alone: the figure travels inside it
            with open(path, "rb") as f:
                lines.append(f"![reliability diagram](data:image/png;base64,{base64.b64encode(f.read()).decode()})")
        else:
            lines.append(f"![reliability diagram]({c['plot']})")
    return lines


def _ood(result: dict) -> list[str]:
    ood = result.get("ood")
    if not ood:
        return ["No out-of-domain sets (`--ood-data`)."]
    m = result["metrics"]
    lines = ["| set | n | accuracy | macro-F1 | macro-F1 drop vs in-domain test |", "|---|---:|---:|---:|---:|",
             f"| in-domain test | {m.get('n')} | {_f(m.get('accuracy'))} | {_f(m.get('macro_f1'))} | – |"]
    for name, s in ood["sets"].items():
        lines.append(f"| {name} | {s.get('n')} | {_f(s.get('accuracy'))} | {_f(s.get('macro_f1'))} | {s['drop']:+.4f} |")
    return lines


def render_quality_report(result: dict, directory: str, inline_images: bool = False) -> str:
    parts = ["# Baselines, calibration, out-of-domain sets", "", "## Is fine-tuning worth it? Baselines", "",
             *_baselines(result), "", "## Calibration", "", *_calibration(result, directory, inline_images), "",
             "## Out-of-domain sets", "", *_ood(result)]
    return "\n".join(parts).rstrip() + "\n"
