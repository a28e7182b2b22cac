"""`JSONMixin`: JSON in and out for the result dataclasses (reports, results), one implementation."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any


__all__ = ["JSONMixin"]


class JSONMixin:
    """For dataclasses: `to_dict()` is `dataclasses.asdict` (override to add fields), `to_json()` dumps it,
    `save(path)` writes it, `from_dict` / `from_json` read it back ignoring unknown keys (newer versions)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | Path) -> Path:
        """Writes `to_json()` to `path` (UTF-8, trailing newline) and returns the path."""
        path = Path(path)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: dict):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_json(cls, path: str | Path):
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
