"""`optimum-cli gatenorm score`: rank the attention sublayers by a criterion."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from .arguments import CRITERIA_HELP, DEFAULT_CRITERION, _add_calibration_args, _add_model_args, _setup
from .base import _LeafCommand
from .messages import _inputs, _to_stdout


if TYPE_CHECKING:
    from argparse import ArgumentParser


class ScoreCommand(_LeafCommand):
    STANDARD_OUTPUT = True

    @staticmethod
    def parse_args(parser: "ArgumentParser"):
        _setup(
            parser,
            "Score every attention sublayer with a criterion and print the ranking, lowest score (first to remove)\n"
            "first. The default, cosine_self, needs no data from you: the model samples 16 x 256 tokens from its start\n"
            "token and cosine is measured on them (seeded by --seed). Weight-only criteria (gate_trace, gate_norm, ...)\n"
            "read just the tensors they need from the safetensors files, one layer at a time, without building the\n"
            "model: no data, no forward pass; cosine and attn_norm run the model on --calibration-text.",
        )
        _add_model_args(parser)
        parser.add_argument("--criterion", "-c", default=DEFAULT_CRITERION, help=CRITERIA_HELP)
        parser.add_argument(
            "--format", choices=("table", "json"), default="table", help="output format (default: table)"
        )
        parser.add_argument("--output", "-o", help="write to this file instead of stdout (`-`: stdout)")
        parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
        parser.add_argument(
            "--device",
            default="auto",
            help="device for the computation: auto, cpu, cuda, ... (default: %(default)s; auto: cuda when torch sees "
            "a GPU, else cpu, logged with the reason)",
        )
        _add_calibration_args(parser)

    def execute(self):
        from optimum_gatenorm.outputs import atomic_write_text, check_output_path
        from optimum_gatenorm.pipeline import score_model, score_summary

        args = self.args
        inputs = _inputs(args, "model", "calibration_text")
        to_file = args.output and not _to_stdout(args)
        if to_file:
            check_output_path(args.output, args.overwrite, inputs=inputs)
        report = score_model(
            args.model,
            args.criterion,
            calibration_text=args.calibration_text,
            calibration_samples=args.calibration_samples,
            calibration_length=args.calibration_length,
            seed=args.seed,
            device=args.device,
            allow_pickle=args.allow_pickle,
            progress=True,
        )
        text = report.to_json() if args.format == "json" else self.cli_text(score_summary(report))
        if to_file:
            path = atomic_write_text(args.output, text + "\n", overwrite=args.overwrite, inputs=inputs)
            print(f"Wrote {path}", file=sys.stderr)
        else:
            print(text)
