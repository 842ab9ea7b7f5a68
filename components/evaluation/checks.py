"""The gate's building blocks (evaluation/gate.py): a check record, numbers that fail closed, and the
opt-in checks on what evaluate measures beyond the test split (baseline lift, out-of-domain drop)."""
from __future__ import annotations

import math


def _num(value) -> float | None:
    """A finite float, or None for a missing / NaN / non-numeric value (callers fail closed on None)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _check(name: str, value, op: str, threshold, passed: bool, detail: str, *, blocking: bool = True,
           skipped: bool = False) -> dict:
    return {"name": name, "value": value, "op": op, "threshold": threshold, "passed": bool(passed),
            "blocking": blocking, "skipped": skipped, "detail": detail}


def _fmt(v) -> str:
    x = _num(v)
    return f"{x:.4f}" if x is not None else repr(v)


def lift_check(baselines: dict | None, min_lift: float, metric: str, notes: list[str]) -> dict | None:
    """Off (None) at min_lift −1, where every lift passes; else the candidate must beat the best baseline by
    min_lift (a missing baseline fails closed)."""
    if min_lift <= -1:
        return None
    lift = _num((baselines or {}).get("lift"))
    if lift is None:
        return _check("baseline_lift", None, ">=", min_lift, False, "no baseline measured: cannot tell the lift")
    best = baselines["best"]
    return _check("baseline_lift", lift, ">=", min_lift, lift >= min_lift - 1e-12,
                  f"{metric} {lift:+.4f} over the best baseline {best} "
                  f"({_fmt(baselines['models'][best].get(metric))})")


def ood_check(ood: dict | None, max_drop: float) -> dict | None:
    """Off (None) at max_ood_drop 1, where every drop passes, or without out-of-domain sets; else the worst
    set's drop of the primary metric vs the in-domain test split must stay within max_ood_drop."""
    if max_drop >= 1 or not ood:
        return None
    drops = {name: _num(s.get("drop")) for name, s in ood["sets"].items()}
    worst = max(drops, key=lambda k: math.inf if drops[k] is None else drops[k])
    drop = drops[worst]
    if drop is None:
        return _check("ood_drop", None, "<=", max_drop, False, f"{worst}: drop is not a number")
    return _check("ood_drop", drop, "<=", max_drop, drop <= max_drop + 1e-12,
                  f"{ood['metric']} drops {drop:.4f} from the in-domain test split on {worst}")
