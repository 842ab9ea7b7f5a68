"""Stage parameters: each stage's Params dataclass is the one place for a parameter's default and its
validation. The pipeline signature takes its defaults from these classes, every KFP shell declares exactly
their fields as inputs (tests/test_param_contract.py), and a shell builds its Params from its own inputs."""
from __future__ import annotations

import dataclasses
from typing import Mapping, TypeVar

T = TypeVar("T")


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def from_values(cls: type[T], values: Mapping) -> T:
    """Params from a mapping that holds (at least) every field: a shell's `locals()`, the pipeline's values."""
    return cls(**{name: values[name] for name in field_names(cls) if name in values})


def defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def csv_list(value: str) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]
