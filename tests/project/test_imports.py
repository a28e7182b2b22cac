"""The shape of the package: every import points down the layer order written in CONTRIBUTING.md ("Package
layers") and no import loop forms, counting every import statement (module level, inside functions and under
`TYPE_CHECKING`); no function is over 80 lines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import ROOT


PACKAGE = ROOT / "optimum_gatenorm"
FACE = "optimum_gatenorm"  # the package's __init__: the public face, above every layer


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = ROOT / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports_in(source: str, name: str, is_package: bool) -> list[tuple[str, str, int]]:
    """(importer, imported module, line) for every import of a package module in `source`, the code of module
    `name`, wherever the statement is: module level, inside a function, under `if TYPE_CHECKING:`."""
    found = []
    package = name.split(".") if is_package else name.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".")
            base = base if node.level else node.module or ""
            # `from pkg import sub` imports the submodule; `from mod import name` the module
            targets = [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base for a in node.names]
        else:
            continue
        found += [(name, target, node.lineno) for target in targets if target.split(".")[0] == FACE]
    return found


def _imports() -> list[tuple[str, str, int]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += _imports_in(path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py")
    return found


def _unit(module: str) -> str:
    """The layer unit of a module: its top-level module or subpackage under the package (the face for `__init__`)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else FACE


def _layers() -> list[list[str]]:
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    section = text.split("## Package layers", 1)[1]
    block = re.search(r"```text\n(.*?)```", section, flags=re.S)[1]
    return [line.split() for line in block.strip().split("\n")]


IMPORTS = _imports()


def test_the_checker_sees_imports_of_every_kind():
    seen = {(a, b) for a, b, _ in IMPORTS}
    assert len(IMPORTS) > 200
    assert ("optimum_gatenorm.commands.prune", "optimum_gatenorm.pipeline") in seen  # function-local
    # relative imports resolved from a module and from a package's __init__, in every place a statement can stand
    source = """
from typing import TYPE_CHECKING
import torch
from . import shares
from .cost_model import ModelCost
from .. import errors, load_pruned
from ..checkpoints import structure as surgery
import optimum_gatenorm.pruning.pruner
if TYPE_CHECKING:
    from ..pruning.configuration import GateNormConfig
def f():
    from ..criteria.gate import GateNormCriterion
class C:
    def g(self):
        import optimum_gatenorm
"""
    found = [(target, line) for _, target, line in _imports_in(source, "optimum_gatenorm.speed.planning", False)]
    assert found == [
        ("optimum_gatenorm.speed.shares", 4),
        ("optimum_gatenorm.speed.cost_model", 5),
        ("optimum_gatenorm.errors", 6),
        ("optimum_gatenorm", 6),
        ("optimum_gatenorm.checkpoints.structure", 7),
        ("optimum_gatenorm.pruning.pruner", 8),
        ("optimum_gatenorm.pruning.configuration", 10),
        ("optimum_gatenorm.criteria.gate", 12),
        ("optimum_gatenorm", 15),
    ]
    found = _imports_in("from . import registry\nfrom .. import text\n", "optimum_gatenorm.adapters", True)
    assert [target for _, target, _ in found] == ["optimum_gatenorm.adapters.registry", "optimum_gatenorm.text"]


def test_every_module_is_placed_in_a_layer():
    placed = {unit for layer in _layers() for unit in layer}
    units = {_unit(_module_name(path)) for path in PACKAGE.rglob("*.py")} - {FACE}
    assert not units - placed, f"place these in CONTRIBUTING.md's layer order: {sorted(units - placed)}"
    assert not placed - units, f"CONTRIBUTING.md names units that do not exist: {sorted(placed - units)}"


def test_imports_point_down():
    rank = {unit: depth for depth, layer in enumerate(_layers()) for unit in layer}
    rank[FACE] = -1
    upward = sorted(
        {
            f"{importer}:{line} imports {target}"
            for importer, target, line in IMPORTS
            if _unit(importer) != _unit(target) and rank[_unit(target)] < rank[_unit(importer)]
        }
    )
    assert not upward, "imports that point up the layer order (CONTRIBUTING.md):\n" + "\n".join(upward)


def _bound(body: list[ast.stmt]) -> tuple[set[str], set[str]]:
    """The names a module's top level binds by definition or assignment, and those it binds by importing."""
    defined: set[str] = set()
    imported: set[str] = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined |= {n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            imported |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        for block in ("body", "orelse", "finalbody", "handlers"):  # if / try / with / for at the top level
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and hasattr(node, block):
                inner = _bound(getattr(node, block))
                defined |= inner[0]
                imported |= inner[1]
    return defined, imported


def test_names_are_imported_from_where_they_live():
    """A name is taken from the module that defines it, not from one that only imports it (a package's `__init__`
    is the exception: re-exporting is what it is for)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    bound = {name: _bound(ast.parse(path.read_text(encoding="utf-8")).body) for name, path in modules.items()}
    passed_on = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".")
            base = base if node.level else node.module or ""
            if base not in bound:
                continue
            defined, imported = bound[base]
            passed_on += [
                f"{name}:{node.lineno} takes {alias.name} from {base}, which "
                + ("only imports it" if alias.name in imported else "does not bind it")
                for alias in node.names
                if alias.name not in defined and not _is_module(f"{base}.{alias.name}")
            ]
    assert not passed_on, "import these from the module that defines them:\n" + "\n".join(passed_on)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _graph(key) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for importer, target, _ in IMPORTS:
        a, b = key(importer), key(target)
        if a != b:
            graph.setdefault(a, set()).add(b)
    return graph


@pytest.mark.parametrize("level", ["module", "unit"])
def test_no_import_loop(level):
    cycle = _cycle(_graph((lambda m: m) if level == "module" else _unit))
    assert cycle is None, f"import loop between {level}s: {' -> '.join(cycle)}"


def test_no_function_is_over_80_lines():
    """Counted without the docstring: a function that long does more than one thing."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            lines = node.end_lineno - node.lineno + 1
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                lines -= first.end_lineno - first.lineno + 1
            if lines > 80:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these: " + "; ".join(long)
