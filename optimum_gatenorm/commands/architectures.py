"""`optimum-cli gatenorm architectures`: list the supported architectures."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .arguments import _setup
from .base import _LeafCommand


if TYPE_CHECKING:
    from argparse import ArgumentParser


class ArchitecturesCommand(_LeafCommand):
    @staticmethod
    def parse_args(parser: "ArgumentParser"):
        _setup(
            parser,
            "List the supported architectures (config.model_type), where each stores its query and key projections, "
            "and which exports take it.",
        )
        parser.add_argument("--format", choices=("table", "json"), default="table")

    def execute(self):
        from optimum_gatenorm.adapters import describe_architectures

        rows = describe_architectures()
        if self.args.format == "json":
            print(json.dumps(rows))
            return
        width = max(len(row["model_type"]) for row in rows)
        lines = [f"{'model_type':<{width}}  gguf  nemotron-nas  query and key; onnx; notes"]
        for row in rows:
            onnx = "" if row["onnx"] == "yes" else f"; onnx: {row['onnx']}"
            notes = f"; {row['notes']}" if row["notes"] else ""
            flags = f"{'yes' if row['gguf'] else 'no':<4}  {'yes' if row['nemotron_nas'] else 'no':<12}"
            lines.append(f"{row['model_type']:<{width}}  {flags}  {row['query_key']}{onnx}{notes}")
        print("\n".join(lines))
