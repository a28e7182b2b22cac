"""README and docs/ stay true: every code block a user would paste is run here (Python, on tiny models), parsed by
the real command-line parser (`optimum-cli gatenorm` lines), or says in a `<!-- not-run: reason -->` comment on the
line above it why not; every relative link and anchor resolves; README stays a short front door.

Blocks without a language or marked `text` (formulas, sample output, lists) are not code to paste: not checked.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import HAS_ONNX, SKIP_ONNX

import optimum_gatenorm
from optimum_gatenorm.commands.gatenorm import GateNormCommand


ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
LINKED_PAGES = [*PAGES, ROOT / "benchmarks" / "README.md", ROOT / "benchmarks" / "RESULTS.md"]
DISPLAY = {"", "text"}  # languages of blocks that are not code to paste
NOT_RUN = re.compile(r"^\s*<!-- not-run: (?P<reason>\S.*?) -->\s*$")
# README's Python block is run by tests/test_output_safety.py, in a directory where README's command 1 already wrote
# its output (the block must leave it alone).
RUN_ELSEWHERE = {("README.md", "python", 0): "tests/test_output_safety.py::test_readme_python_block_runs_as_written"}


@dataclass
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    not_run: str | None  # the reason, when marked
    index: int  # among the page's blocks of this language

    def __str__(self) -> str:
        return f"{self.page}:{self.line} ({self.language})"


def _blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks, counts, i = [], {}, 0
    while i < len(lines):
        opening = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if re.match(r"^\s*```\s*$", lines[j]))
        indent, language = len(opening.group(1)), opening.group(2)
        code = "\n".join(line[indent:] for line in lines[i + 1 : end])
        marker = NOT_RUN.match(lines[i - 1]) if i else None
        index = counts.get(language, 0)
        counts[language] = index + 1
        name = str(path.relative_to(ROOT))
        blocks.append(Block(name, i + 1, language, code, marker["reason"] if marker else None, index))
        i = end + 1
    return blocks


BLOCKS = [block for page in PAGES if page.is_file() for block in _blocks(page)]


def _cli_lines(code: str) -> list[str]:
    """The `optimum-cli gatenorm` command lines of a shell block (continuations joined), comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [line.split(" #", 1)[0].strip() for line in joined.split("\n") if line.startswith("optimum-cli gatenorm")]


def _is_cli_block(block: Block) -> bool:
    lines = [line for line in block.code.split("\n") if line.strip() and not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return block.language == "bash" and all(line.startswith("optimum-cli gatenorm ") for line in joined.split("\n"))


def test_every_code_block_is_run_or_says_why():
    unaccounted = [
        str(block)
        for block in BLOCKS
        if block.language not in DISPLAY
        and block.not_run is None
        and (block.page, block.language, block.index) not in RUN_ELSEWHERE
        and not _is_cli_block(block)
        and block.language != "python"
    ]
    assert not unaccounted, (
        "these blocks are neither Python (run by this file), nor only `optimum-cli gatenorm` lines (parsed by this "
        f"file), nor marked `<!-- not-run: reason -->` on the line above: {unaccounted}"
    )
    assert len([b for b in BLOCKS if b.not_run]) < len(BLOCKS) / 2  # most blocks are checked


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optimum-cli gatenorm", exit_on_error=False)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for info in GateNormCommand.SUBCOMMANDS:
        sub = subparsers.add_parser(info.name, exit_on_error=False)
        info.subcommand_class.parse_args(sub)
    return parser


CLI_LINES = [(str(block), line) for block in BLOCKS if block.language == "bash" for line in _cli_lines(block.code)]


def test_the_docs_show_command_lines():
    assert len(CLI_LINES) >= 30 and {line.split()[2] for _, line in CLI_LINES} >= {
        "score", "prune", "export", "eval", "compare", "benchmark", "convert", "criteria",
    }  # fmt: skip


@pytest.mark.parametrize("where, line", CLI_LINES, ids=[f"{where}:{line.split()[2]}" for where, line in CLI_LINES])
def test_command_lines_in_the_docs_parse(where, line, capsys):
    """Each documented `optimum-cli gatenorm` line is accepted by the real parser: its subcommand, flags and choices
    exist (optional parts in `[...]` are dropped). What the commands do is tested in tests/test_cli.py and the rest."""
    words = shlex.split(re.sub(r"\[[^\]]*\]", "", line))[2:]
    try:
        _parser().parse_args(words)
    except (argparse.ArgumentError, SystemExit) as error:
        pytest.fail(f"{where}: {line!r} does not parse: {error} {capsys.readouterr().err}")


# --- Python blocks, run on tiny models --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A directory holding what the blocks name: ./my-llama (a tiny Llama with a byte-level BPE tokenizer, as real
    Llamas have, from tests/test_serving.py) and ./my-llama-pruned (2 of its 4 attention sublayers removed plainly,
    so every export takes it)."""
    from test_serving import _byte_level_tokenizer, _tiny_llama

    root = tmp_path_factory.mktemp("docs")
    _tiny_llama().save_pretrained(root / "my-llama")
    tokenizer = _byte_level_tokenizer()
    tokenizer.model_input_names = tokenizer.init_kwargs["model_input_names"] = ["input_ids", "attention_mask"]
    tokenizer.save_pretrained(root / "my-llama")
    config = optimum_gatenorm.GateNormConfig(num_layers=2, criterion="gate_norm", replacement="none")
    optimum_gatenorm.prune_and_save(root / "my-llama", root / "my-llama-pruned", config)
    return root


# Where a block names what only the built-in model has, the test says so here (and why).
SUBSTITUTIONS = [
    ('"smollm2-135m"', '"./my-llama"'),
    # the tiny tokenizer's pre-tokenizer is not in llama.cpp's table: name one, as tests/test_serving.py does
    ('gguf_type="f16")', 'gguf_type="f16", pre_tokenizer="gpt-2")'),
]
PYTHON_BLOCKS = [
    block
    for block in BLOCKS
    if block.language == "python"
    and block.not_run is None
    and (block.page, block.language, block.index) not in RUN_ELSEWHERE
]


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=str)
def test_python_blocks_run(block, workspace, tmp_path):
    if "onnx" in block.code and not HAS_ONNX:
        pytest.skip(SKIP_ONNX)
    code = block.code
    for old, new in SUBSTITUTIONS:
        code = code.replace(old, new)
    work = tmp_path / "cwd"
    work.mkdir()
    for name in ("my-llama", "my-llama-pruned"):
        (work / name).symlink_to(workspace / name)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        exec(compile(code, str(block), "exec"), {"__name__": "docs_block"})
    finally:
        os.chdir(cwd)
    assert (workspace / "my-llama-pruned" / "model.safetensors").is_file()  # the inputs are left alone


# --- links -------------------------------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but `-` and `_` dropped, spaces to `-`."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    anchors |= set(re.findall(r'<a id="([^"]+)"', text))
    return anchors


LINKS = [
    (page, target)
    for page in LINKED_PAGES
    for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", page.read_text(), flags=re.S))
    if not target.startswith(("http://", "https://", "mailto:"))
]


@pytest.mark.parametrize("page, target", LINKS, ids=[f"{p.relative_to(ROOT)}->{t}" for p, t in LINKS])
def test_relative_links_resolve(page, target):
    file, _, anchor = target.partition("#")
    path = (page.parent / file).resolve() if file else page
    assert path.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
    if anchor and path.suffix == ".md":
        assert anchor in _anchors(path), f"{page.relative_to(ROOT)} links to {target}: no such heading"


def test_readme_is_a_short_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.split("\n")) <= 200
    head = readme.split("\n")[:40]
    assert any("optimum-cli gatenorm prune --model smollm2-135m" in line for line in head)  # set-up command 1
    assert "bash .ci/test" in head  # set-up command 2
    for page in sorted((ROOT / "docs").glob("*.md")):  # every manual page is reachable from README
        if page.name != "DESIGN-transformers5.md":
            assert f"(docs/{page.name}" in readme, page.name


def test_readme_and_the_architecture_table_name_every_registered_model_type():
    from optimum_gatenorm import supported_model_types

    table = (ROOT / "docs" / "architectures.md").read_text().split("## ", 1)[0]
    readme = (ROOT / "README.md").read_text()
    for model_type in supported_model_types():
        assert f"`{model_type}`" in table and f"`{model_type}`" in readme, model_type
