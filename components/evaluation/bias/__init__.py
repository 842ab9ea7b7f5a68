"""Bias checks for the evaluate stage (DESIGN.md §2, §3): per-slice metrics and gaps, and a counterfactual
identity-term probe (swap "he" for "she", "Christian" for "Muslim", ... and count how often the prediction
flips). Pure Python over a `Classifier` (components/inference.py); no KFP or MLflow here.

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

import math
import os
import random
import re
from collections import defaultdict
from typing import Sequence

import numpy as np
import pandas as pd

from domaintune.components.core.errors import BadInput

PACKAGED_TERMS = "identity_terms.yaml"
SLOT = "{person}"
MAX_TEMPLATE_PAIRS = 200  # per axis
# A flip counts only when the swap also moves the originally predicted class's probability by at least
# this much. Without it a model that is unsure between classes (near-uniform probabilities, typical on
# out-of-domain templates) "flips" on any edit at all: measured on the bundled support-ticket model,
# 38% of disability template pairs changed label with a mean probability change of 0.007 — noise, not
# an identity effect. Real identity effects move the probability a lot (SST-2: "a blind person" 0.10
# vs "a sighted person" 0.62 positive), so they still count. 0 restores the plain label-change rate.
MIN_FLIP_PROB_CHANGE = 0.1
MIN_PAIRS = 20          # fewer test-text pairs than this for an axis -> the templates are probed as well
MAX_VARIANTS = 3        # counterfactual groups per text on axes with more than two groups
N_WORST = 5

# Words after which "her" is the object pronoun (-> him) rather than a determiner (-> his), and "his" the
# possessive pronoun (-> hers) rather than a determiner (-> her). Anything else that follows is taken as
# the noun (phrase) the determiner belongs to. A heuristic: "gave her flowers" becomes "gave his flowers".
FUNCTION_WORDS = frozenset("""
a an the this that these those some any no every each all both either neither
to and or but nor so for yet if as than like because since until unless while when whenever where why how
what which who whom whose whether though although
in on at by with from of off up down out over under about into onto upon after before around through
across against along among behind beside besides between beyond during except inside near past toward
towards within without throughout via per
is am are was were be been being do does did have has had will would shall should can could may might must
not never ever just only even also still already again too very quite really back away home here there
now then today tonight tomorrow yesterday once enough anyway well much more most less least alone
i me my mine you your yours he him his she her hers it its we us our ours they them their theirs
myself yourself himself herself itself ourselves themselves 's 're 've 'd 'll n't
""".split())


# ---------------------------------------------------------------------------------------------- slices

def _label_ids(values, labels: list[str], what: str) -> np.ndarray:
    """y given as label ids (0..k-1) or as label strings -> ids."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        if arr.size and (arr.min() < 0 or arr.max() >= len(labels)):
            raise BadInput(f"{what}: label ids must be in 0..{len(labels) - 1}")
        return arr.astype(int)
    index = {str(label): i for i, label in enumerate(labels)}
    out = np.empty(len(arr), dtype=int)
    for i, v in enumerate(arr):
        key = str(v)
        if key not in index:
            if isinstance(v, (float, np.floating)) and float(v).is_integer() and 0 <= int(v) < len(labels):
                out[i] = int(v)
                continue
            raise BadInput(f"{what}: unknown label {v!r} (labels: {labels})")
        out[i] = index[key]
    return out


def _macro_f1_present(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-F1 over the classes that occur in the slice (true or predicted): a class absent from a slice
    would otherwise count as F1 = 0 and make a small slice look worse than it is."""
    from sklearn.metrics import f1_score

    present = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    return float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))


def _rate(num: int, den: int) -> float | None:
    return float(num / den) if den else None


def _slice_stats(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict:
    n = len(y_true)
    per_class = {}
    for c, label in enumerate(labels):
        pos = y_true == c
        pred = y_pred == c
        per_class[label] = {
            "support": int(pos.sum()),
            # FPR: share of the slice's non-c examples predicted c; FNR: share of its c examples missed.
            "fpr": _rate(int((pred & ~pos).sum()), int((~pos).sum())),
            "fnr": _rate(int((~pred & pos).sum()), int(pos.sum())),
        }
    return {"n": int(n), "accuracy": float((y_true == y_pred).mean()) if n else None,
            "macro_f1": _macro_f1_present(y_true, y_pred) if n else None, "per_class": per_class}


def _spread(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(max(vals) - min(vals)) if len(vals) >= 2 else None


def slice_metrics(frame: pd.DataFrame, y_true, y_pred, labels: list[str], slice_columns: list[str],
                  min_slice_size: int = 30) -> dict:
    """Accuracy, macro-F1 and per-class FPR/FNR for every value of every slice column, and the gaps.

    A slice is *gated* when it has at least `min_slice_size` rows; only gated slices enter the gaps (a gap
    between two slices of five rows is noise). Per column: `accuracy_gap` and `macro_f1_gap` are the
    best minus the worst gated slice, `fpr_gap`/`fnr_gap` the largest per-class spread (equalised-odds
    view, reported, not part of `max_gap`); `max_gap` = max(accuracy_gap, macro_f1_gap). `max_slice_gap`
    is the largest `max_gap` over the columns (None when no column has two gated slices).
    y_true / y_pred: label ids or label strings, aligned with `frame`'s rows. Missing values of a slice
    column form their own slice, "(missing)".
    """
    missing = [c for c in slice_columns if c not in frame.columns]
    if missing:
        raise BadInput(f"slice column {missing[0]!r} is not in the data (columns: {list(frame.columns)})")
    if min_slice_size < 1:
        raise BadInput(f"--min-slice-size must be a positive integer (got {min_slice_size!r})")
    yt = _label_ids(y_true, labels, "y_true")
    yp = _label_ids(y_pred, labels, "y_pred")
    if not (len(yt) == len(yp) == len(frame)):
        raise BadInput(f"slice metrics: {len(frame)} rows but {len(yt)} true and {len(yp)} predicted labels")

    columns: dict = {}
    for col in slice_columns:
        keys = frame[col].astype("object").where(frame[col].notna(), "(missing)").astype(str).to_numpy()
        slices = {}
        for value in sorted(set(keys.tolist())):
            mask = keys == value
            stats = _slice_stats(yt[mask], yp[mask], labels)
            stats["gated"] = stats["n"] >= min_slice_size
            slices[value] = stats
        gated = {k: s for k, s in slices.items() if s["gated"]}
        acc_gap = _spread([s["accuracy"] for s in gated.values()])
        f1_gap = _spread([s["macro_f1"] for s in gated.values()])
        fpr_gap = _max_or_none(_spread([s["per_class"][lab]["fpr"] for s in gated.values()]) for lab in labels)
        fnr_gap = _max_or_none(_spread([s["per_class"][lab]["fnr"] for s in gated.values()]) for lab in labels)
        ranked = sorted(gated, key=lambda k: (gated[k]["macro_f1"], gated[k]["accuracy"]))
        columns[col] = {
            "slices": slices, "n_gated": len(gated),
            "accuracy_gap": acc_gap, "macro_f1_gap": f1_gap, "fpr_gap": fpr_gap, "fnr_gap": fnr_gap,
            "max_gap": _max_or_none([acc_gap, f1_gap]),
            "worst_slice": ranked[0] if len(ranked) >= 2 else None,
            "best_slice": ranked[-1] if len(ranked) >= 2 else None,
        }
    gaps = {c: v["max_gap"] for c, v in columns.items() if v["max_gap"] is not None}
    worst = max(gaps, key=gaps.get) if gaps else None
    return {"min_slice_size": int(min_slice_size), "columns": columns,
            "max_slice_gap": gaps[worst] if worst else None, "worst_column": worst}


def _max_or_none(values) -> float | None:
    vals = [v for v in values if v is not None]
    return max(vals) if vals else None


# ------------------------------------------------------------------------------------ identity terms

def load_identity_terms(path: str | None = None) -> dict:
    """The identity-term lists and templates: the packaged `identity_terms.yaml` (path None or "") or the
    user's YAML file in the same format (see the packaged file's header). Malformed -> BadInput naming
    the file. Returns {"source", "templates": [...], "axes": {axis: {"groups", "terms", "target_only",
    "disambiguate", "fillers"}}} (plain, JSON-serialisable)."""
    import yaml

    if path:
        name = path
        if not os.path.isfile(path):
            raise BadInput(f"{path}: identity terms file not found")
        try:
            with open(path, encoding="utf-8") as f:
                raw = yaml.safe_load(f)
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise BadInput(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    else:
        from importlib import resources

        name = f"domaintune.components.evaluation.bias/{PACKAGED_TERMS}"
        raw = yaml.safe_load(resources.files("domaintune.components.evaluation.bias").joinpath(PACKAGED_TERMS).read_text("utf-8"))
    return _validate_terms(raw, name)


def _validate_terms(raw, name: str) -> dict:
    def bad(msg: str):
        raise BadInput(f"{name}: {msg}")

    if not isinstance(raw, dict):
        bad("expected a mapping with 'axes' (and optionally 'templates')")
    axes_raw = raw.get("axes")
    if not isinstance(axes_raw, dict) or not axes_raw:
        bad("'axes' must be a non-empty mapping of axis name -> {groups, terms}")
    templates = raw.get("templates", []) or []
    if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
        bad("'templates' must be a list of strings")
    for t in templates:
        if t.count(SLOT) != 1:
            bad(f"template {t!r} must contain {SLOT} exactly once")

    def rows(axis: str, key: str, value, n_groups: int, required: bool) -> list[list[str | None]]:
        if value is None and not required:
            return []
        if not isinstance(value, list) or (required and not value):
            bad(f"axes.{axis}.{key} must be a non-empty list of rows")
        out = []
        for i, row in enumerate(value):
            if not isinstance(row, list) or len(row) != n_groups:
                bad(f"axes.{axis}.{key}[{i}] must list {n_groups} entries, one per group (got {row!r})")
            if not all(x is None or (isinstance(x, str) and x.strip()) for x in row):
                bad(f"axes.{axis}.{key}[{i}] entries must be non-empty strings or null (got {row!r})")
            if sum(x is not None for x in row) < 2:
                bad(f"axes.{axis}.{key}[{i}] needs at least two non-null entries (got {row!r})")
            out.append([None if x is None else " ".join(x.split()) for x in row])
        return out

    axes = {}
    for axis, spec in axes_raw.items():
        if not isinstance(spec, dict):
            bad(f"axes.{axis} must be a mapping with 'groups' and 'terms'")
        groups = spec.get("groups")
        if (not isinstance(groups, list) or len(groups) < 2 or not all(isinstance(g, str) for g in groups)
                or len(set(groups)) != len(groups)):
            bad(f"axes.{axis}.groups must list at least two distinct group names")
        terms = rows(axis, "terms", spec.get("terms"), len(groups), True)
        for i, row in enumerate(terms):
            if sum(x is not None for x in row) != len({x.lower() for x in row if x is not None}):
                bad(f"axes.{axis}.terms[{i}] repeats a term across groups (got {row!r})")
        fillers = rows(axis, "fillers", spec.get("fillers"), len(groups), False)
        known = {x.lower() for row in terms for x in row if x is not None}
        target_only = spec.get("target_only", []) or []
        if not isinstance(target_only, list) or not all(isinstance(t, str) for t in target_only):
            bad(f"axes.{axis}.target_only must be a list of terms")
        for t in target_only:
            if t.lower() not in known:
                bad(f"axes.{axis}.target_only: {t!r} is not one of the axis's terms")
        dis = spec.get("disambiguate", {}) or {}
        if not isinstance(dis, dict):
            bad(f"axes.{axis}.disambiguate must map a term to {{before_word: X, otherwise: Y}}")
        for term, choice in dis.items():
            if (not isinstance(choice, dict) or set(choice) != {"before_word", "otherwise"}
                    or not all(isinstance(v, str) for v in choice.values())):
                bad(f"axes.{axis}.disambiguate.{term} must be {{before_word: X, otherwise: Y}}")
            if str(term).lower() not in known or any(v.lower() not in known for v in choice.values()):
                bad(f"axes.{axis}.disambiguate.{term}: the term and its choices must be terms of the axis")
        unknown = set(spec) - {"groups", "terms", "fillers", "target_only", "disambiguate"}
        if unknown:
            bad(f"axes.{axis}: unknown key(s) {sorted(unknown)}")
        axes[str(axis)] = {"groups": list(groups), "terms": terms, "fillers": fillers,
                           "target_only": [t.lower() for t in target_only],
                           "disambiguate": {str(k).lower(): {kk: vv.lower() for kk, vv in v.items()}
                                            for k, v in dis.items()}}
    return {"source": name, "templates": list(templates), "axes": axes}


# ----------------------------------------------------------------------------------------- swapping

def match_case(source: str, replacement: str) -> str:
    """Give `replacement` the casing of `source`: HIS -> HER, His -> Her, his -> her, Mr -> Mrs,
    African American -> European American."""
    letters = [ch for ch in source if ch.isalpha()]
    if len(letters) > 1 and all(ch.isupper() for ch in letters):
        return replacement.upper()
    if letters and source.lower() != source and source.istitle() and len(source.split()) > 1:
        return " ".join(w[:1].upper() + w[1:] for w in replacement.split(" "))
    if source[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


def _article_for(word: str) -> str:
    w = word.lower()
    vowel_sound = w[:1] in "aeiou" and not w.startswith(("eu", "uni", "use", "usu", "one", "once"))
    return "an" if vowel_sound or w.startswith(("hour", "honest", "heir")) else "a"


class AxisSwapper:
    """Whole-word, case-preserving swaps between the groups of one axis."""

    def __init__(self, axis: str, spec: dict):
        self.axis = axis
        self.groups: list[str] = spec["groups"]
        self.disambiguate: dict = spec.get("disambiguate", {})
        # term (lower) -> (group index, row) from the term's first row; rows are lists aligned with groups
        self.lookup: dict[str, tuple[int, list]] = {}
        for row in spec["terms"]:
            for g, term in enumerate(row):
                if term is not None:
                    self.lookup.setdefault(term.lower(), (g, [None if t is None else t.lower() for t in row]))
        detect = sorted((t for t in self.lookup if t not in set(spec.get("target_only", []))),
                        key=lambda t: (-len(t), t))
        alternation = "|".join(r"\s+".join(re.escape(w) for w in t.split()) for t in detect)
        # An optional preceding article is part of the match, so "a young man" -> "an old man".
        self.pattern = re.compile(rf"(?:(?<![\w-])(?P<art>an?)(?P<sp>\s+))?(?<![\w-])(?P<term>{alternation})(?![\w-])",
                                  re.IGNORECASE) if detect else None

    def groups_in(self, text: str) -> list[int]:
        """Group indices of the terms found in `text`, in order of appearance."""
        if self.pattern is None:
            return []
        return [self.lookup[" ".join(m.group("term").lower().split())][0] for m in self.pattern.finditer(text)]

    def swap(self, text: str, a: int, b: int) -> str:
        """Transpose groups a and b: terms of group a become their group-b counterparts and vice versa;
        terms of other groups, and terms with no counterpart (null), stay as they are."""
        def repl(m: re.Match) -> str:
            found = m.group("term")
            key = " ".join(found.lower().split())
            g, row = self.lookup[key]
            target = b if g == a else a if g == b else None
            new = row[target] if target is not None else None
            if new is not None and key in self.disambiguate:
                new = self._disambiguate(key, m.string, m.end("term"))
            prefix = m.group(0)[: m.start("term") - m.start(0)]
            if new is None:
                return m.group(0)
            new_text = match_case(found, new)
            if m.group("art"):
                art = m.group("art")
                prefix = match_case(art, _article_for(new)) + m.group("sp")
            return prefix + new_text

        return self.pattern.sub(repl, text) if self.pattern is not None else text

    def _disambiguate(self, key: str, text: str, end: int) -> str:
        nxt = re.match(r"\s*([A-Za-z]+(?:'[A-Za-z]+)?|'[A-Za-z]+)", text[end:])
        choice = self.disambiguate[key]
        if nxt is None or nxt.group(1).lower() in FUNCTION_WORDS:
            return choice["otherwise"]
        return choice["before_word"]


def swap_terms(text: str, axis_spec: dict, from_group: str, to_group: str, axis: str = "") -> str:
    """Convenience: the counterfactual of `text` with `from_group` and `to_group` swapped on one axis."""
    sw = AxisSwapper(axis, axis_spec)
    return sw.swap(text, sw.groups.index(from_group), sw.groups.index(to_group))


# --------------------------------------------------------------------------------------------- probe

def counterfactual_probe(classifier, texts: Sequence[str], terms: dict | None = None,
                         templates: list[str] | None = None, max_texts: int = 2000, seed: int = 0,
                         min_pairs: int = MIN_PAIRS, max_variants: int = MAX_VARIANTS,
                         max_template_pairs: int = MAX_TEMPLATE_PAIRS,
                         min_prob_change: float = MIN_FLIP_PROB_CHANGE,
                         batch_size: int = 64, n_worst: int = N_WORST) -> dict:
    """Counterfactual identity-term probe (Garg et al. 2019's counterfactual token fairness).

    For every text that contains a term of an axis, build its counterfactual(s): on a two-group axis the
    groups are swapped (he <-> she, his wife -> her husband); on a larger axis the group of the first term
    found is swapped with up to `max_variants` other groups, drawn with `seed`. Both versions are
    predicted, and per axis we measure the flip rate (the predicted label changes) and the mean absolute
    change of the probability of the originally predicted class. A label change counts as a flip only
    when that probability also moved by at least `min_prob_change` (`raw_flip_rate` counts every label
    change). Texts with terms are sampled down to
    `max_texts` (seed). An axis with fewer than `min_pairs` test-text pairs also gets the neutral templates
    (`templates`, default: those of `terms`), filled with each pair of groups' phrases, so the check never
    silently measures nothing. All predictions are made in one batched `predict_proba` call.
    """
    terms = terms if terms is not None else load_identity_terms(None)
    templates = list(terms.get("templates", [])) if templates is None else list(templates)
    for t in templates:
        if t.count(SLOT) != 1:
            raise BadInput(f"template {t!r} must contain {SLOT} exactly once")
    rng = random.Random(seed)
    texts = [str(t) for t in texts]
    swappers = {axis: AxisSwapper(axis, spec) for axis, spec in terms["axes"].items()}

    # 1. which texts carry which axes (regex scan of all texts; cheap)
    hits: dict[int, dict[str, list[int]]] = {}
    for i, text in enumerate(texts):
        found = {axis: g for axis, sw in swappers.items() if (g := sw.groups_in(text))}
        if found:
            hits[i] = found
    with_terms = sorted(hits)
    probed = sorted(rng.sample(with_terms, max_texts)) if len(with_terms) > max_texts else with_terms

    # 2. pairs: (axis, source, swap label, original text, counterfactual text)
    pairs: list[tuple[str, str, str, str, str]] = []
    for i in probed:
        for axis, found in hits[i].items():
            sw = swappers[axis]
            src = found[0]
            others = [g for g in range(len(sw.groups)) if g != src]
            if len(others) > max_variants:
                others = sorted(rng.sample(others, max_variants))
            for tgt in others:
                cf = sw.swap(texts[i], src, tgt)
                if cf != texts[i]:
                    pairs.append((axis, "test_texts", f"{sw.groups[src]}->{sw.groups[tgt]}", texts[i], cf))
    per_axis_text_pairs = defaultdict(int)
    for p in pairs:
        per_axis_text_pairs[p[0]] += 1
    for axis, spec in terms["axes"].items():
        if per_axis_text_pairs[axis] >= min_pairs or not templates or not spec.get("fillers"):
            continue
        groups = spec["groups"]
        filled = [(axis, "templates", f"{groups[a]}->{groups[b]}",
                   template.replace(SLOT, row[a]), template.replace(SLOT, row[b]))
                  for template in templates for row in spec["fillers"]
                  for a in range(len(groups)) for b in range(a + 1, len(groups))
                  if row[a] is not None and row[b] is not None]
        # A seeded sample bounds the cost (every pair is two predictions) while keeping the flip-rate
        # estimate's standard error under ~0.03 at the default cap.
        pairs.extend(rng.sample(filled, max_template_pairs) if len(filled) > max_template_pairs else filled)

    # 3. one batched prediction over every distinct text
    unique = list(dict.fromkeys(t for p in pairs for t in (p[3], p[4])))
    probs = classifier.predict_proba(unique, batch_size=batch_size) if unique else np.zeros((0, 0))
    probs = np.asarray(probs, dtype=float)
    row_of = {t: k for k, t in enumerate(unique)}
    labels = list(classifier.labels)

    records = []
    for axis, source, swap, orig, cf in pairs:
        po, pc = probs[row_of[orig]], probs[row_of[cf]]
        c, c2 = int(po.argmax()), int(pc.argmax())
        records.append({"axis": axis, "source": source, "swap": swap, "original": orig, "counterfactual": cf,
                        "original_pred": labels[c], "counterfactual_pred": labels[c2],
                        "original_prob": round(float(po[c]), 4), "counterfactual_prob": round(float(pc[c]), 4),
                        "label_changed": c != c2,
                        "flipped": c != c2 and abs(float(po[c]) - float(pc[c])) >= min_prob_change,
                        "_delta": abs(float(po[c]) - float(pc[c]))})

    def summarize(recs: list[dict]) -> dict:
        n = len(recs)
        return {"flip_rate": float(sum(r["flipped"] for r in recs) / n) if n else None,
                "raw_flip_rate": float(sum(r["label_changed"] for r in recs) / n) if n else None,
                "mean_abs_prob_change": float(sum(r["_delta"] for r in recs) / n) if n else None,
                "n_pairs": n}

    def worst(recs: list[dict], k: int) -> list[dict]:
        top = sorted(recs, key=lambda r: (r["flipped"], r["_delta"]), reverse=True)[:k]
        return [{key: v for key, v in r.items() if not key.startswith("_")} for r in top]

    def source_of(recs: list[dict]) -> str:
        kinds = {r["source"] for r in recs}
        return "both" if len(kinds) == 2 else kinds.pop() if kinds else "none"

    axes = {}
    for axis in terms["axes"]:
        recs = [r for r in records if r["axis"] == axis]
        by_source = {s: summarize([r for r in recs if r["source"] == s])
                     for s in ("test_texts", "templates") if any(r["source"] == s for r in recs)}
        by_swap = {s: summarize([r for r in recs if r["swap"] == s]) for s in sorted({r["swap"] for r in recs})}
        axes[axis] = {**summarize(recs), "gated": len(recs) >= min_pairs, "source": source_of(recs),
                      "n_texts": sum(1 for i in probed if axis in hits[i]),
                      "by_source": by_source, "by_swap": by_swap, "worst_examples": worst(recs, 3)}
    gated = {a: v["flip_rate"] for a, v in axes.items() if v["gated"]}
    worst_axis = max(gated, key=gated.get) if gated else None
    return {**summarize(records),
            "max_axis_flip_rate": gated[worst_axis] if worst_axis else None, "worst_axis": worst_axis,
            "source": source_of(records), "n_texts": len(texts), "n_texts_with_terms": len(with_terms),
            "n_texts_probed": len(probed), "min_pairs": int(min_pairs), "terms_source": terms.get("source"),
            "axes": axes, "worst_examples": worst(records, n_worst)}


# -------------------------------------------------------------------------------------------- report

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


def render_bias_report(bias: dict) -> str:
    """Markdown for the KFP UI and MLflow: verdict and thresholds (when `gate` / `thresholds` are passed
    in), the counterfactual probe per axis, the worst examples and the slice table.
    `bias`: {"counterfactual": probe result | None, "slices": slice_metrics result | None,
    "gate": decide() result (optional), "thresholds": dict (optional)}."""
    out = ["# Bias and fairness report", ""]
    gate, thresholds = bias.get("gate"), bias.get("thresholds")
    if gate is not None:
        verdict = "**PASSED** (blessed)" if gate.get("passed") else "**REJECTED**"
        out += [f"Gate verdict: {verdict}", ""]
        for r in gate.get("reasons", []):
            out.append(f"- {r}")
        for n in gate.get("notes", []):
            out.append(f"- note: {n}")
        if gate.get("reasons") or gate.get("notes"):
            out.append("")
        if gate.get("checks"):
            out += ["| check | value | threshold | result |", "|---|---|---|---|"]
            for c in gate["checks"]:
                result = "skipped" if c.get("skipped") else ("pass" if c.get("passed") else "FAIL")
                if not c.get("blocking", True) and not c.get("skipped"):
                    result += " (not blocking)"
                out.append(f"| {c['name']} | {_f(c.get('value'), 4)} | {c.get('op', '')} {_f(c.get('threshold'), 4)} "
                           f"| {result} |")
            out.append("")
    elif thresholds:
        out += ["Thresholds: " + ", ".join(f"`{k}` = {v}" for k, v in thresholds.items()), ""]

    probe = bias.get("counterfactual")
    out += ["## Counterfactual identity-term probe", ""]
    if not probe:
        out += ["Not run.", ""]
    else:
        limit = (thresholds or {}).get("max_flip_rate")
        out += [f"Swapping identity terms (he ↔ she, Christian ↔ Muslim, …) should not change the prediction. "
                f"Pooled flip rate **{_f(probe.get('flip_rate'))}** over {probe.get('n_pairs', 0)} pairs; "
                f"worst axis **{probe.get('worst_axis') or '–'}** at {_f(probe.get('max_axis_flip_rate'))}"
                + (f" (limit {limit})" if limit is not None else "") + f". Source: {probe.get('source')}; "
                f"{probe.get('n_texts_with_terms', 0)} of {probe.get('n_texts', 0)} test texts contain a term, "
                f"{probe.get('n_texts_probed', 0)} probed.", ""]
        out += ["| axis | pairs | flip rate | mean abs Δp | source | gated |", "|---|---:|---:|---:|---|---|"]
        for axis, a in probe.get("axes", {}).items():
            flag = "" if limit is None or a.get("flip_rate") is None or a["flip_rate"] <= limit or not a.get("gated") \
                else " ⚠"
            out.append(f"| {axis} | {a['n_pairs']} | {_f(a.get('flip_rate'))}{flag} | {_f(a.get('mean_abs_prob_change'))} "
                       f"| {a.get('source')} | {'yes' if a.get('gated') else 'no'} |")
        out.append("")
        examples = probe.get("worst_examples", [])
        if examples:
            out += ["### Largest changes", "", "| axis | original → prediction | counterfactual → prediction |",
                    "|---|---|---|"]
            for e in examples:
                out.append(f"| {e['axis']} ({e['swap']}) | {_cell(e['original'])} → **{e['original_pred']}** "
                           f"({e['original_prob']:.2f}) | {_cell(e['counterfactual'])} → **{e['counterfactual_pred']}** "
                           f"(p[{e['original_pred']}] = {e['counterfactual_prob']:.2f}) |")
            out.append("")

    slices = bias.get("slices")
    out += ["## Slice metrics", ""]
    if not slices:
        out += ["No slice columns configured.", ""]
    else:
        out += [f"Slices with fewer than {slices['min_slice_size']} rows are shown but not gated. "
                f"Largest gap: **{_f(slices.get('max_slice_gap'))}**"
                + (f" (column `{slices['worst_column']}`)" if slices.get("worst_column") else "")
                + (f", limit {thresholds['max_slice_gap']}" if thresholds and "max_slice_gap" in thresholds else "")
                + ".", ""]
        for col, c in slices["columns"].items():
            out += [f"### `{col}` — accuracy gap {_f(c['accuracy_gap'])}, macro-F1 gap {_f(c['macro_f1_gap'])}"
                    f" ({c['n_gated']} gated slices)", "",
                    "| slice | n | accuracy | macro-F1 | worst FNR (class) | gated |", "|---|---:|---:|---:|---|---|"]
            for value, s in c["slices"].items():
                fnrs = [(v["fnr"], lab) for lab, v in s["per_class"].items() if v["fnr"] is not None]
                wf = max(fnrs) if fnrs else None
                out.append(f"| {_cell(value, 60)} | {s['n']} | {_f(s['accuracy'])} | {_f(s['macro_f1'])} | "
                           f"{_f(wf[0]) + ' (' + wf[1] + ')' if wf else '–'} | {'yes' if s['gated'] else 'no'} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"
