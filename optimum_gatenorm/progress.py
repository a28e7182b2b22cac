"""What a long run shows while it works, and the summary it ends with.

Countable work (layers, tokens, sequences) shows a tqdm bar on stderr. A phase that cannot count its work (a save,
an export) announces itself on stderr instead: `"Saving the pruned checkpoint ..."` when it starts,
`"Saving the pruned checkpoint: done in 3.2 s"` when it ends (`phase`). Nothing goes to stdout, where the CLI prints its
documents (`--json`).

The summary of a finished run (what was removed, where it was saved) is logged at INFO on `SUMMARY_LOGGER` by the
Python entry points that also return it; the CLI, which prints it on stdout itself, turns that logger down so that
stderr does not repeat it.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager


__all__ = ["SUMMARY_LOGGER", "phase", "summary_logger"]

# A logger of its own, so that a caller that prints the summary (the CLI) can silence the logged copy alone.
SUMMARY_LOGGER = "optimum_gatenorm.summary"
summary_logger = logging.getLogger(SUMMARY_LOGGER)

logger = logging.getLogger(__name__)


@contextmanager
def phase(label: str, progress: bool, log: logging.Logger = logger):
    """Announces a phase whose work cannot be counted: with `progress`, a line on stderr when it starts
    (`"{label} ..."`) and one when it ends (`"{label}: done in N s"`); without, the same lines in `log` at INFO (at
    DEBUG with `progress`). Two whole lines rather than a bar left open, so that what is logged in between (the
    ONNX check's result, a warning) keeps lines of its own."""
    level = logging.DEBUG if progress else logging.INFO
    start = time.perf_counter()
    _announce(f"{label} ...", progress, log, level)
    outcome = "stopped after"
    try:
        yield
        outcome = "done in"
    finally:
        _announce(f"{label}: {outcome} {time.perf_counter() - start:.1f} s", progress, log, level)


def _announce(text: str, progress: bool, log: logging.Logger, level: int) -> None:
    log.log(level, "%s", text)
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stderr)  # through tqdm, so that an open bar is redrawn below it
