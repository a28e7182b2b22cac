"""`optimum-cli gatenorm`: the group command, and nothing else.

Each subcommand is a module of this package (`score`, `prune`, `export`, `evaluate` for `eval`, `compare`,
`benchmark`, `convert`, `criteria`, `architectures`) that parses its arguments, calls the library and prints;
`arguments` holds the options and argument types they share, `messages` what they print and where (library messages
with flags, one-line errors, signals, standard output, result files), `base` the `_LeafCommand` that runs each.

optimum-cli imports this package at every start (`optimum/commands/register/register_gatenorm.py` loads it as the
top-level package `optimum_gatenorm_cli`, without importing `optimum_gatenorm`, whose `__init__` imports torch):
every module here imports only the standard library, `optimum.commands.base` and this package's own modules
(relatively) at module level. Everything heavy is imported inside `run()`.
"""

from __future__ import annotations

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo


# In the order of SUBCOMMANDS, which is the order `_LeafCommand.__subclasses__()` gives them in (a test checks it):
# where two commands spell the option of one parameter differently, a message shows the first one's.
# isort: off
from .score import ScoreCommand
from .prune import PruneCommand
from .evaluate import EvalCommand
from .compare import CompareCommand
from .benchmark import BenchmarkCommand
from .export import ExportCommand
from .convert import ConvertCommand
from .architectures import ArchitecturesCommand
from .criteria import CriteriaCommand
# isort: on


class GateNormCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(
        name="gatenorm",
        help="Data-free attention pruning (Gate-Norm): score, prune, eval, compare, benchmark, export, convert, criteria, "
        "architectures",
    )
    SUBCOMMANDS = (
        CommandInfo(
            name="score",
            help="rank attention sublayers by a criterion (default cosine_self: on text the model writes itself)",
            subcommand_class=ScoreCommand,
        ),
        CommandInfo(
            name="prune", help="remove the lowest-scored attention sublayers and save", subcommand_class=PruneCommand
        ),
        CommandInfo(
            name="eval",
            help="perplexity of a PyTorch or ONNX model on a text file",
            subcommand_class=EvalCommand,
        ),
        CommandInfo(
            name="compare",
            help="perplexity vs number of removed sublayers, for several criteria",
            subcommand_class=CompareCommand,
        ),
        CommandInfo(
            name="benchmark",
            help="throughput of a pruned model against its baseline, with cost-model bounds",
            subcommand_class=BenchmarkCommand,
        ),
        CommandInfo(
            name="export",
            help="export a pruned or unpruned model to ONNX (ORTModelForCausalLM), GGUF (llama.cpp) or Nemotron-NAS",
            subcommand_class=ExportCommand,
        ),
        CommandInfo(
            name="convert",
            help="turn a .gguf file or built-in model into a safetensors checkpoint",
            subcommand_class=ConvertCommand,
        ),
        CommandInfo(
            name="architectures",
            help="list the supported architectures and which exports take each",
            subcommand_class=ArchitecturesCommand,
        ),
        CommandInfo(name="criteria", help="list the scoring criteria", subcommand_class=CriteriaCommand),
    )
