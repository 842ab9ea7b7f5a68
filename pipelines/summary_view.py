"""What `domaintune run` prints at the end: the summary's headline lines, then any warnings (template-only
bias findings, which the default gate reports but does not block on)."""
from __future__ import annotations

import sys


def print_summary(s: dict) -> None:
    from domaintune.components.tasks import get_task

    task = get_task(s.get("task") or "classification")
    test, pytorch, reg = s["metrics"]["test"], s["metrics"].get("test_pytorch") or {}, s["registry"]
    shown = list(dict.fromkeys((task.quality_metric, task.primary_metric)))
    rows = [("status", s["status"])]
    for k, metric in enumerate(shown):
        beside = f"  (PyTorch {pytorch[metric]:.4f})" if metric in pytorch else ""
        rows.append((f"test {metric.replace('_', ' ')}", f"{test[metric]:.4f}{beside}" + (f"  n={test['n']}" if k == 0 else "")))
    rows += [
        ("validation " + task.primary_metric.replace("_", " "), f"{s['metrics']['validation'][task.primary_metric]:.4f}"),
        ("training", f"{s['training']['examples_per_second']} examples/s, {s['training']['train_seconds']} s, "
                     f"{s['training']['precision']}" + batch_note(s['training'])),
        *quality_rows(s),
        ("gate", "passed" if s["gate"]["passed"] else "rejected: " + "; ".join(s["gate"]["reasons"])),
        ("deployable", s.get("deployable_path") or "PyTorch model (not exported)"),
        ("registered", f"{reg['model_name']} v{reg['version']} {reg['aliases']}" if reg["version"] else "no version"),
        ("mlflow run", f"{reg['run_id']}  ({reg['tracking_uri']})"),
        ("outputs", s["output_dir"]),
        ("wall time", f"{s['wall_seconds']} s"),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    for warning in s["gate"].get("warnings") or []:  # template-only bias findings: reported, not gated
        print(f"warning: {warning}", file=sys.stderr)


def batch_note(t: dict) -> str:
    """", batch 8 (chosen for 436 rows)" when the default picked it (finetune/sizing.py), ", batch 32" else."""
    if not t.get("batch_size"):
        return ""
    rows = t.get("batch_size_chosen_for")
    return f", batch {t['batch_size']}" + (f" (chosen for {rows} training rows; --batch-size sets it)" if rows else "")


def quality_rows(s: dict) -> list[tuple[str, str]]:
    """Baselines and lift, calibration, out-of-domain drops: the summary lines, where the run measured them."""
    rows = []
    b, c, ood = s.get("baselines"), s.get("calibration"), s.get("ood")
    if b:
        each = ", ".join(f"{name} {m[b['metric']]:.4f} ({m['seconds']:.1f} s)" for name, m in b["models"].items())
        rows.append(("baselines", f"{b['metric'].replace('_', ' ')}: {each}; lift {b['lift']:+.4f} over {b['best']}"))
    if c:
        rows.append(("calibration", f"T {c['temperature']:.3f}, test ECE {c['ece_before']:.4f} -> {c['ece_after']:.4f}"))
    for name, o in ((ood or {}).get("sets") or {}).items():
        rows.append((f"out-of-domain", f"{name}: {ood['metric'].replace('_', ' ')} {o[ood['metric']]:.4f} "
                                       f"(drop {o['drop']:+.4f}, n={o['n']})"))
    return rows
