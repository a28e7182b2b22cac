"""The checks every configuration object and library call shares: one place, one wording.

Each raises `InvalidConfigError` (a `ValueError`) naming the field and the bad value, so a Python caller and the
CLI see the same one-line message.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import InvalidConfigError


__all__ = ["check_choice", "check_int", "check_int_list", "first_line", "is_int"]


def is_int(value: Any) -> bool:
    """An `int` that is not a `bool` (`True` is an `int` to Python, never a count to us)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int | None = None, error: type[Exception] = InvalidConfigError) -> int:
    """`value` if it is an integer (not a bool) of at least `minimum`; else `error` naming `name`."""
    if not is_int(value) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise error(f"{name} must be an integer{bound}, got {value!r}")
    return value


def check_int_list(
    name: str, values: Any, minimum: int | None = None, error: type[Exception] = InvalidConfigError
) -> list[int]:
    """`values` as a list if it is an iterable (not a string) of integers of at least `minimum`."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise error(f"{name} must be a list of integers, got {values!r}")
    values = list(values)
    if not all(is_int(v) and (minimum is None or v >= minimum) for v in values):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise error(f"{name} must be a list of integers{bound}, got {values!r}")
    return values


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """`value` if it is one of `choices`; else `InvalidConfigError` listing them."""
    choices = tuple(choices)
    if value not in choices:
        raise InvalidConfigError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name if it has none), for one-line errors."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
