"""Registers `optimum-cli gatenorm`.

optimum-cli imports every module of the `optimum.commands.register` namespace at each start and registers its
REGISTER_COMMANDS. Importing the `optimum_gatenorm` package would register our loader with transformers, which
imports torch (~3 s) on every optimum-cli start, for every command. So the command definitions, which need only
the standard library and `optimum.commands.base`, are loaded from their folder, `optimum_gatenorm/commands`, as a
top-level package of their own (`optimum_gatenorm_cli`: its modules import each other relatively) without the
`optimum_gatenorm` package; the commands import `optimum_gatenorm` inside `run()`.
"""

import importlib.util
import sys
from pathlib import Path


def _load_command_package():
    name = "optimum_gatenorm_cli"
    if name not in sys.modules:
        package = importlib.util.find_spec("optimum_gatenorm")
        folder = Path(next(iter(package.submodule_search_locations))) / "commands"
        spec = importlib.util.spec_from_file_location(
            name, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


REGISTER_COMMANDS = [_load_command_package().GateNormCommand]
