"""`optimum-cli gatenorm benchmark`: throughput of a pruned model against its baseline."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .arguments import _add_result_file_args, _int_at_least, _non_negative_int, _positive_int, _setup
from .base import _LeafCommand
from .messages import _check_result_files, _inputs, _print_table, _write_results


if TYPE_CHECKING:
    from argparse import ArgumentParser


class BenchmarkCommand(_LeafCommand):
    STANDARD_OUTPUT = True

    @staticmethod
    def parse_args(parser: "ArgumentParser"):
        _setup(
            parser,
            "Throughput of a pruned model (--model) against its baseline (--baseline), side by side in one run:\n"
            "prefill latency, decode tokens/s, end-to-end tokens/s and memory growth during a run, median and\n"
            "min-max over interleaved runs (A B A B, warm-up excluded), random seeded prompts of exactly the given\n"
            "lengths and a fixed number of new tokens (no early EOS). Next to each speed-up: the cost-model bound\n"
            "(ideal) and efficiency = measured / ideal. Repeat --batch-size / --prompt-length to measure several shapes.",
        )
        parser.add_argument(
            "--model",
            "-m",
            required=True,
            help="the candidate: an ONNX export (or a checkpoint with --backend pytorch)",
        )
        parser.add_argument("--baseline", "-b", required=True, help="the reference, usually the unpruned export")
        parser.add_argument(
            "--backend",
            choices=("onnxruntime", "pytorch"),
            default="onnxruntime",
            help="onnxruntime through ORTModelForCausalLM (the product path, default) or PyTorch eager",
        )
        parser.add_argument(
            "--provider",
            choices=("auto", "cpu", "cuda"),
            default="auto",
            help="cpu, or cuda (onnxruntime's CUDAExecutionProvider with IO binding; fails if it would fall back); "
            "default %(default)s: cuda when torch sees a GPU and onnxruntime-gpu is installed, else cpu",
        )
        parser.add_argument(
            "--batch-size", type=_positive_int, action="append", help="batch size (repeatable; default: 1)"
        )
        parser.add_argument(
            "--prompt-length", type=_positive_int, action="append", help="prompt tokens (repeatable; default: 128)"
        )
        parser.add_argument(
            "--new-tokens", type=_int_at_least(2), default=32, help="tokens generated per run (default: 32)"
        )
        parser.add_argument("--warmup", type=_non_negative_int, default=1, help="warm-up runs per model (default: 1)")
        parser.add_argument("--runs", type=_positive_int, default=5, help="recorded runs per model (default: 5)")
        parser.add_argument(
            "--seed", type=_non_negative_int, default=0, help="seed of the random prompts (default: 0)"
        )
        parser.add_argument(
            "--shares",
            metavar="FILE",
            help="attention time shares measured on this backend (JSON of measure_attention_shares(...).save); adds "
            "the measured-share bound and the efficiency against it",
        )
        _add_result_file_args(
            parser,
            output="write every raw run and the summary as JSON here (`-`: stdout, the table on stderr)",
            plot="write a PNG of the speed-ups and their bounds here",
        )

    def execute(self):
        from optimum_gatenorm.speed.throughput import BenchmarkSettings, run_benchmark

        args = self.args
        inputs = _inputs(args, "model", "baseline", "shares")
        _check_result_files(args, inputs)
        settings = BenchmarkSettings(
            batch_sizes=args.batch_size or [1],
            prompt_lengths=args.prompt_length or [128],
            new_tokens=args.new_tokens,
            warmup=args.warmup,
            runs=args.runs,
            backend=args.backend,
            provider=args.provider,
            seed=args.seed,
        )
        result = run_benchmark(args.model, args.baseline, settings, shares=args.shares or None, progress=True)
        _print_table(args, self.cli_text(result.format_table()))  # its warnings name flags
        _write_results(args, result, inputs)
