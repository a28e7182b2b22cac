"""The real `optimum-cli` in a subprocess, offline, and what the tests ask of its result (one copy for every test)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


OPTIMUM_CLI = Path(sys.executable).parent / "optimum-cli"
# No hub is reachable in the tests; unbuffered, so a progress line and an error arrive in the order they were written.
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")


def optimum_cli(*args, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """`optimum-cli ARGS`; `env` is the whole environment (default `ENV`)."""
    command = [str(OPTIMUM_CLI), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env or ENV, timeout=timeout)


def gatenorm(*args, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """`optimum-cli gatenorm ARGS`, as `optimum_cli`."""
    return optimum_cli("gatenorm", *args, cwd=cwd, env=env, timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """Exit 0 and no traceback, with the whole output in the failure message."""
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2 and the error in one line, the last on stderr (progress bars of the work before may precede it)."""
    where = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2 and "Traceback" not in result.stderr, where
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error")]
    assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith("error: "), where
    for needle in needles:
        assert needle.lower() in errors[0].lower(), f"{needle!r} not in {errors[0]!r}"
    return errors[0]
