"""Pipeline parameters as the CLI and config files see them, read from the pipeline's own signature
(types, defaults and the docstring's descriptions): nothing here restates a parameter."""
from __future__ import annotations

import argparse
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
    import yaml

    if not os.path.isfile(path):
        raise BadInput(f"--config {path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BadInput(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise BadInput(f"--config {path}: expected a mapping of parameter names to values")
    by_name = {p.name: p for p in params}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in by_name:
            raise BadInput(f"--config {path}: unknown parameter {key!r}")
        out[name] = coerce(by_name[name], value, f"--config {path}: {key}")
    return out


def coerce(p: Param, value, where: str):
    if p.type is bool:
        if isinstance(value, bool):
            return value
        raise BadInput(f"{where}: expected true or false (got {value!r})")
    if p.type is str:
        return ",".join(map(str, value)) if isinstance(value, list) else ("" if value is None else str(value))
    try:
        converted = p.type(value)
    except (TypeError, ValueError):
        raise BadInput(f"{where}: expected {p.type.__name__} (got {value!r})") from None
    if p.type is int and isinstance(value, float) and not value.is_integer():
        raise BadInput(f"{where}: expected an integer (got {value!r})")
    return converted


def resolve(params: list[Param], config: dict, flags: dict) -> dict:
    """defaults < config file < flags."""
    values = {p.name: p.default for p in params}
    values.update(config)
    values.update({k: v for k, v in flags.items() if k in values and v is not None})
    return values
