"""`optimum-cli gatenorm eval`: perplexity, long-context retrieval and chat fidelity of a model."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from .arguments import DTYPES, _add_model_args, _add_retrieval_args, _add_window_args, _retrieval_config, _setup
from .base import _LeafCommand
from .messages import _inputs, _to_stdout


if TYPE_CHECKING:
    from argparse import ArgumentParser


class EvalCommand(_LeafCommand):
    STANDARD_OUTPUT = True

    @staticmethod
    def parse_args(parser: "ArgumentParser"):
        _setup(
            parser,
            "Perplexity of a model on a UTF-8 text file. PyTorch checkpoints (pruned or not) load with the pruned\n"
            "structure; a directory holding model.onnx runs on onnxruntime through ORTModelForCausalLM. The text\n"
            "is tokenized once without special tokens and cut into windows; each token is scored once, with the\n"
            "tokens before it in its window as context (see docs/quality.md, 'Perplexity windowing'). With --reference (the unpruned\n"
            "model), the same windows also give KL divergence and top-1 agreement; --chat adds chat fidelity.\n"
            "--task adds long-context retrieval (passkey, multi-key needle in a haystack, variable tracking), generated\n"
            "from --seed with no dataset, at --lengths and --depths; with --task, --text is optional.",
        )
        _add_model_args(parser)
        parser.add_argument(
            "--text", "-t", help="UTF-8 text file to evaluate perplexity on (required unless --task is given)"
        )
        _add_window_args(parser)
        parser.add_argument(
            "--dtype", choices=DTYPES, default="auto", help="dtype of a PyTorch model (default: the checkpoint's)"
        )
        parser.add_argument(
            "--provider",
            choices=("auto", "cpu", "cuda"),
            default="auto",
            help="onnxruntime execution provider for an ONNX model, the device of a PyTorch one (default: %(default)s: "
            "cuda when torch sees a GPU and onnxruntime-gpu is installed, else cpu, logged with the reason)",
        )
        parser.add_argument(
            "--reference",
            "-r",
            help="a model to compare with, typically the unpruned one (checkpoint, ONNX export, .gguf or alias, same "
            "tokenizer): adds the mean and 99th-percentile KL divergence of the next-token distributions and top-1 "
            "agreement on the same tokens (see docs/quality.md)",
        )
        parser.add_argument(
            "--chat",
            action="store_true",
            help="with --reference: also ask both models a few fixed chat prompts (greedy) and report how far the "
            "answers agree",
        )
        _add_retrieval_args(parser, seed_flag="--seed")
        parser.add_argument("--format", choices=("table", "json"), default="table", help="output format")
        parser.add_argument(
            "--output",
            "-o",
            help="also write the JSON result to this file (`-`: the JSON on stdout, the table on stderr)",
        )
        parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")

    def execute(self):
        from optimum_gatenorm.errors import InvalidConfigError
        from optimum_gatenorm.evaluation.suite import evaluate_model
        from optimum_gatenorm.outputs import atomic_write_text, check_output_path

        args = self.args
        if args.chat and not args.reference:
            raise InvalidConfigError("--chat compares answers with a reference model; add --reference MODEL")
        if args.text is None and not args.task:
            raise InvalidConfigError(
                "eval needs --text FILE (perplexity) or --task passkey,multikey,vartrack (long-context retrieval)"
            )
        if args.text is None and args.reference:
            raise InvalidConfigError("--reference compares the two models on a text; add --text FILE")
        retrieval = _retrieval_config(args)
        inputs = _inputs(args, "model", "text", "reference")
        to_file = args.output and not _to_stdout(args)
        if to_file:
            check_output_path(args.output, args.overwrite, inputs=inputs)
        result = evaluate_model(
            args.model,
            args.text,
            reference=args.reference,
            chat=args.chat,
            retrieval=retrieval,
            window=args.window,
            stride=args.stride,
            max_tokens=args.max_tokens,
            bos=args.bos,
            dtype=args.dtype,
            provider=args.provider,
            progress=True,
        )
        text, table = result.to_json(), result.to_table()
        if _to_stdout(args):
            if args.format != "json":
                print(table, file=sys.stderr)
            print(text)
            return
        print(text if args.format == "json" else table)
        if to_file:
            path = atomic_write_text(args.output, text + "\n", overwrite=args.overwrite, inputs=inputs)
            print(f"Wrote {path}", file=sys.stderr)
