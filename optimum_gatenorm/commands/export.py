"""`optimum-cli gatenorm export`: a checkpoint for ONNX Runtime, llama.cpp or Nemotron-NAS engines."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .arguments import (
    EXPORT_FORMATS,
    GGUF_TYPES,
    NEMOTRON_NAS_ENGINES,
    QUANTIZE_TYPES,
    _add_model_args,
    _export_dtype,
    _non_negative_int,
    _setup,
)
from .base import _LeafCommand


if TYPE_CHECKING:
    from argparse import ArgumentParser


class ExportCommand(_LeafCommand):
    @staticmethod
    def parse_args(parser: "ArgumentParser"):
        _setup(
            parser,
            "Export a pruned (or unpruned, as the baseline) checkpoint for an inference engine.\n"
            "  onnx (default): ONNX with KV cache through optimum's exporter, for ORTModelForCausalLM; KV inputs and\n"
            "    attention only for the kept layers. Do not use `optimum-cli export onnx` on a pruned checkpoint.\n"
            "  gguf: one GGUF file for llama.cpp (llama-cli, llama-server, llama-cpp-python); a pruned model is\n"
            "    llama.cpp's `deci` architecture with zero heads in the removed layers (Llama family only); a\n"
            "    --replacement linear layer is deci's linear-attention layer (no KV cache); mean is refused.\n"
            "  nemotron-nas: a DeciLMForCausalLM checkpoint (block_configs, attention.no_op for removed sublayers)\n"
            "    for vLLM, TensorRT-LLM and SGLang (Llama family only; FFN width a multiple of 256). --engine vllm\n"
            "    (default) refuses a replacement (prune's default linear, or mean): vLLM ignores replace_with_linear;\n"
            "    --engine tensorrt-llm writes a linear one as replace_with_linear (self_attn.linear_attn), which\n"
            "    TensorRT-LLM's PyTorch backend and llama.cpp's converter read.",
        )
        _add_model_args(parser)
        parser.add_argument(
            "--output", "-o", required=True, help="output directory (onnx, nemotron-nas) or .gguf file (gguf)"
        )
        parser.add_argument(
            "--format",
            choices=EXPORT_FORMATS,
            default="onnx",
            help="target format (default: onnx)",
        )
        parser.add_argument(
            "--engine",
            choices=NEMOTRON_NAS_ENGINES,
            help="--format nemotron-nas: the engine that reads it (default: vllm); tensorrt-llm keeps a linear "
            "replacement as replace_with_linear",
        )
        parser.add_argument(
            "--gguf-type",
            choices=GGUF_TYPES,
            default="f16",
            help="--format gguf: weight matrices in f32, f16 or q8_0; norms stay f32 (default: f16)",
        )
        parser.add_argument(
            "--quantize",
            choices=QUANTIZE_TYPES,
            metavar="TYPE",
            help="--format gguf: quantize with llama.cpp's own quantizer (llama-cpp-python, the serve extra) after "
            f"writing --gguf-type f16 (or f32): {', '.join(QUANTIZE_TYPES)}",
        )
        parser.add_argument(
            "--tokenizer",
            metavar="DIR",
            help="--format gguf: the directory of the model's tokenizer, when --model's own has none that loads "
            "(default: --model's)",
        )
        parser.add_argument(
            "--gguf-pre-tokenizer",
            metavar="NAME",
            help="--format gguf: llama.cpp pre-tokenizer name (tokenizer.ggml.pre) for a tokenizer llama.cpp's hash "
            "table does not know, e.g. llama-bpe, gpt-2, default",
        )
        parser.add_argument(
            "--device",
            choices=("auto", "cpu", "cuda"),
            default="auto",
            help="--format onnx: export for onnxruntime's CPU or CUDA execution provider (default: %(default)s; "
            "auto: cuda when torch sees a GPU, else cpu, logged with the reason)",
        )
        parser.add_argument(
            "--dtype",
            type=_export_dtype,
            choices=("float32", "float16"),  # exporters.onnx.DTYPES, checked by tests/commands/test_usage_doc.py
            default="float32",
            help="--format onnx: weights dtype (default: %(default)s); float16 needs --device cuda. fp32 and fp16, the "
            "earlier spellings, are accepted too",
        )
        parser.add_argument("--opset", type=_non_negative_int, help="ONNX opset (default: optimum's choice)")
        parser.add_argument(
            "--no-validate",
            action="store_true",
            help="--format onnx: skip the check of the graph's logits against PyTorch's on a short random prompt",
        )
        parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")

    def execute(self):
        from optimum_gatenorm.errors import InvalidConfigError

        args = self.args
        if args.engine is not None and args.format != "nemotron-nas":
            raise InvalidConfigError(f"--engine applies to --format nemotron-nas, not --format {args.format}")
        if args.quantize is not None and args.format != "gguf":
            raise InvalidConfigError(f"--quantize applies to --format gguf, not --format {args.format}")
        if args.format == "gguf":
            from optimum_gatenorm.exporters.gguf import export_gguf

            path = export_gguf(
                args.model,
                args.output,
                gguf_type=args.gguf_type,
                overwrite=args.overwrite,
                allow_pickle=args.allow_pickle,
                pre_tokenizer=args.gguf_pre_tokenizer,
                tokenizer_from=args.tokenizer,
                quantize=args.quantize,
            )
            print(f"Exported to {path}; run it with llama-cli -m {str(path)!r} or llama_cpp.Llama(model_path=...)")
            return
        if args.format == "nemotron-nas":
            from optimum_gatenorm.exporters.nemotron_nas import export_nemotron_nas

            path = export_nemotron_nas(
                args.model,
                args.output,
                overwrite=args.overwrite,
                allow_pickle=args.allow_pickle,
                engine=args.engine or "vllm",
            )
            serve = "trtllm-serve" if args.engine == "tensorrt-llm" else "vllm serve"
            print(f"Exported to {path}; serve it with e.g. {serve} {str(path)!r} (docs/serving.md)")
            return
        from optimum_gatenorm.exporters.onnx import export_onnx

        path = export_onnx(
            args.model,
            args.output,
            device=args.device,
            dtype=args.dtype,
            overwrite=args.overwrite,
            opset=args.opset,
            allow_pickle=args.allow_pickle,
            validate=not args.no_validate,
        )
        print(f"Exported to {path}; load it with ORTModelForCausalLM.from_pretrained({str(path)!r})")
