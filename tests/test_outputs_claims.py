"""One writer per output, special files, symbolic links and `-o -`, with real `optimum-cli` processes.

- A run holds a lock beside its output (`.NAME.lock`) from the output's check to its rename: a second run for the
  same output is refused in one line naming the first, whose result then stands. The first run is frozen with
  SIGSTOP while it holds the lock, so the overlap is certain, not a matter of timing; each case runs three times.
- A lock left by a run killed with SIGKILL is taken over by the next run and removed.
- `--overwrite` follows a symbolic link (the link stays a link) and never replaces a device, FIFO or anything under
  /dev or /proc (those refusals are rows of tests/commands/test_bad_input_table.py).
- `-o -` sends the document to standard output and the human-readable lines to standard error.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_support import ENV, OPTIMUM_CLI, gatenorm
from conftest import tiny_model, tiny_tokenizer

from optimum_gatenorm import GateNormConfig, prune_and_save
from optimum_gatenorm.errors import OutputInUseError
from optimum_gatenorm.outputs import OUTPUT_MARKER, claim_output, output_lock


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("model")
    tiny_model("llama").save_pretrained(root)
    tiny_tokenizer().save_pretrained(root)
    return root


def _start(*args, cwd=None) -> subprocess.Popen:
    return subprocess.Popen(
        [str(OPTIMUM_CLI), "gatenorm", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=cwd,
    )


def _prune(model_dir: Path, output: Path, k: int) -> tuple[str, ...]:
    return ("prune", "-m", model_dir, "-k", k, "-c", "gate_norm", "-o", output, "--overwrite")


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended before it took its lock: {process.communicate()}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def _removed(directory: Path) -> list[int]:
    return json.loads((directory / "gatenorm_report.json").read_text())["removed_layers"]


def _leftovers(parent: Path, name: str) -> list[str]:
    """Lock files and temporaries of output `name` in `parent`."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


@pytest.mark.process
@pytest.mark.parametrize("repeat", range(3))
def test_a_second_run_is_refused_naming_the_first_whose_result_stands(model_dir, tmp_path, repeat):
    out = tmp_path / "pruned"
    prune_and_save(model_dir, out, GateNormConfig(num_layers=1, criterion="gate_norm"))  # an earlier output of ours
    first = _start(*_prune(model_dir, out, 2))
    try:
        _wait_for(tmp_path / ".pruned.lock", first)
        first.send_signal(signal.SIGSTOP)  # holds the lock, frozen: the second run certainly overlaps it
        second = gatenorm(*_prune(model_dir, out, 3))
    finally:
        first.send_signal(signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), second.stderr
    assert f"being written by another run (pid {first.pid}" in lines[0] and "prune" in lines[0], lines[0]
    assert second.stdout == ""
    assert len(_removed(out)) == 2, "the first run's result must be the one on disk"
    assert "Saved the pruned checkpoint" in stdout
    assert _leftovers(tmp_path, "pruned") == [], "the lock and the temporaries are removed"


@pytest.mark.process
def test_a_lock_left_by_a_killed_run_is_taken_over_and_removed(model_dir, tmp_path):
    out = tmp_path / "pruned"
    killed = _start(*_prune(model_dir, out, 2))
    _wait_for(tmp_path / ".pruned.lock", killed)
    killed.kill()  # SIGKILL: nothing of the run is cleaned up; the kernel drops its flock
    killed.wait(timeout=60)
    assert (tmp_path / ".pruned.lock").exists()
    result = gatenorm(*_prune(model_dir, out, 1))
    assert result.returncode == 0, result.stderr
    assert len(_removed(out)) == 1
    assert _leftovers(tmp_path, "pruned") == []


@pytest.mark.process
@pytest.mark.parametrize("repeat", range(2))
def test_two_runs_started_together_never_both_claim_one_output(model_dir, tmp_path, repeat):
    """Started at the same moment: either one is refused naming the other, or (if one finished before the other
    reached its check) both succeed one after the other, and the output is the last one's."""
    out = tmp_path / "pruned"
    runs = {k: _start(*_prune(model_dir, out, k)) for k in (2, 3)}
    finished = []
    while len(finished) < 2:
        for k, process in runs.items():
            if k not in finished and process.poll() is not None:
                finished.append(k)
        time.sleep(0.02)
    results = {k: (process.returncode, *process.communicate()) for k, process in runs.items()}
    succeeded = [k for k in finished if results[k][0] == 0]
    refused = [k for k in finished if results[k][0] == 2]
    assert succeeded and len(succeeded) + len(refused) == 2, results
    for k in refused:
        other = runs[5 - k].pid
        assert f"being written by another run (pid {other}" in results[k][2], results[k][2]
    assert len(_removed(out)) == succeeded[-1]
    assert _leftovers(tmp_path, "pruned") == []


@pytest.mark.process
def test_the_python_api_is_refused_while_another_process_holds_the_output(model_dir, tmp_path):
    out = tmp_path / "pruned"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom optimum_gatenorm.outputs import claim_output\n"
            f"with claim_output({str(out)!r}, True, directory=True):\n    print('held', flush=True)\n    time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputInUseError, match=f"pid {holder.pid}"):
            prune_and_save(model_dir, out, GateNormConfig(num_layers=1, criterion="gate_norm"))
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    prune_and_save(model_dir, out, GateNormConfig(num_layers=1, criterion="gate_norm"))
    assert (out / OUTPUT_MARKER).is_file() and _leftovers(tmp_path, "pruned") == []


def test_the_lock_is_reentrant_in_one_process_and_removed_with_its_folders(tmp_path):
    out = tmp_path / "new" / "deeper" / "result.json"
    with claim_output(out, False) as target:
        assert target == out and (out.parent / ".result.json.lock").is_file()
        with output_lock(out):  # the writers claim again inside a pipeline's claim
            pass
        assert (out.parent / ".result.json.lock").is_file()
    assert not (tmp_path / "new").exists(), "the folders made for the lock are removed again"


# --- symbolic links are followed ----------------------------------------------------------------------------------


@pytest.mark.process
def test_overwrite_through_a_link_replaces_its_target_and_keeps_the_link(model_dir, tmp_path):
    target = tmp_path / "empty"
    target.mkdir()
    link = tmp_path / "L"
    link.symlink_to(target)
    result = gatenorm(*_prune(model_dir, link, 1))
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert (target / "config.json").is_file() and len(_removed(target)) == 1

    scores = tmp_path / "scores.json"
    scores.write_text("old\n")
    link = tmp_path / "scores-link.json"
    link.symlink_to(scores)
    result = gatenorm("score", "-m", model_dir, "-c", "gate_norm", "--format", "json", "-o", link, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert link.is_symlink()
    assert json.loads(scores.read_text())["criterion"] == "gate_norm"


# --- `-o -`: the document on standard output ----------------------------------------------------------------------


@pytest.mark.process
def test_score_json_to_standard_output(model_dir, tmp_path):
    result = gatenorm("score", "-m", model_dir, "-c", "gate_norm", "--format", "json", "-o", "-", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["criterion"] == "gate_norm"
    assert list(tmp_path.iterdir()) == [], "no file named '-' (nor anything else) is written"


@pytest.mark.process
def test_eval_document_on_stdout_and_table_on_stderr(model_dir, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("It is a truth universally acknowledged, that a single man in possession " * 20)
    result = gatenorm("eval", "-m", model_dir, "-t", text, "--window", "64", "-o", "-", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["perplexity"] > 1
    assert "perplexity" in result.stderr.lower() and "{" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.txt"]
