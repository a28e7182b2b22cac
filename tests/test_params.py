"""Messages name what to change in the caller's own words: a Python call's error names the parameter
(`overwrite=True`), the CLI's names the flag (`--overwrite`), from one message (`optimum_gatenorm.params`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import gatenorm
from conftest import tiny_model, tiny_tokenizer

from optimum_gatenorm import GateNormConfig, GateNormError, export_gguf, prune_and_save
from optimum_gatenorm.params import ANY, param, to_flags


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("params")
    for name in ("llama", "gpt2"):
        tiny_model(name).save_pretrained(root / name)
        tiny_tokenizer().save_pretrained(root / name)
    (root / "taken").mkdir()
    (root / "taken" / "notes.txt").write_text("mine")
    return root


def test_param_spells_python_and_to_flags_replaces_only_its_spans():
    assert param("overwrite", True) == "`overwrite=True`"
    assert param("device", "cuda:3") == "`device='cuda:3'`"
    assert param("calibration_text", ANY) == "`calibration_text=...`"
    assert param("num_samples") == "`num_samples`"
    message = f"pass {param('overwrite', True)}, not `optimum-cli gatenorm` or `x=[1`; {param('nope', 1)}"
    seen = []
    flags = {"overwrite": "--overwrite"}

    def flag(name, value):
        seen.append((name, value))
        return flags.get(name)

    assert to_flags(message, flag) == "pass --overwrite, not `optimum-cli gatenorm` or `x=[1`; `nope=1`"
    assert seen == [("overwrite", True), ("nope", 1)]
    with pytest.raises(ValueError, match="identifier"):
        param("--overwrite", True)


def _python_error(call) -> str:
    with pytest.raises(GateNormError) as error:
        call()
    return str(error.value)


CASES = {
    # name: (Python call on the workspace, what its error names, CLI arguments, what the CLI's error names)
    "device": (
        lambda ws: prune_and_save(ws / "llama", ws / "out", GateNormConfig(num_layers=1), device="warp-drive"),
        "`device='warp-drive'` is not usable",
        ("prune", "-m", "{ws}/llama", "-k", "1", "-o", "{ws}/out", "--device", "warp-drive"),
        "--device warp-drive is not usable",
    ),
    "overwrite": (
        lambda ws: prune_and_save(ws / "llama", ws / "taken", GateNormConfig(num_layers=1)),
        "pass `overwrite=True` to replace it",
        ("prune", "-m", "{ws}/llama", "-k", "1", "-o", "{ws}/taken"),
        "pass --overwrite to replace it",
    ),
    "calibration_text": (
        lambda ws: prune_and_save(ws / "llama", ws / "out", GateNormConfig(num_layers=1, criterion="cosine")),
        "pass `calibration_text=...`",
        ("prune", "-m", "{ws}/llama", "-k", "1", "-c", "cosine", "-o", "{ws}/out"),
        "pass --calibration-text FILE",
    ),
    "export_format": (
        lambda ws: export_gguf(ws / "gpt2", ws / "out.gguf"),
        "`format='gguf'` does not support model_type 'gpt2'",
        ("export", "-m", "{ws}/gpt2", "-o", "{ws}/out.gguf", "--format", "gguf"),
        "--format gguf does not support model_type 'gpt2'",
    ),
}


@pytest.mark.process
@pytest.mark.parametrize("name", CASES)
def test_python_errors_name_the_parameter_and_the_cli_the_flag(name, workspace):
    call, python_needle, args, cli_needle = CASES[name]
    message = _python_error(lambda: call(workspace))
    assert python_needle in message and "--" not in message, message
    result = gatenorm(*(arg.format(ws=workspace) for arg in args))
    error = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2, result.stderr
    assert error.startswith("error: ") and cli_needle in error and "`" not in error, error
    assert sorted(p.name for p in workspace.iterdir()) == ["gpt2", "llama", "taken"]


@pytest.mark.process
def test_export_tokenizer_flag_is_the_one_the_gguf_error_names(workspace, tmp_path):
    """The GGUF export's "no tokenizer" error names `tokenizer_from=...` in Python and `--tokenizer DIR` on the
    command line, and that flag reaches `export_gguf` (the next refusal is about the tokenizer it points to)."""
    tiny_model("llama").save_pretrained(tmp_path / "notok")
    message = _python_error(lambda: export_gguf(tmp_path / "notok", tmp_path / "a.gguf"))
    assert "pass `tokenizer_from=...`" in message and "--" not in message, message
    args = ("export", "-m", tmp_path / "notok", "-o", tmp_path / "a.gguf", "--format", "gguf")
    error = gatenorm(*args).stderr.strip().splitlines()[-1]
    assert "has none that loads" in error and error.endswith("pass --tokenizer DIR"), error
    error = gatenorm(*args, "--tokenizer", workspace / "llama").stderr.strip().splitlines()[-1]
    assert "without a ByteLevel pre-tokenizer; use --format nemotron-nas" in error, error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notok"]
