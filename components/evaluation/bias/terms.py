"""The identity-term lists and neutral templates of the counterfactual probe: the packaged
`identity_terms.yaml` (beside this module) or a user's YAML file in the same format, validated into plain,
JSON-serialisable dicts. Every malformed file fails with a BadInput that names the file."""
from __future__ import annotations

import os
from typing import Callable, NoReturn

from domaintune.components.core.errors import BadInput

PACKAGE = "domaintune.components.evaluation.bias"
PACKAGED_TERMS = "identity_terms.yaml"
SLOT = "{person}"
AXIS_KEYS = frozenset({"groups", "terms", "fillers", "target_only", "disambiguate"})

Bad = Callable[[str], NoReturn]


def load_identity_terms(path: str | None = None) -> dict:
    """The identity-term lists and templates: the packaged `identity_terms.yaml` (path None or "") or the
    user's YAML file in the same format (see the packaged file's header). Malformed -> BadInput naming
    the file. Returns {"source", "templates": [...], "axes": {axis: {"groups", "terms", "target_only",
    "disambiguate", "fillers"}}} (plain, JSON-serialisable)."""
    if path:
        return _validate_terms(_read_user_file(path), path)
    return _validate_terms(_read_packaged(), f"{PACKAGE}/{PACKAGED_TERMS}")


def _read_user_file(path: str):
    import yaml

    if not os.path.isfile(path):
        raise BadInput(f"{path}: identity terms file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def _read_packaged():
    from importlib import resources

    import yaml

    return yaml.safe_load(resources.files(PACKAGE).joinpath(PACKAGED_TERMS).read_text("utf-8"))


def _validate_terms(raw, name: str) -> dict:
    def bad(msg: str) -> NoReturn:
        raise BadInput(f"{name}: {msg}")

    axes_raw, templates = _check_top_level(raw, bad)
    axes = {str(axis): _validate_axis(str(axis), spec, bad) for axis, spec in axes_raw.items()}
    return {"source": name, "templates": list(templates), "axes": axes}


def _check_top_level(raw, bad: Bad) -> tuple[dict, list]:
    """The file's `axes` mapping and its `templates` list (each with the slot exactly once)."""
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
    return axes_raw, templates


def _validate_axis(axis: str, spec, bad: Bad) -> dict:
    if not isinstance(spec, dict):
        bad(f"axes.{axis} must be a mapping with 'groups' and 'terms'")
    groups = _groups(axis, spec.get("groups"), bad)
    terms = _rows(axis, "terms", spec.get("terms"), len(groups), True, bad)
    for i, row in enumerate(terms):
        if sum(x is not None for x in row) != len({x.lower() for x in row if x is not None}):
            bad(f"axes.{axis}.terms[{i}] repeats a term across groups (got {row!r})")
    fillers = _rows(axis, "fillers", spec.get("fillers"), len(groups), False, bad)
    known = {x.lower() for row in terms for x in row if x is not None}
    target_only = _target_only(axis, spec.get("target_only", []) or [], known, bad)
    dis = _disambiguate(axis, spec.get("disambiguate", {}) or {}, known, bad)
    unknown = set(spec) - AXIS_KEYS
    if unknown:
        bad(f"axes.{axis}: unknown key(s) {sorted(unknown)}")
    return {"groups": list(groups), "terms": terms, "fillers": fillers,
            "target_only": [t.lower() for t in target_only],
            "disambiguate": {str(k).lower(): {kk: vv.lower() for kk, vv in v.items()} for k, v in dis.items()}}


def _groups(axis: str, groups, bad: Bad) -> list[str]:
    if (not isinstance(groups, list) or len(groups) < 2 or not all(isinstance(g, str) for g in groups)
            or len(set(groups)) != len(groups)):
        bad(f"axes.{axis}.groups must list at least two distinct group names")
    return groups


def _rows(axis: str, key: str, value, n_groups: int, required: bool, bad: Bad) -> list[list[str | None]]:
    """Rows aligned with the groups: one non-empty string or null per group, at least two strings each."""
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


def _target_only(axis: str, target_only, known: set[str], bad: Bad) -> list[str]:
    if not isinstance(target_only, list) or not all(isinstance(t, str) for t in target_only):
        bad(f"axes.{axis}.target_only must be a list of terms")
    for t in target_only:
        if t.lower() not in known:
            bad(f"axes.{axis}.target_only: {t!r} is not one of the axis's terms")
    return target_only


def _disambiguate(axis: str, dis, known: set[str], bad: Bad) -> dict:
    if not isinstance(dis, dict):
        bad(f"axes.{axis}.disambiguate must map a term to {{before_word: X, otherwise: Y}}")
    for term, choice in dis.items():
        if (not isinstance(choice, dict) or set(choice) != {"before_word", "otherwise"}
                or not all(isinstance(v, str) for v in choice.values())):
            bad(f"axes.{axis}.disambiguate.{term} must be {{before_word: X, otherwise: Y}}")
        if str(term).lower() not in known or any(v.lower() not in known for v in choice.values()):
            bad(f"axes.{axis}.disambiguate.{term}: the term and its choices must be terms of the axis")
    return dis
