"""The docs agree with the command line: every flag `--help` shows is in docs/usage.md under its command, `export
--dtype` takes the dtype spelling of `prune` and `eval` (the earlier `fp32` / `fp16` still accepted), and what
README's commands write into a clone is ignored by git."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess

import pytest
from conftest import ROOT

from optimum_gatenorm.commands.gatenorm import GateNormCommand
from optimum_gatenorm.errors import InvalidConfigError
from optimum_gatenorm.exporters.onnx import DTYPE_ALIASES, DTYPES, onnx_dtype


USAGE = ROOT / "docs" / "usage.md"


def _parser(name: str) -> argparse.ArgumentParser:
    info = next(info for info in GateNormCommand.SUBCOMMANDS if info.name == name)
    parser = argparse.ArgumentParser(prog=f"optimum-cli gatenorm {name}", exit_on_error=False)
    info.subcommand_class.parse_args(parser)
    return parser


def _long_options(name: str) -> list[str]:
    return [
        option
        for action in _parser(name)._actions
        if action.dest != "help"
        for option in action.option_strings
        if option.startswith("--")
    ]


def _sections() -> dict[str, str]:
    """`### `command`` heading of docs/usage.md -> the text up to the next heading."""
    text = USAGE.read_text(encoding="utf-8")
    parts = re.split(r"^(#{2,3} .*)$", text, flags=re.M)
    sections = {}
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        match = re.fullmatch(r"### `([a-z-]+)`", heading.strip())
        if match:
            sections[match[1]] = body
    return sections


COMMANDS = [info.name for info in GateNormCommand.SUBCOMMANDS]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_of_every_command_is_in_its_section_of_docs_usage(command):
    sections = _sections()
    assert command in sections, f"docs/usage.md has no '### `{command}`' section"
    missing = [
        option for option in _long_options(command) if not re.search(rf"`{re.escape(option)}`", sections[command])
    ]
    assert not missing, (
        f"docs/usage.md's `{command}` section lacks {missing} (see `optimum-cli gatenorm {command} -h`)"
    )


def test_docs_usage_names_no_flag_a_command_lacks():
    for command, body in _sections().items():
        assert command in COMMANDS, f"docs/usage.md documents `{command}`, which is not a command"
        rows = re.findall(r"^\| `(--[a-z-]+)`", body, flags=re.M)
        unknown = sorted(set(rows) - set(_long_options(command)))
        assert not unknown, f"docs/usage.md's `{command}` section lists {unknown}, which `{command}` does not take"


# --- one spelling of dtypes ----------------------------------------------------------------------------------------


def test_export_dtype_takes_prunes_spelling_and_the_old_one():
    parser = _parser("export")
    dtype = next(action for action in parser._actions if action.dest == "dtype")
    assert tuple(dtype.choices) == DTYPES and set(DTYPES) <= set(next(
        action for action in _parser("prune")._actions if action.dest == "dtype"
    ).choices)  # fmt: skip
    for given, expected in (("float32", "float32"), ("float16", "float16"), ("fp32", "float32"), ("fp16", "float16")):
        assert parser.parse_args(["-o", "x", "--dtype", given]).dtype == expected
    assert parser.parse_args(["-o", "x"]).dtype == "float32"
    with pytest.raises(argparse.ArgumentError, match="invalid choice: 'bfloat16'"):
        parser.parse_args(["-o", "x", "--dtype", "bfloat16"])
    help_text = dtype.help
    assert "fp32" in help_text and "fp16" in help_text  # the aliases are said, not listed as choices


def test_the_library_takes_both_spellings():
    assert [onnx_dtype(name) for name in ("float32", "float16", "fp32", "fp16")] == [
        "float32", "float16", "float32", "float16"
    ]  # fmt: skip
    assert set(DTYPE_ALIASES.values()) == set(DTYPES)
    with pytest.raises(InvalidConfigError, match=r"`dtype='bf16'` is not an ONNX export dtype; use one of float32"):
        onnx_dtype("bf16")


@pytest.mark.onnx
@pytest.mark.parametrize("dtype", ["float16", "fp16"])
def test_export_onnx_refuses_float16_on_the_cpu_in_either_spelling(dtype, tmp_path):
    from conftest import tiny_model

    from optimum_gatenorm.exporters.onnx import export_onnx

    with pytest.raises(InvalidConfigError, match="float16 export needs `device='cuda'`"):
        export_onnx(tiny_model("llama"), tmp_path / "onnx", dtype=dtype)
    assert not (tmp_path / "onnx").exists()


# --- README's outputs stay out of git --------------------------------------------------------------------------------


def _readme_outputs() -> list[str]:
    """The paths README's commands write: `--output` / `-o` of its shell lines, and the targets of `save_pruned(...)` /
    `prune_and_save(...)` in its Python."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    outputs = []
    for line in re.findall(r"^\s*(optimum-cli gatenorm .*)$", text, flags=re.M):
        words = shlex.split(line.split("  #")[0])
        outputs += [words[i + 1] for i, word in enumerate(words[:-1]) if word in ("--output", "-o")]
    outputs += re.findall(r"save_pruned\(\s*\w+,\s*\"([^\"]+)\"", text)
    outputs += re.findall(r"prune_and_save\(\s*\"[^\"]+\",\s*\"([^\"]+)\"", text)
    return outputs


@pytest.mark.process
def test_what_readmes_commands_write_is_ignored_by_git():
    outputs = _readme_outputs()
    expected = {"smollm2-pruned", "smollm2-fast", "smollm2-onnx", "smollm2-pruned-q4.gguf", "smollm2-pruned-py"}
    assert expected <= set(outputs), outputs  # the parsing still finds them
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git clone")
    for output in outputs:
        for path in (output, f"{output}/config.json"):
            result = subprocess.run(
                ["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT, capture_output=True, text=True
            )
            assert result.returncode == 0, f"README's commands write {path} into the clone, and .gitignore misses it"
