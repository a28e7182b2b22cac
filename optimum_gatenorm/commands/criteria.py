"""`optimum-cli gatenorm criteria`: list the scoring criteria."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .arguments import _setup
from .base import _LeafCommand


if TYPE_CHECKING:
    from argparse import ArgumentParser


class CriteriaCommand(_LeafCommand):
    @staticmethod
    def parse_args(parser: "ArgumentParser"):
        _setup(parser, "List the registered scoring criteria.")
        parser.add_argument("--format", choices=("table", "json"), default="table")

    def execute(self):
        from optimum_gatenorm.criteria import DEFAULT_CRITERION, available_criteria, get_criterion

        rows = [get_criterion(name) for name in available_criteria()]
        if self.args.format == "json":
            fields = ("name", "description", "uses_norm", "uses_ov", "data_free", "min_gap")
            print(
                json.dumps(
                    [{f: getattr(c, f) for f in fields} | {"default": c.name == DEFAULT_CRITERION} for c in rows]
                )
            )
        else:
            width = max(len(c.name) for c in rows)
            lines = [f"{'criterion':<{width}}  data       min_gap  description"]
            for c in rows:
                data = "data-free" if c.data_free else "needs text"
                lines.append(f"{c.name:<{width}}  {data:<10} {c.min_gap:<8} {c.description}")
            print("\n".join(lines))
