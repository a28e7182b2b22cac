"""The tests mirror the package (docs/development.md, "Test layout"): each folder of tests/ is a subpackage of
`optimum_gatenorm` or one of the named folders beyond it, a test file at the top tests a top-level module, no test
imports another test file, and every `tests/...py` path the docs, the code or the studies name exists."""

from __future__ import annotations

import ast
import re

import pytest
from conftest import ROOT, TESTS


PACKAGE = ROOT / "optimum_gatenorm"
# Folders beyond the package's own: the repository's rules (docs, imports, layout), the study scripts under
# benchmarks/ (code that is not the package's), and the real-model tests that cross every layer (`real`).
BEYOND = {"project": "the repository's own rules", "studies": "benchmarks/ scripts", "real": "real models end to end"}


def _test_files() -> list:
    return sorted(path for path in TESTS.rglob("*.py") if not _is_helper(path) and "data" not in path.parts)


def _is_helper(path) -> bool:
    """conftest.py and the `*_support.py` modules beside it: shared by every folder, imported by name."""
    return path.parent == TESTS and (path.name == "conftest.py" or path.name.endswith("_support.py"))


def test_every_test_folder_is_a_subpackage_or_a_named_folder_beyond_it():
    subpackages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    folders = {path.parent.relative_to(TESTS).as_posix() for path in _test_files()} - {"."}
    strays = sorted(folder for folder in folders if folder not in subpackages and folder not in BEYOND)
    assert not strays, f"tests/{strays[0]} mirrors no subpackage of optimum_gatenorm: {sorted(subpackages)}"
    assert not sorted(set(BEYOND) & subpackages), "a folder beyond the package took a subpackage's name"


def test_top_level_test_files_test_top_level_modules():
    modules = {path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    for path in sorted(TESTS.glob("test_*.py")):
        topic = path.stem.removeprefix("test_")
        assert any(topic == module or topic.startswith(f"{module}_") for module in modules), (
            f"tests/{path.name} names no top-level module of optimum_gatenorm ({sorted(modules)}): move it into "
            "the folder of the subpackage it tests"
        )


def test_every_file_in_tests_is_a_test_module_or_a_shared_helper():
    for path in _test_files():
        assert path.name.startswith("test_"), f"{path.relative_to(ROOT)}: name it test_*.py or make it a helper"
    names = [path.name for path in _test_files()]
    # pytest imports test files by base name (no __init__.py): two of one name would shadow each other
    assert len(names) == len(set(names)), sorted(name for name in names if names.count(name) > 1)


@pytest.mark.parametrize("path", _test_files(), ids=lambda path: path.relative_to(TESTS).as_posix())
def test_no_test_imports_another_test_file(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            assert not name.split(".")[0].startswith("test_"), (
                f"{path.relative_to(ROOT)}:{node.lineno} imports {name}: move what is shared into "
                "tests/conftest.py or a helper module beside it"
            )


def _project_files() -> list:
    """The repository's own text files: its top level, .ci/, .github/ and the folders git tracks (no virtualenv,
    cache or clone of another repository, which lie in hidden or ignored folders)."""
    ours = ("optimum_gatenorm", "optimum", "tests", "benchmarks", "docs", ".ci", ".github")
    files = [path for path in ROOT.iterdir() if path.is_file()]
    for folder in ours:
        files += [path for path in (ROOT / folder).rglob("*") if path.is_file() and "__pycache__" not in path.parts]
    return files


def test_every_named_test_file_exists():
    named = set()
    for path in _project_files():
        # CHANGELOG keeps the paths of its day; everything else names today's
        if path.name.startswith("CHANGELOG") or not (
            path.suffix in {".md", ".py", ".toml", ".yml", ".sh"} or path.parent.name == ".ci"
        ):
            continue
        file = path.relative_to(ROOT).as_posix()
        named |= {(file, found) for found in re.findall(r"\btests/[\w/]+\.py\b", path.read_text(errors="ignore"))}
    missing = sorted(f"{file} names {found}" for file, found in named if not (ROOT / found).is_file())
    assert len(named) > 20 and not missing, "; ".join(missing)
