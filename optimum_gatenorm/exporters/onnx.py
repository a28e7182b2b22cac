"""ONNX export of pruned models through optimum's exporter, for `ORTModelForCausalLM`.

The export is optimum's own (`onnx_export_from_model`, task `text-generation-with-past`) with one change: the
ONNX config's normalized layer count is the number of *kept* attention sublayers. The graph then has
`past_key_values.{0..n_kept-1}` inputs and `present.*` outputs for exactly the kept layers, in order, which is how
the pruned PyTorch model numbers its cache. `ORTModelForCausalLM` takes the KV names from the graph and pairs
present/past by position, so it loads and runs the result with no extra arguments.

Never re-export a saved pruned checkpoint with `optimum-cli export onnx` / `main_export`: they rebuild the ONNX
config from `num_hidden_layers`. Without `optimum_gatenorm` imported the load fails (see `modeling`); use
`export_onnx` / `optimum-cli gatenorm export`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..adapters import HeadDims, get_adapter
from ..errors import ExportError, InvalidConfigError, UnsupportedModelError
from ..modeling import get_pruned_layers
from ..utils import atomic_output_dir, check_output_path


if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

__all__ = ["check_cuda_available", "check_onnx_exportable", "export_onnx"]

logger = logging.getLogger(__name__)

DTYPES = {"fp32": "float32", "fp16": "float16"}
TASK = "text-generation-with-past"
# optimum.onnxruntime.ORTModelForCausalLM only reads num_key_value_heads for these model types (else it sizes
# the empty KV cache with num_attention_heads); and it takes head_dim as hidden_size // num_attention_heads.
_ORT_READS_KV_HEADS = {"llama", "mistral", "qwen2"}


def check_onnx_exportable(config: "PretrainedConfig") -> None:
    """Refuses, up front, models that optimum's exporter or `ORTModelForCausalLM` would get wrong.

    Raises:
        UnsupportedModelError: With the reason, on one line.
    """
    get_adapter(config)
    dims = HeadDims.from_config(config)
    if dims.num_kv_heads != dims.num_heads and config.model_type not in _ORT_READS_KV_HEADS:
        raise UnsupportedModelError(
            f"{config.model_type} with grouped-query attention ({dims.num_heads} query / {dims.num_kv_heads} key-value "
            "heads) cannot run on onnxruntime: optimum's ORTModelForCausalLM sizes its cache with "
            "num_attention_heads for this model type"
        )
    if dims.head_dim * dims.num_heads != config.hidden_size:
        raise UnsupportedModelError(
            f"{config.model_type} with head_dim={dims.head_dim} != hidden_size / num_attention_heads cannot run on "
            "onnxruntime: optimum's ORTModelForCausalLM assumes they are equal"
        )


def check_cuda_available() -> None:
    """Fails with the missing piece when onnxruntime would silently fall back to CPU.

    Raises:
        InvalidConfigError: If onnxruntime has no CUDA provider, torch has no CUDA, or no GPU is visible.
    """
    import onnxruntime
    import torch

    providers = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        raise InvalidConfigError(
            f"CUDA was asked for but the installed onnxruntime {onnxruntime.__version__} has no CUDAExecutionProvider "
            f"(available: {', '.join(providers)}); install the GPU build: pip uninstall -y onnxruntime && "
            'pip install -e ".[onnxruntime-gpu]"'
        )
    if torch.version.cuda is None:
        raise InvalidConfigError(
            f"CUDA was asked for but torch {torch.__version__} is a CPU-only build; install a CUDA build of torch"
        )
    if not torch.cuda.is_available():
        raise InvalidConfigError(
            "CUDA was asked for but torch sees no GPU (check the driver and CUDA_VISIBLE_DEVICES)"
        )


def _onnx_config(model: "PreTrainedModel"):
    from optimum.exporters.tasks import TasksManager

    constructor = TasksManager.get_exporter_config_constructor(
        exporter="onnx", model=model, task=TASK, library_name="transformers"
    )
    onnx_config = constructor(model.config, use_past=True, use_past_in_inputs=True)
    kept = model.config.num_hidden_layers - len(get_pruned_layers(model.config))
    # The one change to optimum's config: KV inputs/outputs for the kept attention sublayers only.
    onnx_config._normalized_config.num_layers = kept
    return onnx_config


def export_onnx(
    model_or_path: "PreTrainedModel | str | Path",
    output_dir: str | Path,
    *,
    device: str = "cpu",
    dtype: str = "fp32",
    overwrite: bool = False,
    opset: int | None = None,
    allow_pickle: bool = False,
    validate: bool = True,
    atol: float = 1e-4,
) -> Path:
    """Exports a (pruned or unpruned) causal LM to ONNX with KV cache, for `ORTModelForCausalLM`.

    The output directory holds `model.onnx` (with external data past 2 GB), `config.json` (pruning record kept),
    `generation_config.json` and the tokenizer files. It is written to a temporary directory and renamed into
    place, so a failed export leaves nothing behind.

    Args:
        model_or_path: An in-memory model, or a checkpoint directory / `.gguf` file / built-in alias.
        output_dir: Target directory.
        device: `"cpu"` or `"cuda"` (export on the GPU, for onnxruntime's CUDAExecutionProvider).
        dtype: `"fp32"` or `"fp16"` (fp16 needs `device="cuda"`).
        overwrite: Replace an existing `output_dir`.
        opset: ONNX opset (default: optimum's choice for the architecture).
        allow_pickle: Accept `pytorch_model.bin` weights when loading from a path.
        validate: Let optimum compare ONNX Runtime and PyTorch outputs after the export (a mismatch is a warning).
        atol: Tolerance of that comparison (optimum's default of 1e-5 flags float32 summation-order noise in the
            KV outputs of deep models; our parity tests hold logits to 1e-4).

    Raises:
        InvalidConfigError: Bad device/dtype, or CUDA asked for but unavailable.
        UnsupportedModelError: An architecture onnxruntime cannot run (checked before any work).
        OutputExistsError: `output_dir` exists and `overwrite` is false.
    """
    import torch
    from optimum.exporters.onnx import onnx_export_from_model

    from ..modeling import load_pruned
    from ..models import resolve_model

    if device not in ("cpu", "cuda"):
        raise InvalidConfigError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if dtype not in DTYPES:
        raise InvalidConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "fp16" and device != "cuda":
        raise InvalidConfigError("fp16 export needs --device cuda (tracing an fp16 model on the CPU fails)")
    check_output_path(output_dir, overwrite)
    if device == "cuda":
        check_cuda_available()

    source = None
    if isinstance(model_or_path, (str, Path)):
        source = resolve_model(model_or_path)
        model = load_pruned(source, dtype=getattr(torch, DTYPES[dtype]), allow_pickle=allow_pickle)
    else:
        model = model_or_path
        if model.dtype != getattr(torch, DTYPES[dtype]):
            raise InvalidConfigError(f"the model is {model.dtype} but dtype={dtype!r}; cast it first")
    check_onnx_exportable(model.config)
    model.eval()
    if device == "cuda":
        model.to("cuda")

    onnx_config = _onnx_config(model)
    with atomic_output_dir(output_dir, overwrite=overwrite) as tmp:
        logger.info("Exporting %s to ONNX (%s, %s)", type(model).__name__, device, dtype)
        try:
            onnx_export_from_model(
                model,
                tmp,
                task=TASK,
                opset=opset,
                device=device,
                do_validation=validate,
                atol=atol,
                custom_onnx_configs={"model": onnx_config},
            )
        except (ValueError, RuntimeError, OSError) as error:
            cause = str(error.__cause__ or error).strip().splitlines()
            raise ExportError(
                f"ONNX export failed, nothing was written: {cause[0] if cause else type(error).__name__}"
            ) from error
        if not any(tmp.glob("tokenizer*")):
            from ..modeling import _copy_tokenizer

            origin = source or getattr(model, "name_or_path", None)
            if origin and Path(origin).is_dir():
                _copy_tokenizer(Path(origin), tmp)
    logger.debug("Exported to %s", output_dir)
    return Path(output_dir)
