"""What a gatenorm command tells the user, and where: library messages with the parameters they name as flags,
one-line errors, the end of a run by a signal, and documents on standard output or in result files.

Loaded at every optimum-cli start (see `gatenorm.py`): the standard library only at module level.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from argparse import ArgumentParser
    from collections.abc import Callable, Iterable


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


def _flag_actions(parsers: "Iterable[ArgumentParser]") -> dict:
    """dest -> argparse action of every option of `parsers`, the first parser's where two have the same dest."""
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


def cli_text(text: str, parsers: "Iterable[ArgumentParser]") -> str:
    """`text` (a library message) with the parameters it names as the flags of `parsers`, the first that has one
    (`_LeafCommand.cli_text` passes the command's own parser, then every gatenorm command's)."""
    from optimum_gatenorm.params import to_flags

    actions = _flag_actions(parsers)
    return to_flags(text, lambda name, value: _flag(actions, name, value))


class _FlagsFilter(logging.Filter):
    """Shows the parameters that library warnings name as flags (`translate`: `_LeafCommand.cli_text`)."""

    def __init__(self, translate: "Callable[[str], str]"):
        super().__init__()
        self.translate = translate

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "`" in message:
            record.msg, record.args = self.translate(message), ()
        return True


def _one_line_error(parser: "ArgumentParser"):
    def error(message: str):
        parser.exit(2, f"{parser.prog}: error: {message} (see --help)\n")

    return error


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
