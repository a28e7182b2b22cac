"""Every script under benchmarks/ still starts: its imports resolve against the package as it is now (a renamed or
removed function fails here, not months later in a study) and its `--help` parses. One fresh process runs them all.
"""

import subprocess
import sys

import pytest
from conftest import ROOT


BENCHMARKS = ROOT / "benchmarks"

_RUN_ALL = """
import contextlib, io, runpy, sys
sys.path.insert(0, {folder!r})
failed = []
for script in {scripts!r}:
    sys.argv = [script, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        if stop.code not in (0, None):
            failed.append(f"{{script}}: exit {{stop.code}}")
    except Exception as error:
        failed.append(f"{{script}}: {{type(error).__name__}}: {{error}}")
    else:
        failed.append(f"{{script}}: ran without --help handling")
    if "usage:" not in out.getvalue():
        failed.append(f"{{script}}: no usage line")
print("\\n".join(failed))
"""


@pytest.mark.process
def test_every_benchmark_script_imports_and_shows_its_help():
    scripts = sorted(str(p) for p in BENCHMARKS.glob("*.py"))
    assert len(scripts) >= 10
    done = subprocess.run(
        [sys.executable, "-c", _RUN_ALL.format(folder=str(BENCHMARKS), scripts=scripts)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", done.stdout
