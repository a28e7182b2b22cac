"""No silent minute: every slow phase of a pruning run shows progress on stderr, and the summary is logged.

Countable phases (the replacement fit per layer, the held-out KL check per sequence) show tqdm bars; the others
(loading, saving, the ONNX export and its check) a start line and a "done in N s" line (`optimum_gatenorm.progress`).
The Python entry points log the summary they return on `optimum_gatenorm.summary`; the CLI prints it on stdout
instead, once, and keeps stdout a pure JSON document with `--json`.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from cli_support import ok, optimum_cli
from conftest import HAS_ONNX, tiny_model

from optimum_gatenorm import GateNormConfig, GateNormPruner, prune_and_save
from optimum_gatenorm.progress import SUMMARY_LOGGER, phase
from optimum_gatenorm.pruning.replacement import RECOVERY_SAMPLES


CONFIG = GateNormConfig(num_layers=2, criterion="gate_norm")  # weight-level scoring: the fit is the slow part


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("progress") / "llama"
    tiny_model("llama").save_pretrained(directory)
    return directory


def _summaries(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == SUMMARY_LOGGER]


def _bar_done(err: str, label: str, count: int) -> bool:
    """Whether `err` holds the tqdm bar `label` at `count/count`."""
    return re.search(rf"{re.escape(label)}: 100%.*\b{count}/{count}\b", err) is not None


def _in_order(text: str, *parts: str) -> bool:
    positions = [text.find(part) for part in parts]
    return -1 not in positions and positions == sorted(positions)


# --- Python: GateNormPruner.prune --------------------------------------------------------------------------------


def test_prune_shows_fit_and_kl_check_on_stderr_and_nothing_on_stdout(llama_dir, capsys):
    pruner = GateNormPruner.from_pretrained(llama_dir)
    pruner.prune(CONFIG, progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert re.search(r"^Loading .*llama: done in \d+\.\d s$", err, re.M), err
    assert _bar_done(err, "Scoring (gate_norm)", 4), err  # True: the weight-level scoring's bar too
    assert _bar_done(err, "Fitting linear replacements", 2), err
    assert "Sampling held-out text: 100%" in err
    assert _bar_done(err, "Held-out KL check", RECOVERY_SAMPLES), err


def test_prune_default_shows_the_slow_phases_only_and_false_none(capsys):
    GateNormPruner(tiny_model("llama")).prune(CONFIG)
    err = capsys.readouterr().err
    assert _bar_done(err, "Fitting linear replacements", 2) and _bar_done(err, "Held-out KL check", 2), err
    assert "Scoring" not in err  # gate_norm reads weights: milliseconds, no bar by default
    GateNormPruner(tiny_model("llama")).prune(CONFIG, progress=False)
    assert capsys.readouterr() == ("", "")


def test_prune_logs_the_summary_it_returns(caplog):
    with caplog.at_level(logging.INFO, logger="optimum_gatenorm"):
        _, report = GateNormPruner(tiny_model("llama")).prune(CONFIG, progress=False)
    assert _summaries(caplog) == [report.summary()]
    assert report.summary().startswith("Removed 2 of 4 attention sublayers (gate_norm)")
    assert "mean KL divergence" in report.summary()  # the held-out check's result is in it


# --- Python: prune_and_save --------------------------------------------------------------------------------------


def test_prune_and_save_announces_the_save_and_logs_its_summary(llama_dir, tmp_path, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="optimum_gatenorm"):
        result = prune_and_save(llama_dir, tmp_path / "out", CONFIG, progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert _in_order(err, "Saving the pruned checkpoint ...\n", "Saving the pruned checkpoint: done in "), err
    assert _bar_done(err, "Fitting linear replacements", 2) and _bar_done(err, "Held-out KL check", 2), err
    summary = result.summary()
    assert summary == f"{result.report.summary()}\nSaved the pruned checkpoint to {tmp_path / 'out'}"
    assert "\n".join(_summaries(caplog)) == summary  # logged once, in two records: after pruning, after saving


def test_prune_and_save_without_progress_logs_the_phases_instead(llama_dir, tmp_path, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="optimum_gatenorm"):
        prune_and_save(llama_dir, tmp_path / "out", CONFIG, progress=False)
    out, err = capsys.readouterr()
    # (transformers 5 draws bars of its own while loading and writing weights: not ours to switch off)
    ours = (f"Loading {llama_dir}", "Fitting", "KL check", "Saving the")
    assert out == "" and not any(label in err for label in ours), err
    messages = [record.getMessage() for record in caplog.records]
    assert "Saving the pruned checkpoint ..." in messages
    assert any(re.fullmatch(r"Saving the pruned checkpoint: done in \d+\.\d s", m) for m in messages), messages


@pytest.mark.onnx
def test_prune_and_save_announces_the_export_and_its_check(llama_dir, tmp_path, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="optimum_gatenorm"):
        result = prune_and_save(llama_dir, tmp_path / "out", CONFIG, export="onnx", progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    order = [
        "Saving the pruned checkpoint ...",
        "Saving the pruned checkpoint: done in",
        "Exporting LlamaForCausalLM to ONNX (cpu, float32) ...",
        "Exporting LlamaForCausalLM to ONNX (cpu, float32): done in",
        "Checking the ONNX graph's logits against PyTorch's ...",
        "Checking the ONNX graph's logits against PyTorch's: done in",
    ]
    assert _in_order(err, *order), err
    assert "Saved its ONNX export to" in result.summary() and "\n".join(_summaries(caplog)) == result.summary()


def test_a_failing_phase_says_it_stopped(capsys):
    with pytest.raises(RuntimeError, match="disk on fire"), phase("Saving the pruned checkpoint", True):
        raise RuntimeError("disk on fire")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "Saving the pruned checkpoint ..."
    assert re.fullmatch(r"Saving the pruned checkpoint: stopped after \d+\.\d s", lines[1]), lines


# --- the CLI -----------------------------------------------------------------------------------------------------


@pytest.mark.process
def test_cli_json_stdout_is_pure_json_and_progress_is_on_stderr(llama_dir, tmp_path):
    export = ["--export", "onnx"] if HAS_ONNX else []
    args = ("prune", "-m", llama_dir, "-k", "2", "-c", "gate_norm", "-o", tmp_path / "out", "--json", *export)
    result = ok(optimum_cli("gatenorm", *args))
    data = json.loads(result.stdout)  # the whole of stdout: nothing before or after the document
    saved = json.loads((tmp_path / "out" / "gatenorm_report.json").read_text())
    assert data["removed_layers"] == saved["removed_layers"] and data["output"] == str(tmp_path / "out")
    err = result.stderr
    assert _bar_done(err, "Fitting linear replacements", 2) and _bar_done(err, "Held-out KL check", 2), err
    assert "Saving the pruned checkpoint ..." in err and "Saving the pruned checkpoint: done in" in err
    if HAS_ONNX:
        assert "Exporting LlamaForCausalLM to ONNX (cpu, float32): done in" in err
        assert "Checking the ONNX graph's logits against PyTorch's: done in" in err
    assert "Removed 2 of 4" not in err and "Saved the pruned checkpoint" not in err


@pytest.mark.process
def test_cli_prints_the_summary_once_on_stdout(llama_dir, tmp_path):
    result = ok(
        optimum_cli("gatenorm", "prune", "-m", llama_dir, "-k", "2", "-c", "gate_norm", "-o", tmp_path / "out")
    )
    report = json.loads((tmp_path / "out" / "gatenorm_report.json").read_text())
    assert result.stdout.startswith(f"Removed 2 of 4 attention sublayers (gate_norm): {report['removed_layers']}")
    assert result.stdout.rstrip("\n").endswith(f"Saved the pruned checkpoint to {tmp_path / 'out'}")
    assert result.stdout.count("Removed 2 of 4") == 1 and result.stdout.count("Saved the pruned checkpoint") == 1
    # the logged copy is turned off: stderr has the progress, not the summary a second time
    assert "Removed 2 of 4" not in result.stderr and "Saved the pruned checkpoint to" not in result.stderr
    assert "Saving the pruned checkpoint: done in" in result.stderr
