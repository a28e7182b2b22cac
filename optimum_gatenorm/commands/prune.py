"""`optimum-cli gatenorm prune`: remove the lowest-scored attention sublayers and save."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .arguments import (
    CRITERIA_HELP,
    DEFAULT_CRITERION,
    DTYPES,
    MIN_GAP_HELP,
    PRUNE_EXPORTS,
    REPLACEMENTS,
    _add_calibration_args,
    _add_fit_args,
    _add_model_args,
    _layer_list,
    _non_negative_int,
    _positive_int,
    _ratio,
    _setup,
    _speedup,
)
from .base import _LeafCommand


if TYPE_CHECKING:
    from argparse import ArgumentParser


def _add_amount_args(parser: "ArgumentParser") -> None:
    """How many sublayers `prune` removes: a count, a ratio, or a target speed-up and what it is planned for."""
    amount = parser.add_mutually_exclusive_group(required=True)
    amount.add_argument("--num-layers", "-k", type=_non_negative_int, help="number of attention sublayers to remove")
    amount.add_argument(
        "--ratio", type=_ratio, help="fraction of all attention sublayers to remove, in [0, 1) (rounded)"
    )
    amount.add_argument(
        "--target-speedup",
        type=_speedup,
        metavar="X",
        help="remove the fewest attention sublayers whose predicted speed-up reaches X (e.g. 1.2) at --context and "
        "--batch, for --phase; predicted from --shares when given, else from the analytical cost model, counting "
        "the cost of --replacement (a linear map is one d x d product per token)",
    )
    parser.add_argument(
        "--context",
        type=_positive_int,
        help="with --target-speedup: prompt/context length in tokens (default: 1024)",
    )
    parser.add_argument("--batch", type=_positive_int, help="with --target-speedup: batch size (default: 1)")
    parser.add_argument(
        "--phase",
        choices=("prefill", "decode", "both"),
        help="with --target-speedup: the phase that must reach X (default: both)",
    )
    parser.add_argument(
        "--shares",
        metavar="FILE",
        help="with --target-speedup: attention time shares measured on the target backend (JSON written by "
        "optimum_gatenorm.speed.measuring.measure_attention_shares(...).save(FILE)); default: the analytical cost model",
    )


class PruneCommand(_LeafCommand):
    @staticmethod
    def parse_args(parser: "ArgumentParser"):
        _setup(
            parser,
            "Remove the lowest-scored attention sublayers (the MLPs stay; the residual passes through) and save a\n"
            "smaller checkpoint with its tokenizer, a gatenorm_report.json and a model card (README.md). Load it with\n"
            "optimum_gatenorm.load_pruned(dir), or AutoModelForCausalLM.from_pretrained(dir) after\n"
            "`import optimum_gatenorm`.",
        )
        _add_model_args(parser)
        parser.add_argument("--output", "-o", required=True, help="directory for the pruned checkpoint")
        _add_amount_args(parser)
        parser.add_argument("--criterion", "-c", default=DEFAULT_CRITERION, help=CRITERIA_HELP)
        parser.add_argument(
            "--protect-first",
            type=_non_negative_int,
            default=1,
            help="never remove the first N attention sublayers (default: 1; layer 0 is usually critical)",
        )
        parser.add_argument(
            "--protect-last", type=_non_negative_int, default=0, help="never remove the last N (default: 0)"
        )
        parser.add_argument(
            "--exclude-layers",
            type=_layer_list,
            default=[],
            help="comma-separated layer indices never to remove, e.g. 3,5,7",
        )
        parser.add_argument("--min-gap", type=_positive_int, help=MIN_GAP_HELP)
        parser.add_argument(
            "--replacement",
            choices=REPLACEMENTS,
            default="linear",
            help="what a removed attention sublayer is replaced by (default: linear, a bias-free d x d map of the "
            "layer's normalised input: one d x d product per token, no attention, no KV cache; llama.cpp's deci "
            "linear-attention layer). mean: a constant vector per layer (the mean of what the sublayer added; no "
            "compute). none: removed plainly (what Nemotron-NAS exports need). Fitted in closed form, layer by layer, on the 16 x 256 "
            "tokens cosine_self samples from the model (--seed; no user data), or on --calibration-text when "
            "given; prints the KL divergence to the unpruned model with and without it on 2 sequences the fit "
            "did not use. docs/replacement.md",
        )
        _add_fit_args(parser, samples=True)
        parser.add_argument(
            "--dtype", choices=DTYPES, default="auto", help="dtype of the saved checkpoint (default: the input's)"
        )
        parser.add_argument("--overwrite", action="store_true", help="replace an existing --output directory")
        parser.add_argument(
            "--device",
            default="auto",
            help="device for scoring, the replacement fit and --export: auto, cpu, cuda, ... (default: %(default)s; "
            "auto: cuda when torch sees a GPU, else cpu, logged with the reason)",
        )
        parser.add_argument(
            "--export",
            choices=PRUNE_EXPORTS,
            help="also export the pruned model to ONNX (with KV cache) into OUTPUT/onnx, for ORTModelForCausalLM; "
            "fp16 (--dtype float16) needs --device cuda",
        )
        parser.add_argument(
            "--max-memory",
            metavar="SIZE",
            help="memory the model's weights may take here, e.g. 24GB or 512MiB (default: what the system says is "
            "available). A checkpoint whose weights are larger is pruned without loading it: file to file, one "
            "tensor at a time, in the memory of one layer; that takes a data-free prune (--criterion gate_norm "
            "--replacement none) and no --export or --dtype. A request that would need the model loaded is refused "
            "before any work. docs/installation.md#what-a-larger-model-needs",
        )
        parser.add_argument("--json", action="store_true", help="print the pruning report as JSON on stdout")
        _add_calibration_args(parser)

    def execute(self):
        from optimum_gatenorm.errors import InvalidConfigError
        from optimum_gatenorm.pipeline import prune_and_save
        from optimum_gatenorm.pruning.configuration import GateNormConfig

        args = self.args
        planning = {name: getattr(args, name) for name in ("phase", "batch", "context") if getattr(args, name)}
        if args.target_speedup is None and (planning or args.shares):
            raise InvalidConfigError("--context, --batch, --phase and --shares go with --target-speedup X")
        target = None
        if args.target_speedup is not None:
            from optimum_gatenorm.speed.planning import SpeedupTarget

            target = SpeedupTarget(args.target_speedup, shares=args.shares, **planning)
        config = GateNormConfig(
            num_layers=args.num_layers,
            ratio=args.ratio,
            criterion=args.criterion,
            protect_first=args.protect_first,
            protect_last=args.protect_last,
            exclude_layers=tuple(args.exclude_layers),
            min_gap=args.min_gap,
            seed=args.seed,
            replacement=args.replacement,
            fit=args.fit,
            distill_steps=args.distill_steps,
            distill_samples=args.distill_samples,
        )
        result = prune_and_save(
            args.model,
            args.output,
            config,
            target_speedup=target,
            dtype=args.dtype,
            device=args.device,
            export=args.export,
            overwrite=args.overwrite,
            allow_pickle=args.allow_pickle,
            calibration_text=args.calibration_text,
            calibration_samples=args.calibration_samples,
            calibration_length=args.calibration_length,
            max_memory=args.max_memory,
            progress=True,
        )
        report = result.report
        if args.json:
            exports = {name: str(path) for name, path in result.exports.items()}
            data = {**report.to_dict(), "output": str(result.output_dir), "exports": exports}
            if result.planned is not None:
                data["target_speedup"] = {k: v for k, v in result.planned.items() if k != "summary"}
            print(json.dumps(data, indent=2))
        else:
            print(result.summary())
