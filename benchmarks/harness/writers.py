"""A study's results written whole, and paths shown as the repository names them."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from harness import ROOT


def write_json(path: Path, data, indent: int = 1) -> Path:
    """`data` as indented JSON at `path`, written to a temporary file beside it and renamed: a study stopped halfway
    leaves the previous result, never half of a new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(json.dumps(data, indent=indent) + "\n")
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return path


def shown(path: Path) -> str:
    """`path` relative to the repository where it lies inside it, else as given."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
