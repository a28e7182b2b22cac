"""`optimum-cli gatenorm ...`: thin commands that parse arguments, call the library and print.

optimum-cli imports this module at every start (see `optimum/commands/register/register_gatenorm.py`, which loads
it without importing the `optimum_gatenorm` package): keep module-level imports to the standard library and
`optimum.commands.base`. Everything heavy is imported inside `run()`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import TYPE_CHECKING

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo


if TYPE_CHECKING:
    from argparse import ArgumentParser

DEFAULT_MODEL = "smollm2-135m"  # optimum_gatenorm.checkpoints.models.DEFAULT_MODEL, repeated to keep start-up light
DEFAULT_CRITERION = "cosine_self"  # optimum_gatenorm.criteria.DEFAULT_CRITERION, likewise (a test checks they agree)
# Choices argparse checks at parse time, repeated here to keep start-up light (a test checks them against the
# library's: REPLACEMENTS, pipeline.EXPORT_FORMATS, exporters.FORMATS, GGUF_TYPES, NEMOTRON_NAS_ENGINES,
# QUANTIZE_TYPES).
REPLACEMENTS = ("none", "mean", "linear")
FITS = ("least-squares", "distill")
DISTILL_STEPS = 100
DISTILL_SAMPLES = 64
PRUNE_EXPORTS = ("onnx",)
EXPORT_FORMATS = ("onnx", "gguf", "nemotron-nas")
GGUF_TYPES = ("f32", "f16", "q8_0")
NEMOTRON_NAS_ENGINES = ("vllm", "tensorrt-llm")
QUANTIZE_TYPES = tuple("q8_0 q6_k q5_k_m q5_k_s q5_0 q4_k_m q4_k_s q4_0 q3_k_l q3_k_m q3_k_s q2_k".split())
# Help texts name the registered criteria and built-in models through `{criteria}`-style fields, filled from
# the registries when help is shown (`_HelpFormatter`), so a new criterion or model is in --help by itself.
CRITERIA_HELP = (
    "scoring criterion; the lowest-scored sublayers are removed first. Default: %(default)s: {default_criterion}. "
    "{criteria_by_kind}. `optimum-cli gatenorm criteria` describes each; benchmarks/RESULTS.md has how each held "
    "up on SmolLM2 and Gemma 3"
)
MIN_GAP_HELP = (
    "keep removed sublayers at least N layers apart, skipping candidates too close to one already chosen "
    "(1: plain k lowest; 2: no two neighbours; default: the criterion's own rule, {min_gaps}); if too few fit, "
    "the rest are taken lowest-first with a warning"
)
DTYPES = ("auto", "float32", "float16", "bfloat16")
# A library message names a parameter in Python's spelling (`optimum_gatenorm.params.param`); the CLI shows the
# flag whose dest it is. These are the Python parameters whose flag is spelled otherwise:
PARAMETER_DESTS = {
    "tokenizer_from": "tokenizer",  # export_gguf(tokenizer_from=DIR) is `export --tokenizer DIR`
    "pre_tokenizer": "gguf_pre_tokenizer",  # export_gguf(pre_tokenizer=) is `export --gguf-pre-tokenizer`
    "num_samples": "calibration_samples",  # Calibration.from_text / from_files(num_samples=)
    "length": "calibration_length",  # Calibration.from_text / from_files(length=)
    "batch_sizes": "batch_size",  # BenchmarkSettings(batch_sizes=[...]) is a repeated --batch-size
    "prompt_lengths": "prompt_length",  # likewise --prompt-length
}


def _registry_fields() -> dict[str, str]:
    """The `{field}`s of help texts, from the library's registries (imported only when help is shown)."""
    from dataclasses import fields

    from optimum_gatenorm.checkpoints.models import BUILTIN_MODELS
    from optimum_gatenorm.criteria import available_criteria, get_criterion
    from optimum_gatenorm.evaluation.compare import DEFAULT_COMPARE_CRITERIA
    from optimum_gatenorm.pruning.configuration import GateNormConfig

    criteria = [get_criterion(name) for name in available_criteria()]
    kinds = {  # in the order --help lists them
        "Weight-only (milliseconds, no forward pass)": [c for c in criteria if not c.model_level],
        "on text the model samples itself (no user data; runs the model)": [
            c for c in criteria if c.model_level and c.needs_model and not c.needs_data
        ],
        "data-driven (need --calibration-text)": [c for c in criteria if c.needs_data],
        "baselines": [c for c in criteria if c.model_level and not c.needs_model and not c.needs_data],
    }
    default = next(f.default for f in fields(GateNormConfig) if f.name == "criterion")
    gaps = sorted({c.min_gap for c in criteria if c.min_gap != 1})
    rules = [f"{gap} for {', '.join(c.name for c in criteria if c.min_gap == gap)}" for gap in gaps]
    return {
        "default_criterion": get_criterion(default).description,
        "criteria_by_kind": "; ".join(
            f"{kind}: {', '.join(c.name for c in members)}" for kind, members in kinds.items() if members
        ),
        "min_gaps": ", ".join([*rules, "1 for the others" if rules else "1"]),
        "compare_criteria": ",".join(DEFAULT_COMPARE_CRITERIA),
        "data_driven": ", ".join(c.name for c in criteria if c.needs_data),
        "models": "; ".join(f"{m.alias}, {m.description}" for m in BUILTIN_MODELS.values()),
    }


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Fills the `{field}`s of help and description texts from the registries (`_registry_fields`)."""

    _fields: dict[str, str] | None = None

    @classmethod
    def _fill(cls, text: str, escape: bool) -> str:
        if "{" not in text:
            return text
        if cls._fields is None:
            _HelpFormatter._fields = _registry_fields()
        for key, value in cls._fields.items():
            text = text.replace("{" + key + "}", value.replace("%", "%%") if escape else value)
        return text

    def _get_help_string(self, action) -> str:
        return self._fill(super()._get_help_string(action), escape=True)  # then formatted with %(default)s

    def _format_text(self, text: str) -> str:
        return super()._format_text(self._fill(text, escape="%(prog)" in text))


def _flag_actions(parser: "ArgumentParser | None" = None) -> dict:
    """dest -> argparse action of every option of every gatenorm command, `parser`'s own first (a message may
    name another command's option: "prune with --replacement none" from `export`)."""
    parsers = [parser] if parser is not None else []
    for info in GateNormCommand.SUBCOMMANDS:
        other = argparse.ArgumentParser(add_help=False)
        info.subcommand_class.parse_args(other)
        parsers.append(other)
    actions: dict = {}
    for each in parsers:
        for action in each._actions:
            if action.option_strings and action.dest != "help":
                actions.setdefault(action.dest, action)
    return actions


def _flag(actions: dict, name: str, value) -> str | None:
    """How the command line spells parameter `name` set to `value`, or `None` if it has no flag for it."""
    import shlex

    from optimum_gatenorm.params import ANY, is_bare

    action = actions.get(PARAMETER_DESTS.get(name, name))
    if action is None:
        return None
    option = next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
    if is_bare(value):
        return option
    if action.nargs == 0:  # a switch: --overwrite, --bos / --no-bos
        if isinstance(action, argparse.BooleanOptionalAction):
            return option if value else "--no-" + option[2:]
        return option if value == action.const else None
    if value is ANY:
        return f"{option} {action.metavar or action.dest.upper()}"
    return f"{option} {shlex.quote(str(value))}"


def cli_text(text: str, parser: "ArgumentParser | None" = None) -> str:
    """`text` (a library message) with the parameters it names as the command line's flags."""
    from optimum_gatenorm.params import to_flags

    actions = _flag_actions(parser)
    return to_flags(text, lambda name, value: _flag(actions, name, value))


class _FlagsFilter(logging.Filter):
    """Shows the parameters that library warnings name as flags."""

    def __init__(self, parser: "ArgumentParser"):
        super().__init__()
        self.parser = parser

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "`" in message:
            record.msg, record.args = cli_text(message, self.parser), ()
        return True


def _one_line_error(parser: "ArgumentParser"):
    def error(message: str):
        parser.exit(2, f"{parser.prog}: error: {message} (see --help)\n")

    return error


def _layer_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices like 3,5,7, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"layer indices must be >= 0, got {text!r}")
    return values


def _int_list(what: str, example: str):
    """Comma-separated non-negative integers and inclusive ranges (`0,2,4` or `0-6` or `0-3,8`)."""

    def parse(text: str) -> list[int]:
        values: list[int] = []
        try:
            for part in text.replace(" ", "").split(","):
                if not part:
                    continue
                if "-" in part[1:]:
                    low, high = (int(v) for v in part.split("-", 1))
                    if low > high:
                        raise ValueError
                    values.extend(range(low, high + 1))
                else:
                    values.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {what} as comma-separated integers or ranges like {example}, got {text!r}"
            ) from None
        if not values or any(v < 0 for v in values):
            raise argparse.ArgumentTypeError(f"expected {what} >= 0 like {example}, got {text!r}")
        return sorted(set(values))

    parse.__name__ = what
    return parse


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


_non_negative_int = _int_at_least(0)
_positive_int = _int_at_least(1)


def _export_dtype(text: str) -> str:
    """`export --dtype`: the spelling of `prune` / `eval --dtype`, with the earlier `fp32` / `fp16` as aliases
    (`optimum_gatenorm.exporters.onnx.DTYPE_ALIASES`)."""
    return {"fp32": "float32", "fp16": "float16"}.get(text, text)


def _speedup(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 1 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite speed-up > 1 such as 1.2, got {text!r}")
    return value


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def _add_model_args(parser: "ArgumentParser") -> None:
    parser.add_argument(
        "--model",
        "-m",
        default=DEFAULT_MODEL,
        help=(
            "local model directory (config.json + safetensors), a .gguf file (converted once into the cache), a "
            "built-in alias (default: %(default)s), or a hub id ORG/NAME[@REVISION] (from the Hugging Face cache "
            "when HF_HUB_OFFLINE=1 or offline, downloaded otherwise: configs, tokenizer, safetensors). Built-in: "
            "{models} (docs/models.md installs them)."
        ),
    )
    parser.add_argument(
        "--revision", help="branch, tag or commit of a hub id --model (same as ORG/NAME@REVISION; default: main)"
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept pytorch_model.bin weights, loaded with torch.load(weights_only=True); refused by default",
    )


def _add_calibration_args(parser: "ArgumentParser", seed: bool = True) -> None:
    parser.add_argument(
        "--calibration-text",
        nargs="+",
        metavar="FILE",
        help="UTF-8 text file(s) for the data-driven criteria ({data_driven}); data-free criteria ignore it",
    )
    parser.add_argument(
        "--calibration-samples",
        type=_positive_int,
        default=16,
        help="number of calibration windows, taken consecutively from the start of the text (default: 16)",
    )
    parser.add_argument(
        "--calibration-length", type=_positive_int, default=256, help="tokens per calibration window (default: 256)"
    )
    if seed:
        parser.add_argument(
            "--seed",
            type=_non_negative_int,
            default=0,
            help="seed of the random criterion and of the text cosine_self samples (default: 0)",
        )


def _calibration(pruner, args):
    if not args.calibration_text:
        return None
    return pruner.calibration_from_files(
        args.calibration_text, num_samples=args.calibration_samples, length=args.calibration_length
    )


def _setup(parser: "ArgumentParser", description: str) -> None:
    parser.description = description
    parser.formatter_class = _HelpFormatter
    parser.error = _one_line_error(parser)


class _Terminated(BaseException):
    """Raised by the SIGTERM / SIGHUP handler, so that the stack unwinds as for Ctrl-C: every temporary output
    is removed by the `finally` that made it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_termination(signum, frame):
    import signal

    for name in ("SIGTERM", "SIGHUP", "SIGINT"):  # a second signal must not interrupt the clean-up
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    raise _Terminated(signum)


def _handle_termination() -> None:
    import signal

    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _on_termination)


STDOUT = "-"  # `--output -`: the command's document on standard output


def _check_standard_output(args, allowed: bool) -> None:
    """Refuses `--output -` where the output is not a document (a checkpoint directory), and `--plot -`."""
    from optimum_gatenorm.errors import InvalidConfigError

    if getattr(args, "output", None) == STDOUT and not allowed:
        raise InvalidConfigError(
            "--output - (standard output) takes documents (score, eval, compare, benchmark); this command writes a "
            "directory or a binary file: give a path"
        )
    if getattr(args, "plot", None) == STDOUT:
        raise InvalidConfigError("--plot - is not supported: a PNG goes to a file; give a .png path")


def _to_stdout(args) -> bool:
    """Whether `--output -` sends the document to standard output (and the human-readable lines to stderr)."""
    return getattr(args, "output", None) == STDOUT


def _apply_revision(args) -> None:
    """`--model ORG/NAME --revision R` becomes `ORG/NAME@R`, the one form the library takes."""
    revision = getattr(args, "revision", None)
    if revision is None:
        return
    from pathlib import Path

    from optimum_gatenorm.checkpoints.hub import parse_hub_id
    from optimum_gatenorm.errors import InvalidConfigError

    hub_id = parse_hub_id(args.model)
    if hub_id is None or Path(args.model).expanduser().exists():
        raise InvalidConfigError(f"--revision applies to a hub id (--model ORG/NAME), not to {args.model!r}")
    if hub_id[1] is not None:
        raise InvalidConfigError(f"--model {args.model!r} names a revision already; drop --revision {revision!r}")
    if parse_hub_id(f"{hub_id[0]}@{revision}") is None:
        raise InvalidConfigError(f"--revision {revision!r} is not a branch, tag or commit name")
    args.model = f"{hub_id[0]}@{revision}"


class _LeafCommand(BaseOptimumCLICommand):
    """Runs `execute()` and turns user errors into one line on stderr and exit status 2.

    SIGTERM and SIGHUP unwind like Ctrl-C (temporary outputs removed) and exit with 128 + the signal number.
    `STANDARD_OUTPUT`: whether `--output -` (the document on standard output) is accepted.
    """

    STANDARD_OUTPUT = False

    def run(self):
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        logging.getLogger("optimum_gatenorm").setLevel(logging.INFO)
        for handler in logging.getLogger().handlers:
            handler.addFilter(_FlagsFilter(self.parser))
        _handle_termination()
        from optimum_gatenorm.errors import GateNormError
        from optimum_gatenorm.progress import SUMMARY_LOGGER

        # The library logs the summary it returns; a command prints it on stdout (or a JSON document instead).
        logging.getLogger(SUMMARY_LOGGER).setLevel(logging.WARNING)
        from optimum_gatenorm.outputs import is_no_space, no_space_error, output_claims

        try:
            _check_standard_output(self.args, self.STANDARD_OUTPUT)
            _apply_revision(self.args)
            with output_claims():  # every output checked stays locked against other runs until the command ends
                self.execute()
        except GateNormError as error:
            print(f"error: {cli_text(str(error), self.parser)}", file=sys.stderr)
            sys.exit(2)
        except OSError as error:  # the machine said no (disk full, permissions) somewhere we did not check first
            if is_no_space(error) and getattr(error, "filename", None):
                print(f"error: {no_space_error(error.filename)}", file=sys.stderr)
                sys.exit(2)
            where = f": {error.filename}" if getattr(error, "filename", None) else ""
            print(f"error: {error.strerror or error}{where}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        except _Terminated as stop:
            import signal

            print(f"terminated by {signal.Signals(stop.signum).name}; nothing was left behind", file=sys.stderr)
            sys.exit(128 + stop.signum)

    def execute(self) -> None:
        raise NotImplementedError


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
        from optimum_gatenorm.criteria import get_criterion, require_calibration
        from optimum_gatenorm.devices import announce_device, resolve_device
        from optimum_gatenorm.outputs import atomic_write_text, check_output_path
        from optimum_gatenorm.pruning.pruner import GateNormPruner

        args = self.args
        inputs = _inputs(args, "model", "calibration_text")
        to_file = args.output and not _to_stdout(args)
        if to_file:
            check_output_path(args.output, args.overwrite, inputs=inputs)
        get_criterion(args.criterion)  # an unknown name fails before any work
        device = resolve_device(args.device, announce=False)
        pruner = GateNormPruner.from_pretrained(args.model, allow_pickle=args.allow_pickle)
        calibration = _calibration(pruner, args)
        require_calibration(get_criterion(args.criterion), calibration)
        announce_device(args.device, device)  # every check passed: the work starts here
        report = pruner.score(args.criterion, calibration=calibration, seed=args.seed, device=device, progress=True)
        if args.format == "json":
            text = report.to_json()
        else:
            text = (
                f"{report.criterion} scores of {report.model_type} ({report.num_hidden_layers} layers), "
                f"computed in {report.scoring_seconds:.3f} s; lowest first:\n{report.format_table()}"
            )
            gap = get_criterion(report.criterion).min_gap
            if gap > 1:
                text += (
                    f"\nprune walks this ranking with min_gap={gap}: a layer closer than {gap} to one already chosen "
                    "is skipped (--min-gap 1 for plain k lowest)"
                )
        if to_file:
            path = atomic_write_text(args.output, text + "\n", overwrite=args.overwrite, inputs=inputs)
            print(f"Wrote {path}", file=sys.stderr)
        else:
            print(text)


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
        "optimum_gatenorm.benchmark.planning.measure_attention_shares(...).save(FILE)); default: the analytical cost model",
    )


def _add_fit_args(parser: "ArgumentParser", *, samples: bool) -> None:
    """How `--replacement`'s parameters are obtained (`pruning.fits`)."""
    parser.add_argument(
        "--fit",
        choices=FITS,
        default="least-squares",
        help="how the replacement's parameters are obtained (default: least-squares, each map alone in closed "
        "form). distill: least squares, then every map together, end to end, against the unpruned model's "
        "next-token distribution on text the model samples itself (Adam, early stopping on a held-out quarter; "
        "minutes on a CPU). docs/replacement.md",
    )
    parser.add_argument(
        "--distill-steps",
        type=_positive_int,
        default=DISTILL_STEPS,
        help=f"with --fit distill: at most N Adam steps of 4 sequences (default: {DISTILL_STEPS}; fewer when the "
        "held-out KL stops falling)",
    )
    if samples:
        parser.add_argument(
            "--distill-samples",
            type=_int_at_least(2),
            default=DISTILL_SAMPLES,
            help=f"with --fit distill: the model samples N sequences of 256 tokens to distill on, a quarter held out "
            f"(default: {DISTILL_SAMPLES}; --calibration-text replaces them)",
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
            from optimum_gatenorm.benchmark.planning import SpeedupTarget

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


def _torch_dtype(name: str):
    if name == "auto":
        return "auto"
    import torch

    return getattr(torch, name)


class ExportCommand(_LeafCommand):
    @staticmethod
    def parse_args(parser: "ArgumentParser"):
        _setup(
            parser,
            "Export a pruned (or unpruned, as the baseline) checkpoint for an inference engine.\n"
            "  onnx (default): ONNX with KV cache through optimum's exporter, for ORTModelForCausalLM; KV inputs and\n"
            "    attention only for the kept layers. Do not use `optimum-cli export onnx` on a pruned checkpoint.\n"
            "  gguf: one GGUF file for llama.cpp (llama-cli, llama-server, llama-cpp-python); a pruned model is\n"
            "    llama.cpp's `deci` architecture with zero heads in the removed layers (Llama family only); a\n"
            "    --replacement linear layer is deci's linear-attention layer (no KV cache); mean is refused.\n"
            "  nemotron-nas: a DeciLMForCausalLM checkpoint (block_configs, attention.no_op for removed sublayers)\n"
            "    for vLLM, TensorRT-LLM and SGLang (Llama family only; FFN width a multiple of 256). --engine vllm\n"
            "    (default) refuses a replacement (prune's default linear, or mean): vLLM ignores replace_with_linear;\n"
            "    --engine tensorrt-llm writes a linear one as replace_with_linear (self_attn.linear_attn), which\n"
            "    TensorRT-LLM's PyTorch backend and llama.cpp's converter read.",
        )
        _add_model_args(parser)
        parser.add_argument(
            "--output", "-o", required=True, help="output directory (onnx, nemotron-nas) or .gguf file (gguf)"
        )
        parser.add_argument(
            "--format",
            choices=EXPORT_FORMATS,
            default="onnx",
            help="target format (default: onnx)",
        )
        parser.add_argument(
            "--engine",
            choices=NEMOTRON_NAS_ENGINES,
            help="--format nemotron-nas: the engine that reads it (default: vllm); tensorrt-llm keeps a linear "
            "replacement as replace_with_linear",
        )
        parser.add_argument(
            "--gguf-type",
            choices=GGUF_TYPES,
            default="f16",
            help="--format gguf: weight matrices in f32, f16 or q8_0; norms stay f32 (default: f16)",
        )
        parser.add_argument(
            "--quantize",
            choices=QUANTIZE_TYPES,
            metavar="TYPE",
            help="--format gguf: quantize with llama.cpp's own quantizer (llama-cpp-python, the serve extra) after "
            f"writing --gguf-type f16 (or f32): {', '.join(QUANTIZE_TYPES)}",
        )
        parser.add_argument(
            "--tokenizer",
            metavar="DIR",
            help="--format gguf: the directory of the model's tokenizer, when --model's own has none that loads "
            "(default: --model's)",
        )
        parser.add_argument(
            "--gguf-pre-tokenizer",
            metavar="NAME",
            help="--format gguf: llama.cpp pre-tokenizer name (tokenizer.ggml.pre) for a tokenizer llama.cpp's hash "
            "table does not know, e.g. llama-bpe, gpt-2, default",
        )
        parser.add_argument(
            "--device",
            choices=("auto", "cpu", "cuda"),
            default="auto",
            help="--format onnx: export for onnxruntime's CPU or CUDA execution provider (default: %(default)s; "
            "auto: cuda when torch sees a GPU, else cpu, logged with the reason)",
        )
        parser.add_argument(
            "--dtype",
            type=_export_dtype,
            choices=("float32", "float16"),  # exporters.onnx.DTYPES (test_usage_doc.py checks they agree)
            default="float32",
            help="--format onnx: weights dtype (default: %(default)s); float16 needs --device cuda. fp32 and fp16, the "
            "earlier spellings, are accepted too",
        )
        parser.add_argument("--opset", type=_non_negative_int, help="ONNX opset (default: optimum's choice)")
        parser.add_argument(
            "--no-validate",
            action="store_true",
            help="--format onnx: skip the check of the graph's logits against PyTorch's on a short random prompt",
        )
        parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")

    def execute(self):
        from optimum_gatenorm.errors import InvalidConfigError

        args = self.args
        if args.engine is not None and args.format != "nemotron-nas":
            raise InvalidConfigError(f"--engine applies to --format nemotron-nas, not --format {args.format}")
        if args.quantize is not None and args.format != "gguf":
            raise InvalidConfigError(f"--quantize applies to --format gguf, not --format {args.format}")
        if args.format == "gguf":
            from optimum_gatenorm.exporters.gguf import export_gguf

            path = export_gguf(
                args.model,
                args.output,
                gguf_type=args.gguf_type,
                overwrite=args.overwrite,
                allow_pickle=args.allow_pickle,
                pre_tokenizer=args.gguf_pre_tokenizer,
                tokenizer_from=args.tokenizer,
                quantize=args.quantize,
            )
            print(f"Exported to {path}; run it with llama-cli -m {str(path)!r} or llama_cpp.Llama(model_path=...)")
            return
        if args.format == "nemotron-nas":
            from optimum_gatenorm.exporters.nemotron_nas import export_nemotron_nas

            path = export_nemotron_nas(
                args.model,
                args.output,
                overwrite=args.overwrite,
                allow_pickle=args.allow_pickle,
                engine=args.engine or "vllm",
            )
            serve = "trtllm-serve" if args.engine == "tensorrt-llm" else "vllm serve"
            print(f"Exported to {path}; serve it with e.g. {serve} {str(path)!r} (docs/serving.md)")
            return
        from optimum_gatenorm.exporters.onnx import export_onnx

        path = export_onnx(
            args.model,
            args.output,
            device=args.device,
            dtype=args.dtype,
            overwrite=args.overwrite,
            opset=args.opset,
            allow_pickle=args.allow_pickle,
            validate=not args.no_validate,
        )
        print(f"Exported to {path}; load it with ORTModelForCausalLM.from_pretrained({str(path)!r})")


def _add_window_args(parser: "ArgumentParser") -> None:
    parser.add_argument("--window", type=_positive_int, default=512, help="tokens per forward pass (default: 512)")
    parser.add_argument(
        "--stride",
        type=_positive_int,
        help="slide windows by this many tokens, scoring only the new ones with the rest as context "
        "(default: the window, i.e. non-overlapping windows)",
    )
    parser.add_argument("--max-tokens", type=_positive_int, help="evaluate only the first N tokens of the text")
    parser.add_argument(
        "--bos",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run each window with the BOS token in front of it, as context only (default: if the tokenizer adds "
        "one when it encodes text, as Gemma's does; SmolLM2's adds nothing; --no-bos: never)",
    )


def _add_retrieval_args(parser: "ArgumentParser", *, seed_flag: str) -> None:
    """`--task`, `--lengths`, `--depths`, `--cases`, the retrieval seed and `--completion` (`_retrieval_config`)."""
    parser.add_argument(
        "--task",
        type=_name_list,
        help="long-context retrieval tasks, comma-separated: passkey, multikey (the key among distractor keys), "
        "vartrack (variable tracking); right cases per task, length and depth (docs/quality.md)",
    )
    parser.add_argument(
        "--lengths",
        type=_int_list("prompt lengths", "1024,2048"),
        default=[1024, 2048],
        help="with --task: prompt lengths in tokens, at most the model's context (default: 1024,2048)",
    )
    parser.add_argument(
        "--depths",
        type=_float_list,
        default=[0.1, 0.5, 0.9],
        help="with --task: where the key sits in the context, each in [0, 1] (default: 0.1,0.5,0.9)",
    )
    parser.add_argument(
        "--cases", type=_positive_int, default=3, help="with --task: cases per task, length and depth (default: 3)"
    )
    parser.add_argument(
        seed_flag,
        dest="task_seed",
        type=_non_negative_int,
        default=0,
        help="with --task: seed of the keys and names (default: 0)",
    )
    parser.add_argument(
        "--completion",
        action="store_true",
        help="with --task: ask an instruct model by plain completion instead of through its chat template",
    )


def _retrieval_config(args):
    """The `RetrievalConfig` of `_add_retrieval_args`' flags, or `None` without `--task`."""
    if not args.task:
        return None
    from optimum_gatenorm.evaluation.retrieval import RetrievalConfig

    return RetrievalConfig(
        tasks=tuple(args.task),
        lengths=tuple(args.lengths),
        depths=tuple(args.depths),
        cases=args.cases,
        seed=args.task_seed,
        chat=False if args.completion else None,
    )


class EvalCommand(_LeafCommand):
    STANDARD_OUTPUT = True

    @staticmethod
    def parse_args(parser: "ArgumentParser"):
        _setup(
            parser,
            "Perplexity of a model on a UTF-8 text file. PyTorch checkpoints (pruned or not) load with the pruned\n"
            "structure; a directory holding model.onnx runs on onnxruntime through ORTModelForCausalLM. The text\n"
            "is tokenized once without special tokens and cut into windows; each token is scored once, with the\n"
            "tokens before it in its window as context (see docs/quality.md, 'Perplexity windowing'). With --reference (the unpruned\n"
            "model), the same windows also give KL divergence and top-1 agreement; --chat adds chat fidelity.\n"
            "--task adds long-context retrieval (passkey, multi-key needle in a haystack, variable tracking), generated\n"
            "from --seed with no dataset, at --lengths and --depths; with --task, --text is optional.",
        )
        _add_model_args(parser)
        parser.add_argument(
            "--text", "-t", help="UTF-8 text file to evaluate perplexity on (required unless --task is given)"
        )
        _add_window_args(parser)
        parser.add_argument(
            "--dtype", choices=DTYPES, default="auto", help="dtype of a PyTorch model (default: the checkpoint's)"
        )
        parser.add_argument(
            "--provider",
            choices=("auto", "cpu", "cuda"),
            default="auto",
            help="onnxruntime execution provider for an ONNX model, the device of a PyTorch one (default: %(default)s: "
            "cuda when torch sees a GPU and onnxruntime-gpu is installed, else cpu, logged with the reason)",
        )
        parser.add_argument(
            "--reference",
            "-r",
            help="a model to compare with, typically the unpruned one (checkpoint, ONNX export, .gguf or alias, same "
            "tokenizer): adds the mean and 99th-percentile KL divergence of the next-token distributions and top-1 "
            "agreement on the same tokens (see docs/quality.md)",
        )
        parser.add_argument(
            "--chat",
            action="store_true",
            help="with --reference: also ask both models a few fixed chat prompts (greedy) and report how far the "
            "answers agree",
        )
        _add_retrieval_args(parser, seed_flag="--seed")
        parser.add_argument("--format", choices=("table", "json"), default="table", help="output format")
        parser.add_argument(
            "--output",
            "-o",
            help="also write the JSON result to this file (`-`: the JSON on stdout, the table on stderr)",
        )
        parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")

    def execute(self):
        import json

        from optimum_gatenorm.errors import InvalidConfigError
        from optimum_gatenorm.evaluation.perplexity import evaluate_perplexity
        from optimum_gatenorm.outputs import atomic_write_text, check_output_path

        args = self.args
        if args.chat and not args.reference:
            raise InvalidConfigError("--chat compares answers with a reference model; add --reference MODEL")
        if args.text is None and not args.task:
            raise InvalidConfigError(
                "eval needs --text FILE (perplexity) or --task passkey,multikey,vartrack (long-context retrieval)"
            )
        if args.text is None and args.reference:
            raise InvalidConfigError("--reference compares the two models on a text; add --text FILE")
        retrieval = _retrieval_config(args)
        inputs = _inputs(args, "model", "text", "reference")
        to_file = args.output and not _to_stdout(args)
        if to_file:
            check_output_path(args.output, args.overwrite, inputs=inputs)
        if args.provider == "cuda":
            from optimum_gatenorm.exporters.onnx import check_cuda_available

            check_cuda_available()
        data, tables = {}, []
        if args.text is not None:
            result = evaluate_perplexity(
                args.model,
                args.text,
                window=args.window,
                stride=args.stride,
                max_tokens=args.max_tokens,
                dtype=_torch_dtype(args.dtype),
                provider=args.provider,
                progress=True,
                bos=args.bos,
                reference=args.reference,
            )
            data = json.loads(result.to_json())  # to_json writes an infinite perplexity as null
            tables.append(result.to_table())
        if retrieval is not None:
            from optimum_gatenorm.evaluation.retrieval import evaluate_retrieval

            found = evaluate_retrieval(
                args.model, retrieval, dtype=_torch_dtype(args.dtype), provider=args.provider, progress=True
            )
            data = {**data, "retrieval": found.to_dict()} if data else found.to_dict()
            tables.append(found.to_table())
        table = "\n\n".join(tables)
        if args.chat:
            from optimum_gatenorm.evaluation.chat import evaluate_chat_fidelity

            chat = evaluate_chat_fidelity(
                args.model, args.reference, dtype=_torch_dtype(args.dtype), provider=args.provider
            )
            data["chat"] = chat.to_dict()
            table += "\n\n" + chat.to_table()
        text = json.dumps(data, indent=2)
        if _to_stdout(args):
            if args.format != "json":
                print(table, file=sys.stderr)
            print(text)
            return
        print(text if args.format == "json" else table)
        if to_file:
            path = atomic_write_text(args.output, text + "\n", overwrite=args.overwrite, inputs=inputs)
            print(f"Wrote {path}", file=sys.stderr)


def _inputs(args, *names: str) -> list:
    """`(what, path)` for the command's inputs that are set (`--model`, `--text`, ...): outputs never go there."""
    from optimum_gatenorm.checkpoints.models import model_inputs

    out = []
    for name in names:
        value = getattr(args, name, None)
        what = name.replace("_", " ")
        if value is None:
            continue
        if name in ("model", "baseline", "reference"):
            out += model_inputs(value, what)
        else:
            out += [(what, path) for path in (value if isinstance(value, list) else [value])]
    return out


def _add_result_file_args(parser: "ArgumentParser", *, output: str, plot: str) -> None:
    """`--output` (JSON), `--plot` (PNG) and `--overwrite`, checked by `_check_result_files`."""
    parser.add_argument("--output", "-o", help=output)
    parser.add_argument("--plot", help=plot)
    parser.add_argument("--overwrite", action="store_true", help="replace existing --output / --plot files")


def _check_result_files(args, inputs) -> None:
    """Refuses, before any work, result files that exist (without --overwrite), that would be written into an
    input, or a --plot without matplotlib."""
    from optimum_gatenorm.outputs import check_output_path

    for path in (args.output, args.plot):
        if path and path != STDOUT:
            check_output_path(path, args.overwrite, inputs=inputs)
    if args.plot:
        from optimum_gatenorm.outputs import require_pyplot

        require_pyplot()


def _float_list(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.1,0.5,0.9, got {text!r}")
    return values


def _name_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


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


def _print_table(args, table: str) -> None:
    """The human-readable table: on stdout, or on stderr when `--output -` puts the document there."""
    print(table, file=sys.stderr if _to_stdout(args) else sys.stdout)


def _write_results(args, result, inputs) -> None:
    """Writes `--output` (JSON; `-`: stdout) and `--plot` (PNG) of a result, each with a "Wrote" line on stderr."""
    from optimum_gatenorm.outputs import atomic_write_text, check_output_path

    if _to_stdout(args):
        print(result.to_json())
    elif args.output:
        path = atomic_write_text(args.output, result.to_json() + "\n", overwrite=args.overwrite, inputs=inputs)
        print(f"Wrote {path}", file=sys.stderr)
    if args.plot:
        check_output_path(args.plot, args.overwrite, inputs=inputs)
        path = result.plot(args.plot, overwrite=args.overwrite)
        print(f"Wrote {path}", file=sys.stderr)


class BenchmarkCommand(_LeafCommand):
    STANDARD_OUTPUT = True

    @staticmethod
    def parse_args(parser: "ArgumentParser"):
        _setup(
            parser,
            "Throughput of a pruned model (--model) against its baseline (--baseline), side by side in one run:\n"
            "prefill latency, decode tokens/s, end-to-end tokens/s and memory growth during a run, median and\n"
            "min-max over interleaved runs (A B A B, warm-up excluded), random seeded prompts of exactly the given\n"
            "lengths and a fixed number of new tokens (no early EOS). Next to each speed-up: the cost-model bound\n"
            "(ideal) and efficiency = measured / ideal. Repeat --batch-size / --prompt-length to measure several shapes.",
        )
        parser.add_argument(
            "--model",
            "-m",
            required=True,
            help="the candidate: an ONNX export (or a checkpoint with --backend pytorch)",
        )
        parser.add_argument("--baseline", "-b", required=True, help="the reference, usually the unpruned export")
        parser.add_argument(
            "--backend",
            choices=("onnxruntime", "pytorch"),
            default="onnxruntime",
            help="onnxruntime through ORTModelForCausalLM (the product path, default) or PyTorch eager",
        )
        parser.add_argument(
            "--provider",
            choices=("auto", "cpu", "cuda"),
            default="auto",
            help="cpu, or cuda (onnxruntime's CUDAExecutionProvider with IO binding; fails if it would fall back); "
            "default %(default)s: cuda when torch sees a GPU and onnxruntime-gpu is installed, else cpu",
        )
        parser.add_argument(
            "--batch-size", type=_positive_int, action="append", help="batch size (repeatable; default: 1)"
        )
        parser.add_argument(
            "--prompt-length", type=_positive_int, action="append", help="prompt tokens (repeatable; default: 128)"
        )
        parser.add_argument(
            "--new-tokens", type=_int_at_least(2), default=32, help="tokens generated per run (default: 32)"
        )
        parser.add_argument("--warmup", type=_non_negative_int, default=1, help="warm-up runs per model (default: 1)")
        parser.add_argument("--runs", type=_positive_int, default=5, help="recorded runs per model (default: 5)")
        parser.add_argument(
            "--seed", type=_non_negative_int, default=0, help="seed of the random prompts (default: 0)"
        )
        parser.add_argument(
            "--shares",
            metavar="FILE",
            help="attention time shares measured on this backend (JSON of measure_attention_shares(...).save); adds "
            "the measured-share bound and the efficiency against it",
        )
        _add_result_file_args(
            parser,
            output="write every raw run and the summary as JSON here (`-`: stdout, the table on stderr)",
            plot="write a PNG of the speed-ups and their bounds here",
        )

    def execute(self):
        from optimum_gatenorm.benchmark.throughput import BenchmarkSettings, run_benchmark

        args = self.args
        inputs = _inputs(args, "model", "baseline", "shares")
        _check_result_files(args, inputs)
        settings = BenchmarkSettings(
            batch_sizes=args.batch_size or [1],
            prompt_lengths=args.prompt_length or [128],
            new_tokens=args.new_tokens,
            warmup=args.warmup,
            runs=args.runs,
            backend=args.backend,
            provider=args.provider,
            seed=args.seed,
        )
        shares = None
        if args.shares:
            from transformers import AutoConfig

            from optimum_gatenorm.benchmark.planning import load_shares
            from optimum_gatenorm.benchmark.throughput import check_model_path

            baseline_config = AutoConfig.from_pretrained(check_model_path(args.baseline, settings))
            shares = load_shares(args.shares, baseline_config)  # checked against the model before any run
        result = run_benchmark(args.model, args.baseline, settings, shares=shares, progress=True)
        _print_table(args, cli_text(result.format_table(), self.parser))  # its warnings name flags
        _write_results(args, result, inputs)


class ConvertCommand(_LeafCommand):
    @staticmethod
    def parse_args(parser: "ArgumentParser"):
        _setup(
            parser,
            "Turn a .gguf file or a built-in alias into a float32 safetensors checkpoint (with tokenizer) and print\n"
            "its directory. Without --output it goes to the cache ($OPTIMUM_GATENORM_CACHE or\n"
            "~/.cache/optimum_gatenorm), which is where --model finds it next time.",
        )
        parser.add_argument(
            "--model",
            "-m",
            default=DEFAULT_MODEL,
            help="a .gguf file or built-in alias (default: %(default)s): {models}",
        )
        parser.add_argument("--output", "-o", help="directory to write instead of the cache")
        parser.add_argument("--overwrite", action="store_true", help="replace an existing --output directory")

    def execute(self):
        from pathlib import Path

        from optimum_gatenorm.checkpoints.models import BUILTIN_MODELS, builtin_alias, convert_gguf, resolve_model
        from optimum_gatenorm.errors import InvalidConfigError

        args = self.args
        if args.output is None:
            print(resolve_model(args.model))
            return
        builtin = builtin_alias(args.model)
        if builtin is not None:
            gguf = builtin.gguf_path()
        elif Path(args.model).suffix.lower() == ".gguf":
            gguf = Path(args.model)
        else:
            shadowed = " (the local path of that name, which comes before the built-in alias)"
            raise InvalidConfigError(
                f"--model must be a .gguf file or a built-in alias, got {args.model!r}"
                + (shadowed if args.model in BUILTIN_MODELS else "")
            )
        print(convert_gguf(gguf, args.output, overwrite=args.overwrite))


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


class GateNormCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(
        name="gatenorm",
        help="Data-free attention pruning (Gate-Norm): score, prune, eval, compare, benchmark, export, convert, criteria, "
        "architectures",
    )
    SUBCOMMANDS = (
        CommandInfo(
            name="score",
            help="rank attention sublayers by a criterion (default cosine_self: on text the model writes itself)",
            subcommand_class=ScoreCommand,
        ),
        CommandInfo(
            name="prune", help="remove the lowest-scored attention sublayers and save", subcommand_class=PruneCommand
        ),
        CommandInfo(
            name="eval",
            help="perplexity of a PyTorch or ONNX model on a text file",
            subcommand_class=EvalCommand,
        ),
        CommandInfo(
            name="compare",
            help="perplexity vs number of removed sublayers, for several criteria",
            subcommand_class=CompareCommand,
        ),
        CommandInfo(
            name="benchmark",
            help="throughput of a pruned model against its baseline, with cost-model bounds",
            subcommand_class=BenchmarkCommand,
        ),
        CommandInfo(
            name="export",
            help="export a pruned or unpruned model to ONNX (ORTModelForCausalLM), GGUF (llama.cpp) or Nemotron-NAS",
            subcommand_class=ExportCommand,
        ),
        CommandInfo(
            name="convert",
            help="turn a .gguf file or built-in model into a safetensors checkpoint",
            subcommand_class=ConvertCommand,
        ),
        CommandInfo(
            name="architectures",
            help="list the supported architectures and which exports take each",
            subcommand_class=ArchitecturesCommand,
        ),
        CommandInfo(name="criteria", help="list the scoring criteria", subcommand_class=CriteriaCommand),
    )
