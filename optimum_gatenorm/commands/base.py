"""`_LeafCommand`, the base of every gatenorm command: runs it, turns user errors into one line and exit status 2.

Loaded at every optimum-cli start (see `gatenorm.py`): the standard library and `optimum.commands.base` only at
module level.
"""

from __future__ import annotations

import argparse
import logging
import sys

from optimum.commands.base import BaseOptimumCLICommand

from .messages import _check_standard_output, _FlagsFilter, _handle_termination, _Terminated, cli_text


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
            handler.addFilter(_FlagsFilter(self.cli_text))
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
            print(f"error: {self.cli_text(str(error))}", file=sys.stderr)
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

    def cli_text(self, text: str) -> str:
        """`text` (a library message) with the parameters it names as this command's flags, or another gatenorm
        command's where this one has none (a message may name one: "prune with --replacement none" from `export`)."""
        return cli_text(text, [self.parser, *_command_parsers()])


def _command_parsers() -> list[argparse.ArgumentParser]:
    """A parser of every gatenorm command: of every `_LeafCommand` subclass (the package's `__init__` imports them
    all, through `gatenorm`)."""
    parsers = []
    for command in _LeafCommand.__subclasses__():
        parser = argparse.ArgumentParser(add_help=False)
        command.parse_args(parser)
        parsers.append(parser)
    return parsers
