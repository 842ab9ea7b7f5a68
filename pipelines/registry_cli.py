"""`domaintune models` and `domaintune promote`: the registry as an MLOps engineer uses it (aliases only)."""
from __future__ import annotations

import datetime as dt
import getpass

from domaintune.components.registry import client as registry
from domaintune.components.core.errors import BadInput


def list_models(name: str | None, tracking_uri: str = "") -> str:
    from mlflow.exceptions import MlflowException

    c = registry.client(tracking_uri)
    names = [name] if name else sorted(m.name for m in c.search_registered_models())
    if not names:
        return "no registered models"
    lines = [f"{'model':<28}{'version':>8}  {'aliases':<22}{'macro-F1':>9}{'accuracy':>9}  {'gate':<9}{'serving':<11}created"]
    for model_name in names:
        try:
            aliases = c.get_registered_model(model_name).aliases
        except MlflowException:
            raise BadInput(f"no registered model named {model_name!r}") from None
        by_version: dict[str, list[str]] = {}
        for alias, version in aliases.items():
            by_version.setdefault(str(version), []).append(alias)
        for v in sorted(c.search_model_versions(f"name = '{model_name}'"), key=lambda v: -int(v.version)):
            created = dt.datetime.fromtimestamp(v.creation_timestamp / 1000).strftime("%Y-%m-%d %H:%M")
            lines.append(f"{model_name:<28}{v.version:>8}  {','.join(sorted(by_version.get(str(v.version), []))) or '-':<22}"
                         f"{v.tags.get('test_macro_f1', '-'):>9}{v.tags.get('test_accuracy', '-'):>9}  "
                         f"{v.tags.get('gate', '-'):<9}{v.tags.get('serving', '-'):<11}{created}")
    return "\n".join(lines)


def promote(name: str, version: int, alias: str, force: bool, reason: str, tracking_uri: str = "") -> str:
    from mlflow.exceptions import MlflowException

    c = registry.client(tracking_uri)
    try:
        mv = c.get_model_version(name, str(version))
    except MlflowException:
        raise BadInput(f"{name} has no version {version}") from None
    if mv.tags.get("gate") != "passed" and not force:
        raise BadInput(f"{name} v{version}: its gate did not pass (gate={mv.tags.get('gate', 'unknown')}); use --force to override")
    previous = registry.alias_version(c, name, alias)
    registry.set_alias(c, name, alias, version)
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    for key, value in {f"{alias}.promoted_by": getpass.getuser(), f"{alias}.promoted_at": stamp,
                       f"{alias}.reason": reason or "-", f"{alias}.forced": str(force).lower(),
                       f"{alias}.previous_version": previous.version if previous else "-"}.items():
        c.set_model_version_tag(name, str(version), key, value)
    was = f" (was v{previous.version})" if previous else ""
    return f"{name}: alias {alias!r} -> v{version}{was}"
