"""The model card: one Markdown page per candidate, registered or rejected, built from the run's summary.

`render_model_card(summary, data_report=None, lineage=None)` is a pure function of dicts (no MLflow, no
files): `summary` is register's summary (status, metrics, bias, gate, export, training, registry,
parameters), `data_report` the ingest report (splits, label counts, sources and their sha256), `lineage`
the run's lineage tags (git commit, package versions, pipeline run id). Any of the optional parts may be
missing; the card says so instead of failing. `description(card)` shortens it for the registered model
version's description field (MLflow stores at most 5,000 characters there).
"""
from __future__ import annotations

import math

DESCRIPTION_LIMIT = 5000
TRUNCATION_NOTE = "\n\n… (shortened: the full card is the MLflow run's artifact `model_card.md`)\n"


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


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]]


def render_model_card(summary: dict, data_report: dict | None = None, lineage: dict | None = None) -> str:
    s = summary or {}
    reg = s.get("registry") or {}
    gate = s.get("gate") or {}
    test = (s.get("metrics") or {}).get("test") or {}
    validation = (s.get("metrics") or {}).get("validation") or {}
    params = s.get("parameters") or {}
    data = data_report or {}
    lineage = lineage or {}
    name = reg.get("model_name") or params.get("model_name") or "domaintune model"
    version = reg.get("version")
    registered = s.get("status") == "registered" and version is not None
    labels = data.get("labels") or (s.get("data") or {}).get("labels") or list(test.get("per_class") or {})
    base_model = params.get("base_model") or lineage.get("base_model") or "–"
    max_length = (s.get("training") or {}).get("max_length") or params.get("max_length")

    out: list[str] = []
    if registered:
        aliases = ", ".join(f"`{a}`" for a in reg.get("aliases") or []) or "none"
        out += [f"# {name} v{version} — model card", "",
                f"**Registered** as `models:/{name}/{version}` (aliases: {aliases}); the promotion gate passed."]
    else:
        out += [f"# {name} — rejected candidate (not registered)", "",
                "**Rejected by the promotion gate: no model version was registered.** This card documents the "
                "candidate so the decision can be reviewed; do not deploy it."]
        for reason in gate.get("reasons") or []:
            out.append(f"- {reason}")
    out += ["", f"MLflow run `{reg.get('run_id', '–')}` in experiment `{reg.get('experiment', '–')}`; "
                f"pipeline run `{s.get('pipeline_run_id') or lineage.get('pipeline_run_id') or '–'}`.", ""]

    # intended use
    out += ["## Intended use", "",
            f"Text classification into {len(labels)} classes ({', '.join(f'`{lab}`' for lab in labels) or '–'}), "
            f"fine-tuned from `{base_model}` on the labeled data below. Use it for texts like the training data "
            "(same domain, language and label definitions), as a routing or triage aid whose mistakes are "
            "cheap to correct.", "",
            "Not intended for: decisions about people without human review; texts from other domains or "
            "languages; inputs that belong to none of the classes (the model always picks one of them).", ""]

    # data
    out += ["## Data and splits", ""]
    rows = data.get("rows") or (s.get("data") or {}).get("rows") or {}
    counts = data.get("label_counts") or {}
    if rows:
        header = ["split", "rows", *labels] if counts else ["split", "rows"]
        out += _table(header, [[split, n, *([counts.get(split, {}).get(lab) for lab in labels] if counts else [])]
                               for split, n in rows.items()])
        out.append("")
    sources = data.get("data_sha256") or {}
    for uri, sha in sources.items():
        out.append(f"- source `{uri}` — sha256 `{sha}`")
    dparams = data.get("params") or {}
    if dparams.get("data_version") or params.get("data_version"):
        out.append(f"- data version `{dparams.get('data_version') or params.get('data_version')}`")
    if data.get("stratified") is not None or "stratified" in data:
        out.append(f"- split: {'stratified' if data.get('stratified') else 'given files' if data.get('stratified') is None else 'random'}"
                   f", seed {dparams.get('seed', params.get('seed', '–'))}")
    leakage = data.get("leakage") or (s.get("data") or {}).get("leakage") or {}
    leaked = {k: v.get("identical_texts", 0) for k, v in leakage.items() if isinstance(v, dict)}
    if leaked:
        out.append("- leakage (texts shared with train): " + ", ".join(f"{k} {v}" for k, v in leaked.items()))
    if not rows and not sources:
        out.append("No data report was available.")
    out.append("")

    # training
    tr = s.get("training") or {}
    if tr or params:
        out += ["## Training", "",
                f"- base model `{base_model}`; {'LoRA (merged)' if params.get('lora') else 'full fine-tune'}; "
                f"precision {tr.get('precision', params.get('precision', '–'))}",
                f"- epochs run {_fmt(tr.get('epochs_run'), 2)} of {_fmt(params.get('epochs'))}, "
                f"{_fmt(tr.get('global_steps'))} steps, learning rate {_fmt(params.get('learning_rate'))}, "
                f"batch size {_fmt(params.get('batch_size'))}, max length {_fmt(max_length)} tokens",
                f"- {_fmt(tr.get('examples_per_second'))} examples/s, {_fmt(tr.get('train_seconds'))} s; "
                f"best validation macro-F1 {_fmt(validation.get('macro_f1'))}"]
        pre = s.get("pretrain")
        if pre:
            ppl = pre.get("perplexity") or {}
            out.append(f"- domain-adaptive pretraining (masked LM, {_fmt(pre.get('steps'))} steps) before fine-tuning: "
                       f"held-out perplexity {_fmt(ppl.get('before'), 2)} → {_fmt(ppl.get('after'), 2)}")
        else:
            out.append("- no domain-adaptive pretraining: fine-tuned from the base model directly")
        out.append("")

    # metrics
    out += ["## Metrics (test split)", ""]
    if test:
        n = test.get("n")
        out += [f"Accuracy **{_fmt(test.get('accuracy'))}** (95% CI {_ci95(test.get('accuracy'), n)}), "
                f"macro-F1 **{_fmt(test.get('macro_f1'))}**, n = {_fmt(n)}.", ""]
        per_class = test.get("per_class") or {}
        if per_class:
            out += _table(["class", "precision", "recall", "F1", "support"],
                          [[lab, v.get("precision"), v.get("recall"), v.get("f1"), v.get("support")]
                           for lab, v in per_class.items()])
            out.append("")
    else:
        out += ["No test metrics were recorded.", ""]

    # gate
    out += ["## Promotion gate", "", f"Decision: **{'passed' if gate.get('passed') else 'rejected'}**.", ""]
    checks = gate.get("checks") or []
    if checks:
        out += _table(["check", "value", "bound", "result"],
                      [[c.get("name"), c.get("value"), f"{c.get('op', '')} {_fmt(c.get('threshold'))}"
                        if c.get("threshold") is not None else "–",
                        "skipped" if c.get("skipped") else ("pass" if c.get("passed") else
                                                            ("FAIL" if c.get("blocking", True) else "fail (not blocking)"))]
                       for c in checks])
        out.append("")
    champ = gate.get("champion")
    if champ:
        out += [f"Compared with the champion v{champ.get('version', '?')} on the same test split: its macro-F1 "
                f"{_fmt(champ.get('macro_f1'))} vs this candidate's {_fmt(test.get('macro_f1'))}.", ""]
    else:
        out += ["There was no champion to compare with.", ""]

    # bias
    out += ["## Bias", ""]
    bias = s.get("bias") or {}
    probe = bias.get("counterfactual")
    if probe:
        out.append(f"- counterfactual identity-term swaps: {_pct(probe.get('flip_rate'))} of {probe.get('n_pairs', 0)} "
                   f"pairs flip the prediction; worst gated axis `{probe.get('worst_axis') or '–'}` "
                   f"{_pct(probe.get('max_axis_flip_rate'))}")
        for axis, a in sorted((probe.get("axes") or {}).items()):
            out.append(f"  - {axis}: {_pct(a.get('flip_rate'))} of {a.get('n_pairs', 0)} pairs"
                       f"{'' if a.get('gated') else ' (too few pairs to gate)'}")
    else:
        out.append("- counterfactual probe: not run")
    slices = bias.get("slices")
    if slices:
        for col, c in (slices.get("columns") or {}).items():
            out.append(f"- slices by `{col}`: {c.get('n_gated', 0)} gated, largest gap {_fmt(c.get('max_gap'))}"
                       f" (worst `{c.get('worst_slice') or '–'}`, best `{c.get('best_slice') or '–'}`)")
    else:
        out.append("- slice metrics: no slice columns were given")
    out += ["", "Details: the run's artifact `evaluation/bias_report.md`.", ""]

    # export
    out += ["## Export (ONNX)", ""]
    export = s.get("export")
    if not export:
        out += ["Not exported: this candidate has no ONNX export; it serves through PyTorch.", ""]
    else:
        sizes = export.get("sizes") or {}
        m = export.get("metrics") or {}
        out.append(f"Deployable: **{export.get('deployable', '–')}** (`{export.get('deployable_file', '–')}`)"
                   + (f": {export['reason']}." if export.get("reason") else "."))
        out.append("")
        if m:
            out += _table(["model", "accuracy", "macro-F1", "n"],
                          [[k, v.get("accuracy"), v.get("macro_f1"), v.get("n")] for k, v in m.items()])
            out.append("")
        if export.get("int8_accuracy_drop") is not None:
            out.append(f"- int8 accuracy drop vs PyTorch fp32: {100 * export['int8_accuracy_drop']:.2f} points "
                       f"(allowed {100 * (export.get('max_int8_drop') or 0):.2f})")
        if sizes:
            out.append(f"- size: fp32 {_fmt(sizes.get('onnx_fp32_mb'), 1)} MB, int8 {_fmt(sizes.get('onnx_int8_mb'), 1)} MB")
        results = (export.get("latency") or {}).get("results") or {}
        for shape, r in results.items():
            out.append(f"- latency {shape} (median ms): " + ", ".join(
                f"{k} {_fmt(v.get('median_ms'), 1)}" for k, v in r.items() if isinstance(v, dict)))
        out.append("")

    # limitations
    out += ["## Limitations", ""]
    n = test.get("n")
    if n:
        out.append(f"- The test split has {n} examples: accuracy is known to about ±"
                   f"{1.96 * math.sqrt(max(test.get('accuracy') or 0, 1e-9) * (1 - (test.get('accuracy') or 0)) / n):.3f}"
                   " (95%); small classes much less precisely.")
    out += [f"- Texts longer than {_fmt(max_length)} tokens are truncated; the end of a long text is not read.",
            "- Scores are softmax probabilities, not calibrated confidences.",
            "- The bias probe covers only the identity terms and templates it was given; slice gaps are measured "
            "only on the slice columns named and on slices with enough rows.",
            "- Performance holds for data like the training data; re-evaluate after the data drifts "
            "(`domaintune evaluate --model REF --data NEW.csv`)."]
    if any(leaked.values()):
        out.append("- Some evaluation texts also occur in the training split (see above): test metrics may be optimistic.")
    out.append("")

    # how to load
    out += ["## How to load", ""]
    if registered:
        ref_alias = f"models:/{name}@champion"
        ref_version = f"models:/{name}/{version}"
        out += ["```bash",
                f"domaintune predict --model {ref_version} --text \"...\"      # or --model {ref_alias} once promoted",
                f"domaintune evaluate --model {ref_version} --data labeled.csv",
                f"domaintune promote {name} --version {version} --alias champion --reason \"...\"",
                "```", "",
                "```python",
                "import mlflow, pandas as pd",
                f"model = mlflow.pyfunc.load_model(\"{ref_version}\")   # or \"{ref_alias}\"",
                "model.predict(pd.DataFrame({\"text\": [\"...\"]}))      # -> label, score",
                "```", "",
                "The pyfunc model serves through onnxruntime when it carries the ONNX export (artifact `onnx`), "
                "else through PyTorch. Its artifact `model` is a Hugging Face directory: "
                "`AutoModelForSequenceClassification.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)` "
                "load it after `mlflow.artifacts.download_artifacts(\"" + ref_version + "\")`."]
    else:
        out += ["Not registered, so there is no `models:/` reference. The candidate's Hugging Face directory is in "
                "the pipeline run's output (`model/` in `domaintune run`'s output directory); "
                "`domaintune evaluate --model DIR --data FILE` scores it."]
    out.append("")

    # lineage
    out += ["## Lineage", ""]
    keys = [("pipeline run", lineage.get("pipeline_run_id") or s.get("pipeline_run_id")),
            ("code (git commit)", lineage.get("git_commit")), ("base model", base_model),
            ("data version", lineage.get("data_version") or dparams.get("data_version"))]
    out += [f"- {k}: `{v}`" for k, v in keys if v]
    versions = {k.split(".", 1)[1]: v for k, v in lineage.items() if k.startswith("version.")}
    if versions:
        out.append("- packages: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    out.append("")
    return "\n".join(out)


def description(card: str, limit: int = DESCRIPTION_LIMIT) -> str:
    """The card cut at a line boundary to fit MLflow's model version description (5,000 characters)."""
    if len(card) <= limit:
        return card
    budget = limit - len(TRUNCATION_NOTE)
    cut = card.rfind("\n", 0, budget)
    return card[: cut if cut > 0 else budget].rstrip() + TRUNCATION_NOTE
