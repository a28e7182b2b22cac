"""Parameters named in messages: Python's spelling for the library, the command line's for the CLI.

A library message names what to change with `param()`, which writes the Python spelling between backticks
(`` `overwrite=True` ``, `` `calibration_text=...` ``). A Python caller reads that as it stands. The CLI passes the
message through `to_flags()` with a function that knows its own options (derived from its argparse parsers), and
the same spans become `--overwrite` and `--calibration-text FILE`. Only spans of the exact shape `param()` writes
are touched; a span naming a parameter the CLI has no flag for stays in its Python spelling.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from typing import Any


__all__ = ["ANY", "is_bare", "param", "to_flags"]

ANY = ...
"""`param(name, ANY)`: a value the user fills in (`name=...`; on the command line the option's metavar)."""

_NO_VALUE = object()
_SPAN = re.compile(r"`([a-z_][a-z0-9_]*)(?:=([^`]+))?`")


def param(name: str, value: Any = _NO_VALUE) -> str:
    """The parameter `name` (set to `value`, when given) as a message names it: `` `name=value!r` ``.

    Args:
        name: The Python keyword argument or config field, e.g. `"overwrite"`.
        value: What to set it to (a `str`, `int`, `float`, `bool`, `None`, or `ANY` for a placeholder); omitted
            for the bare name.
    """
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"a parameter name is a Python identifier in lower case, got {name!r}")
    if value is _NO_VALUE:
        return f"`{name}`"
    if value is not ANY and not isinstance(value, (str, int, float, bool, type(None))):
        raise TypeError(f"param() takes a str, int, float, bool, None or ANY, got {type(value).__name__}")
    return f"`{name}=...`" if value is ANY else f"`{name}={value!r}`"


def _spans(message: str):
    for match in _SPAN.finditer(message):
        name, text = match.group(1), match.group(2)
        if text is None:
            yield match, name, _NO_VALUE
            continue
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            continue  # not written by param(): leave it alone
        yield match, name, value


def to_flags(message: str, flag: Callable[[str, Any], str | None]) -> str:
    """`message` with every `param()` span replaced by `flag(name, value)` (value `ANY` for a placeholder, and
    absent, `_NO_VALUE`, for a bare name), or left as it is where `flag` returns `None`."""
    out, end = [], 0
    for match, name, value in _spans(message):
        rendered = flag(name, value)
        if rendered is not None:
            out += [message[end : match.start()], rendered]
            end = match.end()
    return "".join(out) + message[end:]


def is_bare(value: Any) -> bool:
    """Whether `value`, as `to_flags` hands it over, stands for a bare name (`param(name)` without a value)."""
    return value is _NO_VALUE
