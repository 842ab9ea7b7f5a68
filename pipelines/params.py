"""Pipeline parameters as the CLI and config files see them, read from the pipeline's own signature
(types, defaults and the docstring's descriptions): nothing here restates a parameter."""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass

from domaintune.components.core.errors import BadInput

KFP_TYPES = {"String": str, "Integer": int, "Float": float, "Boolean": bool}


@dataclass(frozen=True)
class Param:
    name: str
    type: type
    default: object
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def pipeline_params() -> list[Param]:
    from domaintune.pipelines.training_pipeline import training_pipeline

    return [Param(name, KFP_TYPES[spec.type], spec.default, spec.description or "")
            for name, spec in training_pipeline.component_spec.inputs.items()]


def add_param_flags(parser: argparse.ArgumentParser, params: list[Param]) -> None:
    group = parser.add_argument_group("pipeline parameters (also settable in --config as snake_case keys)")
    for p in params:
        kwargs = {"dest": p.name, "default": None, "help": f"{p.help} (default: {p.default!r})"}
        if p.type is bool:
            group.add_argument(p.flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            group.add_argument(p.flag, type=p.type, metavar=p.type.__name__.upper(), **kwargs)


def load_config(path: str, params: list[Param]) -> dict:
    """The parameters a YAML file sets. Every problem in it is reported at once, in one line:
    `--config c.yaml: epochs: expected a finite number (got nan); batch_size: expected an integer (got true)`;
    values of the right type are then checked by the stages' own validators, also all together."""
    import yaml

    if os.path.isdir(path) or not os.path.exists(path):
        raise BadInput(f"--config {path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BadInput(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise BadInput(f"--config {path}: expected a mapping of parameter names to values")
    by_name = {p.name: p for p in params}
    out, errors = {}, []
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in by_name:
            errors.append(f"unknown parameter {key!r}")
            continue
        try:
            out[name] = coerce(by_name[name], value, str(key))
        except BadInput as exc:
            errors.append(str(exc))
    if errors:
        from domaintune.pipelines.local_run import param_errors

        # the values that did coerce may still be out of range: say so in the same line
        errors += param_errors(resolve(params, out, {}))
        raise BadInput(f"--config {path}: " + "; ".join(dict.fromkeys(errors)))
    return out


def shown(value) -> str:
    """A value as the user wrote it: YAML's true/false, not Python's True/False."""
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def coerce(p: Param, value, where: str):
    """VALUE as P's type, or BadInput naming WHERE. Booleans are never numbers, and NaN or infinity never a
    setting (YAML's `.nan`, `.inf` or the strings "nan" / "inf")."""
    if p.type is bool:
        if isinstance(value, bool):
            return value
        raise BadInput(f"{where}: expected true or false (got {shown(value)})")
    if p.type is str:
        return ",".join(map(str, value)) if isinstance(value, list) else ("" if value is None else str(value))
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        kind = "an integer" if p.type is int else "a number"
        raise BadInput(f"{where}: expected {kind} (got {shown(value)})")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadInput(f"{where}: expected {'an integer' if p.type is int else 'a number'} (got {shown(value)})") from None
    if not math.isfinite(number):
        raise BadInput(f"{where}: expected a finite number (got {shown(value)})")
    if p.type is float:
        return number
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise BadInput(f"{where}: expected an integer (got {shown(value)})") from None
    if not number.is_integer():
        raise BadInput(f"{where}: expected an integer (got {shown(value)})")
    return int(value)


def resolve(params: list[Param], config: dict, flags: dict) -> dict:
    """defaults < config file < flags."""
    values = {p.name: p.default for p in params}
    values.update(config)
    values.update({k: v for k, v in flags.items() if k in values and v is not None})
    return values
