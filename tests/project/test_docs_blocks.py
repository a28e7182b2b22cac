"""Every code block a user would paste from README.md, CONTRIBUTING.md or docs/ runs here, so it stays true.

A fenced block is either run by this file or marked, on the line just above its fence, with the reason it is not:
`<!-- not-run: installs packages -->`, `<!-- not-run: output sample -->`, `<!-- not-run: needs a CUDA GPU -->`. The
first test fails on a block that is neither, so a new block cannot escape. Only ```` ```text ```` blocks (a list the
code reads, e.g. CONTRIBUTING's layer order) are exempt: they are not commands.

How blocks run, cheaply (a tiny random Llama, 10 layers, in place of the built-in model; seconds, not minutes):

- **Python** blocks run in this process (`exec`), in a fresh directory holding the inputs they name.
- **Shell** blocks whose every line is an `optimum-cli gatenorm ...` command run top to bottom, each in a fresh
  directory, as a user would paste them. All of them run in one subprocess through the entry point the
  `optimum-cli` executable uses (optimum's root command with the commands of our `optimum.commands.register` file),
  so torch is imported once, not once a line; `tests/commands/test_cli.py` runs the executable itself. A line passes when it
  exits 0 without a traceback and writes what its `--output` names.
- Every `optimum-cli gatenorm` line, marked or not, is also parsed by the real parser (cheap, and it catches a flag
  renamed under a block that cannot run here).

The inputs a block names but does not write (README's command 1 output, `./my-llama`, `heldout.txt`, ...) are in a
workspace built once (`WORKSPACE_INPUTS`); the few text changes that put the tiny model in place of the built-in one
are in `SUBSTITUTIONS`, each with its reason. Blocks that need the ONNX extras are skipped where they are absent
(the transformers 5 environment); the 4.57 environment runs them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import HAS_ONNX, ROOT, SKIP_ONNX
from model_support import byte_level_tokenizer

import optimum_gatenorm
from optimum_gatenorm.commands.gatenorm import GateNormCommand


PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
EXEMPT = {"text"}  # not commands: read by code (CONTRIBUTING's layer order)
SHELL = {"bash", "sh", "shell", "console"}
NOT_RUN = re.compile(r"^\s*<!-- not-run: (?P<reason>\S.*?) -->\s*$")
CLI = "optimum-cli gatenorm "


@dataclass
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    not_run: str | None  # the reason, when marked

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def _blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks, i = [], 0
    while i < len(lines):
        opening = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if re.match(r"^\s*```\s*$", lines[j]))
        indent, language = len(opening.group(1)), opening.group(2)
        code = "\n".join(line[indent:] for line in lines[i + 1 : end])
        marker = NOT_RUN.match(lines[i - 1]) if i else None
        page = str(path.relative_to(ROOT))
        blocks.append(Block(page, i + 1, language, code, marker["reason"] if marker else None))
        i = end + 1
    return blocks


BLOCKS = [block for page in PAGES if page.is_file() for block in _blocks(page)]


def _shell_lines(code: str) -> list[str]:
    """A shell block's command lines: continuations joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    lines = [line.split(" #", 1)[0].strip() for line in joined.split("\n")]
    return [line for line in lines if line and not line.startswith("#")]


def _runs_here(block: Block) -> bool:
    if block.not_run is not None or block.language in EXEMPT:
        return False
    if block.language == "python":
        return True
    return block.language in SHELL and all(line.startswith(CLI) for line in _shell_lines(block.code))


def test_every_code_block_is_run_or_says_why():
    unaccounted = [f"{block} ({block.language or 'no language'})" for block in BLOCKS if block.not_run is None
                   and block.language not in EXEMPT and not _runs_here(block)]  # fmt: skip
    assert not unaccounted, (
        "these blocks are neither Python, nor only `optimum-cli gatenorm` lines (both run by this file), nor marked "
        f"`<!-- not-run: reason -->` on the line just above the fence: {unaccounted}"
    )
    run = [block for block in BLOCKS if _runs_here(block)]
    assert len(run) >= 10 and len(run) > len([block for block in BLOCKS if block.not_run]) / 2


# --- every documented command line parses ------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optimum-cli gatenorm", exit_on_error=False)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for info in GateNormCommand.SUBCOMMANDS:
        sub = subparsers.add_parser(info.name, exit_on_error=False)
        info.subcommand_class.parse_args(sub)
    return parser


CLI_LINES = [
    (str(b), line) for b in BLOCKS if b.language in SHELL for line in _shell_lines(b.code) if line.startswith(CLI)
]


def test_the_docs_show_command_lines():
    assert len(CLI_LINES) >= 30 and {line.split()[2] for _, line in CLI_LINES} >= {
        "score", "prune", "export", "eval", "compare", "benchmark", "convert", "criteria",
    }  # fmt: skip


@pytest.mark.parametrize("where, line", CLI_LINES, ids=[f"{where}:{line.split()[2]}" for where, line in CLI_LINES])
def test_command_lines_in_the_docs_parse(where, line, capsys):
    """Each documented line is accepted by the real parser: subcommand, flags and choices exist (optional parts in
    `[...]` are dropped). Lines of unmarked blocks also run, below."""
    words = shlex.split(re.sub(r"\[[^\]]*\]", "", line))[2:]
    try:
        _parser().parse_args(words)
    except (argparse.ArgumentError, SystemExit) as error:
        pytest.fail(f"{where}: {line!r} does not parse: {error} {capsys.readouterr().err}")


# --- the workspace: what the blocks read ---------------------------------------------------------------------------

# Text changes that put the tiny model where a block names the built-in one; each says why.
SUBSTITUTIONS = [
    # the built-in SmolLM2-135M (30 layers) -> a tiny random Llama of 10 layers with a byte-level BPE tokenizer
    ("smollm2-135m", "my-llama"),
    # the tiny tokenizer is not in llama.cpp's pre-tokenizer table (SmolLM2's is): name one, as tests/exporters/test_serving.py does
    ("--format gguf", "--format gguf --gguf-pre-tokenizer gpt-2"),
    ('gguf_type="f16")', 'gguf_type="f16", pre_tokenizer="gpt-2")'),
    ('quantize="q4_k_m")', 'quantize="q4_k_m", pre_tokenizer="gpt-2")'),
]
# The hub id README's quick start prunes: a tiny Llama in the workspace's Hugging Face cache stands in for it.
HUB_ID = "HuggingFaceTB/SmolLM2-360M"
# Inputs a block may name without writing them: name in the block's directory -> path in the workspace.
WORKSPACE_INPUTS = {
    "my-llama": "my-llama",
    "my-llama-pruned": "my-llama-pruned",  # 2 of 10 removed plainly; with onnx/ where the extras are installed
    "smollm2-pruned": "my-llama-pruned",  # what README's command 1 writes
    "pruned-onnx": "my-llama-pruned/onnx",  # benchmark's placeholders
    "original-onnx": "my-llama-onnx",
    "some-model.gguf": "my-llama.gguf",
    "heldout.txt": "heldout.txt",
    "calib.txt": "calib.txt",
    "tests": "tests",  # README's quick start runs in a clone: tests/data/pride_and_prejudice.txt
}


def _tiny_llama(directory: Path) -> None:
    """A tiny random Llama (GQA 4/2, hidden 64, 10 layers: `--num-layers 8` and `--exclude-layers 3,5` apply) with
    the byte-level BPE tokenizer of tests/exporters/test_serving.py, as real Llamas have; MLP width 256 Nemotron-NAS expresses."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "llama", vocab_size=320, hidden_size=64, intermediate_size=256, num_hidden_layers=10, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, rope_theta=1000.0,
    )  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer = byte_level_tokenizer()
    tokenizer.model_input_names = tokenizer.init_kwargs["model_input_names"] = ["input_ids", "attention_mask"]
    tokenizer.save_pretrained(directory)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("docs")
    _tiny_llama(root / "my-llama")
    config = optimum_gatenorm.GateNormConfig(num_layers=2, criterion="gate_norm", replacement="none")
    export = "onnx" if HAS_ONNX else None
    optimum_gatenorm.prune_and_save(root / "my-llama", root / "my-llama-pruned", config, export=export)
    if HAS_ONNX:
        optimum_gatenorm.export_onnx(root / "my-llama", root / "my-llama-onnx")
    optimum_gatenorm.export_gguf(root / "my-llama", root / "my-llama.gguf", pre_tokenizer="gpt-2")
    text = (ROOT / "tests" / "data" / "pride_and_prejudice.txt").read_text(encoding="utf-8")
    (root / "heldout.txt").write_text(text[:3000], encoding="utf-8")
    (root / "calib.txt").write_text(text * 2, encoding="utf-8")  # the default 16 x 256 tokens, and more
    (root / "tests").symlink_to(ROOT / "tests")
    # README's hub id, in a Hugging Face cache of the hub's own layout (`HF_HUB_CACHE` of the shell blocks, offline)
    storage = root / "hf-cache" / f"models--{HUB_ID.replace('/', '--')}"
    shutil.copytree(root / "my-llama", storage / "snapshots" / ("0" * 40))
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text("0" * 40)
    return root


def _prepare(block: Block, workspace: Path, directory: Path) -> str:
    """The block's code with SUBSTITUTIONS, and `directory` holding the inputs it names but does not write."""
    code = block.code
    for old, new in SUBSTITUTIONS:
        code = code.replace(old, new)
    directory.mkdir(parents=True)
    for name, target in WORKSPACE_INPUTS.items():
        named = re.search(rf"(?<![\w.-])(\./)?{re.escape(name)}(?![\w.-]*\w)", code)
        written = re.search(rf"(--output|-o) (\./)?{re.escape(name)}(?![\w.-])", code)
        if named and not written and (workspace / target).exists():
            (directory / name).symlink_to(workspace / target)
    return code


def _fingerprint(workspace: Path) -> dict[str, str]:
    """What the blocks must leave alone: every file of the workspace but the repository's tests/ link."""
    files = [
        path for path in workspace.rglob("*") if path.is_file() and path.relative_to(workspace).parts[0] != "tests"
    ]
    return {str(path.relative_to(workspace)): hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


def _needs_onnx(block: Block) -> bool:
    return "onnx" in block.code.lower()


# --- Python blocks, in this process --------------------------------------------------------------------------------

PYTHON_BLOCKS = [block for block in BLOCKS if block.language == "python" and _runs_here(block)]


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=str)
def test_python_blocks_run(block, workspace, tmp_path, capfd):
    if _needs_onnx(block) and not HAS_ONNX:
        pytest.skip(SKIP_ONNX)
    before = _fingerprint(workspace)
    code = _prepare(block, workspace, tmp_path / "cwd")
    namespace = {"__name__": "docs_block"}
    cwd = os.getcwd()
    os.chdir(tmp_path / "cwd")
    try:
        exec(compile(code, str(block), "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert _fingerprint(workspace) == before, "a block changed its inputs (e.g. README's command 1 output)"
    if block.page == "README.md":  # what README promises besides running: progress shows, the export is there
        assert "Self-generated calibration" in capfd.readouterr().err
        assert (tmp_path / "cwd" / namespace["result"].exports["onnx"] / "model.onnx").is_file()


# --- shell blocks of `optimum-cli gatenorm` lines, in one subprocess -------------------------------------------------

SHELL_BLOCKS = [block for block in BLOCKS if block.language in SHELL and _runs_here(block)]

# Runs each block's lines in order in its directory through optimum's root command with our registered commands
# (what `optimum-cli` does after discovering register files); records exit status, output and a traceback per line.
RUNNER = textwrap.dedent(
    """
    import contextlib, importlib, io, json, os, shlex, sys, time, traceback
    from optimum.commands.base import RootOptimumCLICommand
    from optimum.commands.optimum_cli import register_optimum_cli_subcommand

    root = RootOptimumCLICommand("Optimum CLI tool", usage="optimum-cli")
    for command in importlib.import_module("optimum.commands.register.register_gatenorm").REGISTER_COMMANDS:
        register_optimum_cli_subcommand(command, parent_command=root)
    plan, results = json.loads(sys.argv[1]), {}
    for name, (directory, lines) in plan.items():
        os.chdir(directory)
        results[name] = []
        for line in lines:
            out, status, trace, start = io.StringIO(), 0, "", time.perf_counter()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                try:
                    args = root.parser.parse_args(shlex.split(line)[1:])
                    args.func(args).run()
                except SystemExit as stop:
                    status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
                except BaseException:
                    status, trace = 1, traceback.format_exc()
            results[name].append({"line": line, "status": status, "output": out.getvalue()[-3000:], "trace": trace,
                                  "seconds": round(time.perf_counter() - start, 2)})
            if status:
                break
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def shell_results(workspace, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("shell")
    before = _fingerprint(workspace)
    plan = {}
    for i, block in enumerate(SHELL_BLOCKS):
        if _needs_onnx(block) and not HAS_ONNX:
            continue
        directory = base / f"block{i}"
        plan[str(block)] = (str(directory), _shell_lines(_prepare(block, workspace, directory)))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1", COLUMNS="200")
    env["HF_HUB_CACHE"] = str(workspace / "hf-cache")
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(plan)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-5000:]
    results = json.loads(done.stdout.strip().split("\n")[-1])
    assert _fingerprint(workspace) == before, "a block changed its inputs"
    return {name: (Path(plan[name][0]), lines) for name, lines in results.items()}


@pytest.mark.process
@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=str)
def test_shell_blocks_run(block, shell_results):
    if _needs_onnx(block) and not HAS_ONNX:
        pytest.skip(SKIP_ONNX)
    directory, lines = shell_results[str(block)]
    expected = _shell_lines(block.code)
    for result in lines:
        assert result["status"] == 0 and not result["trace"], (
            f"{block}: `{result['line']}` exited {result['status']}\n{result['trace']}{result['output']}"
        )
        assert "Traceback" not in result["output"], result["output"]
        output = re.search(r"(?:--output|-o) (\S+)", result["line"])
        if output:
            assert (directory / output[1]).exists(), f"{block}: `{result['line']}` did not write {output[1]}"
    assert len(lines) == len(expected), f"{block}: ran {len(lines)} of {len(expected)} lines"
