"""`optimum-cli gatenorm compare`: perplexity against the number of removed sublayers, for several criteria."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .arguments import (
    REPLACEMENTS,
    _add_calibration_args,
    _add_fit_args,
    _add_model_args,
    _add_result_file_args,
    _add_retrieval_args,
    _add_window_args,
    _int_list,
    _name_list,
    _non_negative_int,
    _positive_int,
    _retrieval_config,
    _setup,
)
from .base import _LeafCommand
from .messages import _check_result_files, _inputs, _print_table, _write_results


if TYPE_CHECKING:
    from argparse import ArgumentParser


class CompareCommand(_LeafCommand):
    STANDARD_OUTPUT = True

    @staticmethod
    def parse_args(parser: "ArgumentParser"):
        _setup(
            parser,
            "Perplexity after removing k attention sublayers, for several criteria and several k, on one loaded\n"
            "model (sublayers are masked in memory, nothing is reloaded). Writes a table, JSON (--output) and a PNG\n"
            "plot (--plot: perplexity vs k, one line per criterion, random as a band over seeds), and the Spearman\n"
            "rank correlation between the criteria's scores. --task adds the long-context retrieval suite at every\n"
            "point (right cases per task and length; the same masks or replacements, see docs/quality.md).",
        )
        _add_model_args(parser)
        parser.add_argument("--text", "-t", required=True, help="UTF-8 text file to evaluate on")
        parser.add_argument(
            "--criteria",
            type=_name_list,
            help="comma-separated criteria (default: {compare_criteria}; add {data_driven} with --calibration-text)",
        )
        parser.add_argument(
            "--num-layers",
            "-k",
            type=_int_list("numbers of sublayers", "0,2,4,8 or 0-8"),
            default=[0, 2, 4, 8],
            help="numbers of sublayers to remove, comma-separated or ranges (default: 0,2,4,8)",
        )
        parser.add_argument(
            "--seeds",
            type=_int_list("seeds", "0-6 or 0,3,5"),
            default=[0, 1, 2, 3, 4],
            help="seeds of the random criterion, comma-separated or ranges like 0-6 (default: 0-4)",
        )
        parser.add_argument("--protect-first", type=_non_negative_int, default=1, help="as for prune (default: 1)")
        parser.add_argument("--protect-last", type=_non_negative_int, default=0, help="as for prune (default: 0)")
        parser.add_argument(
            "--min-gap", type=_positive_int, help="as for prune, for every criterion (default: each criterion's own)"
        )
        parser.add_argument(
            "--replacement",
            choices=REPLACEMENTS,
            default="none",
            help="as for prune, at every point: each distinct removed set gets its own fit (on --calibration-text "
            "when given, else on the 16 x 256 tokens cosine_self samples with seed 0) (default: none)",
        )
        _add_fit_args(parser, samples=False)
        _add_window_args(parser)
        _add_retrieval_args(parser, seed_flag="--task-seed")  # --seeds above is the random criterion's
        _add_calibration_args(parser, seed=False)  # --seeds above
        _add_result_file_args(
            parser,
            output="write the JSON result (every point, scores, timings) here (`-`: stdout, the table on stderr)",
            plot="write a PNG plot here (needs matplotlib: the plot extra)",
        )

    def execute(self):
        from optimum_gatenorm.evaluation.compare import CompareConfig, compare

        args = self.args
        inputs = _inputs(args, "model", "text", "calibration_text")
        _check_result_files(args, inputs)
        config = CompareConfig(
            **({"criteria": args.criteria} if args.criteria else {}),  # default: DEFAULT_COMPARE_CRITERIA
            num_layers=args.num_layers,
            seeds=args.seeds,
            protect_first=args.protect_first,
            protect_last=args.protect_last,
            min_gap=args.min_gap,
            window=args.window,
            stride=args.stride,
            max_tokens=args.max_tokens,
            bos=args.bos,
            replacement=args.replacement,
            fit=args.fit,
            distill_steps=args.distill_steps,
            retrieval=_retrieval_config(args),
        )
        result = compare(
            args.model,
            args.text,
            config,
            calibration_text=args.calibration_text,
            calibration_samples=args.calibration_samples,
            calibration_length=args.calibration_length,
            allow_pickle=args.allow_pickle,
            progress=True,
        )
        _print_table(args, result.format_table())
        _write_results(args, result, inputs)
