"""Errors a stage raises on purpose; the CLI and the KFP shells map them to exit codes.

docs/ARCHITECTURE.md, "Exit codes": 2 = bad input or usage (one clear line, no traceback), 3 = candidate rejected by a gate,
1 = anything else (a real bug keeps its traceback).
"""
import math


class DomaintuneError(Exception):
    exit_code = 1


class BadInput(DomaintuneError):
    """Bad data, path or parameter. The message is one line naming the file, row, column or parameter."""

    exit_code = 2


class Rejected(DomaintuneError):
    """The candidate failed a gate; the run was logged with the reasons and nothing was registered."""

    exit_code = 3


class RegistryUnavailable(DomaintuneError):
    """The MLflow tracking server did not answer within the bounded wait (registry/client.py): one line naming
    the tracking URI, the cause and how long was waited. Exit 1: the input is fine, the server is not; rerun
    when it is back (the cached stages are reused)."""

    exit_code = 1


def require(condition: bool, message: str) -> None:
    if not condition:
        raise BadInput(message)


def is_number(value) -> bool:
    """A real, finite number: booleans are not numbers here, and NaN or infinity is never a valid setting."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def positive(name: str, value, kind=int) -> None:
    """Parameters are validated by their kebab-case CLI name, the one the user typed."""
    if not is_number(value) or value <= 0 or (kind is int and int(value) != value):
        raise BadInput(f"--{name} must be a positive {'integer' if kind is int else 'number'} (got {value!r})")


def fraction(name: str, value, *, allow_zero: bool = True) -> None:
    if not is_number(value) or not (value >= 0 if allow_zero else value > 0) or value >= 1:
        raise BadInput(f"--{name} must be in {'[0, 1)' if allow_zero else '(0, 1)'} (got {value!r})")


def non_negative(name: str, value, kind=float) -> None:
    if not is_number(value) or value < 0 or (kind is int and int(value) != value):
        raise BadInput(f"--{name} must be a non-negative {'integer' if kind is int else 'number'} (got {value!r})")


def one_of(name: str, value, choices) -> None:
    if value not in choices:
        raise BadInput(f"--{name} must be one of {', '.join(map(str, choices))} (got {value!r})")
