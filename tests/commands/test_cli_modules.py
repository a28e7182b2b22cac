"""The shape of the CLI package, `optimum_gatenorm/commands/`: one module per subcommand of `optimum-cli gatenorm`,
each short, the group command alone in `gatenorm.py`, and every module light enough to import at each optimum-cli
start, as `optimum/commands/register/register_gatenorm.py` does (without the `optimum_gatenorm` package)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest
from conftest import ROOT

from optimum_gatenorm.commands.base import _LeafCommand
from optimum_gatenorm.commands.gatenorm import GateNormCommand


COMMANDS = ROOT / "optimum_gatenorm" / "commands"
SHARED = {"__init__", "arguments", "base", "gatenorm", "messages"}  # the group, and what the commands share
MODULE_OF = {"eval": "evaluate"}  # a subcommand whose module is named otherwise (`eval` is a builtin)
MAX_LINES = 300


def _tree(name: str) -> ast.Module:
    return ast.parse((COMMANDS / f"{name}.py").read_text(encoding="utf-8"))


def test_one_module_per_subcommand():
    modules = {info.name: info.subcommand_class.__module__ for info in GateNormCommand.SUBCOMMANDS}
    assert modules == {name: f"optimum_gatenorm.commands.{MODULE_OF.get(name, name)}" for name in modules}, (
        "each subcommand's class lives in the module named after it"
    )
    files = {path.stem for path in COMMANDS.glob("*.py")}
    assert files == SHARED | {module.rsplit(".", 1)[1] for module in modules.values()}, (
        "optimum_gatenorm/commands/ holds one module per subcommand and the shared ones, nothing else"
    )
    for info in GateNormCommand.SUBCOMMANDS:
        name = info.subcommand_class.__module__.rsplit(".", 1)[1]
        classes = [node.name for node in _tree(name).body if isinstance(node, ast.ClassDef)]
        assert classes == [info.subcommand_class.__name__], f"{name}.py defines one command: {classes}"


def test_every_command_module_is_short():
    lines = {path.name: len(path.read_text(encoding="utf-8").splitlines()) for path in COMMANDS.glob("*.py")}
    long = {name: count for name, count in lines.items() if count > MAX_LINES and name[:-3] not in SHARED}
    assert not long, f"split these command modules (over {MAX_LINES} lines): {long}"


def test_gatenorm_holds_only_the_group_command():
    body = [node for node in _tree("gatenorm").body if not isinstance(node, (ast.Import, ast.ImportFrom))]
    docstring, *rest = body
    assert isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant)
    assert [type(node).__name__ for node in rest] == ["ClassDef"] and rest[0].name == "GateNormCommand"


def test_every_gatenorm_command_is_a_leaf_command_in_subcommand_order():
    """`_LeafCommand.cli_text` shows a parameter as the flag of the first command that has it: this command's own,
    then every `_LeafCommand` subclass in definition order, which must be every subcommand, in SUBCOMMANDS order."""
    assert _LeafCommand.__subclasses__() == [info.subcommand_class for info in GateNormCommand.SUBCOMMANDS]


def test_command_modules_import_only_the_standard_library_and_optimum_commands_at_module_level():
    """What every optimum-cli start imports: `optimum_gatenorm` (torch) only inside functions."""
    heavy = []
    for path in sorted(COMMANDS.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        statements = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        for node in statements:
            if isinstance(node, ast.ImportFrom) and node.level:
                continue  # this package's own modules
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
            heavy += [
                f"{path.name}:{node.lineno} {name}"
                for name in names
                if name.split(".")[0] not in sys.stdlib_module_names and name != "optimum.commands.base"
            ]
    assert not heavy, "import these inside run() / execute(): " + ", ".join(heavy)


@pytest.mark.process
def test_register_gatenorm_loads_the_commands_without_torch_transformers_or_the_package():
    code = """
import json, sys
from optimum.commands.register import register_gatenorm
command, = register_gatenorm.REGISTER_COMMANDS
print(json.dumps({
    "group": f"{command.__module__}.{command.__name__}",
    "subcommands": [info.subcommand_class.__module__ for info in command.SUBCOMMANDS],
    "loaded": sorted(m for m in ("torch", "transformers", "optimum_gatenorm") if m in sys.modules),
}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["loaded"] == [], f"the optimum-cli start imports {found['loaded']}"
    assert found["group"] == "optimum_gatenorm_cli.gatenorm.GateNormCommand"
    assert found["subcommands"] == [
        f"optimum_gatenorm_cli.{MODULE_OF.get(info.name, info.name)}" for info in GateNormCommand.SUBCOMMANDS
    ]
