"""Errors a stage raises on purpose; the CLI and the KFP shells map them to exit codes.

DESIGN.md §4: 2 = bad input or usage (one clear line, no traceback), 3 = candidate rejected by a gate,
1 = anything else (a real bug keeps its traceback).
"""


class DomaintuneError(Exception):
    exit_code = 1


class BadInput(DomaintuneError):
    """Bad data, path or parameter. The message is one line naming the file, row, column or parameter."""

    exit_code = 2


class Rejected(DomaintuneError):
    """The candidate failed a gate; the run was logged with the reasons and nothing was registered."""

    exit_code = 3


def require(condition: bool, message: str) -> None:
    if not condition:
        raise BadInput(message)


def positive(name: str, value, kind=int) -> None:
    """Parameters are validated by their kebab-case CLI name, the one the user typed."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or (
        kind is int and int(value) != value
    ):
        raise BadInput(f"--{name} must be a positive {'integer' if kind is int else 'number'} (got {value!r})")


def fraction(name: str, value, *, allow_zero: bool = True) -> None:
    low_ok = value >= 0 if allow_zero else value > 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low_ok or value >= 1:
        raise BadInput(f"--{name} must be in {'[0, 1)' if allow_zero else '(0, 1)'} (got {value!r})")
