"""The options the gatenorm commands share, their argument types, and the help texts filled from the registries.

Loaded at every optimum-cli start (see `gatenorm.py`): the standard library only at module level.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .messages import _one_line_error


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


def _setup(parser: "ArgumentParser", description: str) -> None:
    """Every command's parser: its description, help texts filled from the registries, errors in one line."""
    parser.description = description
    parser.formatter_class = _HelpFormatter
    parser.error = _one_line_error(parser)


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


def _add_result_file_args(parser: "ArgumentParser", *, output: str, plot: str) -> None:
    """`--output` (JSON), `--plot` (PNG) and `--overwrite`, checked by `_check_result_files`."""
    parser.add_argument("--output", "-o", help=output)
    parser.add_argument("--plot", help=plot)
    parser.add_argument("--overwrite", action="store_true", help="replace existing --output / --plot files")
