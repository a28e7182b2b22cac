"""The command-line interface, `optimum-cli gatenorm` (`gatenorm.GateNormCommand`, one module per subcommand).

Imported at every optimum-cli start, as the package `optimum_gatenorm_cli` (see `gatenorm`): this file and every
module of the package import only the standard library, `optimum.commands.base` and each other at module level.
"""

from .gatenorm import GateNormCommand


__all__ = ["GateNormCommand"]
