"""`optimum-cli gatenorm convert`: a .gguf file or built-in model as a safetensors checkpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .arguments import DEFAULT_MODEL, _setup
from .base import _LeafCommand


if TYPE_CHECKING:
    from argparse import ArgumentParser


class ConvertCommand(_LeafCommand):
    @staticmethod
    def parse_args(parser: "ArgumentParser"):
        _setup(
            parser,
            "Turn a .gguf file or a built-in alias into a float32 safetensors checkpoint (with tokenizer) and print\n"
            "its directory. Without --output it goes to the cache ($OPTIMUM_GATENORM_CACHE or\n"
            "~/.cache/optimum_gatenorm), which is where --model finds it next time.",
        )
        parser.add_argument(
            "--model",
            "-m",
            default=DEFAULT_MODEL,
            help="a .gguf file or built-in alias (default: %(default)s): {models}",
        )
        parser.add_argument("--output", "-o", help="directory to write instead of the cache")
        parser.add_argument("--overwrite", action="store_true", help="replace an existing --output directory")

    def execute(self):
        from pathlib import Path

        from optimum_gatenorm.checkpoints.models import BUILTIN_MODELS, builtin_alias, convert_gguf, resolve_model
        from optimum_gatenorm.errors import InvalidConfigError

        args = self.args
        if args.output is None:
            print(resolve_model(args.model))
            return
        builtin = builtin_alias(args.model)
        if builtin is not None:
            gguf = builtin.gguf_path()
        elif Path(args.model).suffix.lower() == ".gguf":
            gguf = Path(args.model)
        else:
            shadowed = " (the local path of that name, which comes before the built-in alias)"
            raise InvalidConfigError(
                f"--model must be a .gguf file or a built-in alias, got {args.model!r}"
                + (shadowed if args.model in BUILTIN_MODELS else "")
            )
        print(convert_gguf(gguf, args.output, overwrite=args.overwrite))
