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
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..adapters import HeadDims, get_adapter
from ..checkpoints.handle import ModelHandle
from ..checkpoints.modeling import _copy_tokenizer, model_bytes
from ..checkpoints.models import model_inputs
from ..checkpoints.record import get_pruned_layers
from ..compat import require_onnx, require_onnxruntime
from ..devices import AUTO, announce_device, resolve_device
from ..errors import ExportError, InvalidConfigError, UnsupportedModelError
from ..outputs import atomic_output_dir, check_output_path, holds_outputs
from ..params import param
from ..progress import phase


if TYPE_CHECKING:
    import numpy as np
    from transformers import PretrainedConfig, PreTrainedModel

__all__ = ["DTYPES", "check_cuda_available", "check_onnx_exportable", "export_onnx", "onnx_dtype"]

logger = logging.getLogger(__name__)

# The export dtypes, spelled as `prune --dtype` and `eval --dtype` (and torch) spell them; the older `fp32` / `fp16`
# are still accepted (`DTYPE_ALIASES`).
DTYPES = ("float32", "float16")
DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16"}
# (atol, rtol) of the post-export check, per dtype: a logit may differ from PyTorch's by atol + rtol * |logit|.
# Measured on the real SmolLM2-135M pruned by 4, fp32 on the CPU: up to 1.4e-4 on logits up to |34.3|, float32
# summation-order drift through 30 layers (an absolute 1e-4 alone warned on README's first command). A graph that
# misses attention sublayers is off by far more (tests/exporters/test_onnx_export.py). fp16 rounds logits of |32| and more to
# steps of 3.1e-2 (1.6e-2 from |16|).
VALIDATION_TOLERANCE = {"float32": (1e-4, 1e-4), "float16": (1e-2, 1e-2)}
TASK = "text-generation-with-past"


def onnx_dtype(dtype: str) -> str:
    """`dtype` as `DTYPES` spell it: `"float32"` or `"float16"` (`"fp32"` / `"fp16"` accepted as aliases).

    Raises:
        InvalidConfigError: Any other dtype.
    """
    name = DTYPE_ALIASES.get(dtype, dtype)
    if name not in DTYPES:
        raise InvalidConfigError(
            f"{param('dtype', dtype)} is not an ONNX export dtype; use one of {', '.join(DTYPES)} (or the aliases "
            f"{', '.join(DTYPE_ALIASES)})"
        )
    return name


def check_onnx_exportable(config: "PretrainedConfig") -> None:
    """Refuses, up front, models that optimum's exporter or `ORTModelForCausalLM` would get wrong.

    optimum.onnxruntime's `ORTModelForCausalLM` reads `num_key_value_heads` and `head_dim` for some model types
    only (the adapter's `onnx.reads_kv_heads` and `onnx.reads_head_dim`); for the others it sizes the empty KV cache
    with `num_attention_heads` and `hidden_size // num_attention_heads`.

    Raises:
        UnsupportedModelError: With the reason, on one line.
    """
    adapter = get_adapter(config)
    dims = HeadDims.from_config(config)
    if dims.num_kv_heads != dims.num_heads and not adapter.onnx.reads_kv_heads:
        raise UnsupportedModelError(
            f"{config.model_type} with grouped-query attention ({dims.num_heads} query / {dims.num_kv_heads} key-value "
            "heads) cannot run on onnxruntime: optimum's ORTModelForCausalLM sizes its cache with "
            "num_attention_heads for this model type"
        )
    if dims.head_dim * dims.num_heads != config.hidden_size and not adapter.onnx.reads_head_dim:
        raise UnsupportedModelError(
            f"{config.model_type} with head_dim={dims.head_dim} != hidden_size / num_attention_heads cannot run on "
            "onnxruntime: optimum's ORTModelForCausalLM assumes they are equal"
        )


def check_cuda_available() -> None:
    """Fails with the missing piece when onnxruntime would silently fall back to CPU.

    Raises:
        InvalidConfigError: If onnxruntime has no CUDA provider, torch has no CUDA, or no GPU is visible.
    """
    require_onnxruntime("CUDA through onnxruntime")
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


@holds_outputs
def export_onnx(
    model_or_path: "PreTrainedModel | str | Path",
    output_dir: str | Path,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    overwrite: bool = False,
    opset: int | None = None,
    allow_pickle: bool = False,
    validate: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
) -> Path:
    """Exports a (pruned or unpruned) causal LM to ONNX with KV cache, for `ORTModelForCausalLM`.

    The output directory holds `model.onnx` (with external data past 2 GB), `config.json` (pruning record kept),
    `generation_config.json` and the tokenizer files. It is written to a temporary directory and renamed into
    place, so a failed export leaves nothing behind.

    Args:
        model_or_path: An in-memory model, or a checkpoint directory / `.gguf` file / built-in alias.
        output_dir: Target directory.
        device: `"cpu"`, `"cuda"` (export on the GPU, for onnxruntime's CUDAExecutionProvider), or `"auto"` (CUDA
            when torch sees a GPU, else the CPU, logged with the reason).
        dtype: `"float32"` or `"float16"` (float16 needs `device="cuda"`); `"fp32"` / `"fp16"` are aliases.
        overwrite: Replace an existing `output_dir` written by optimum-gatenorm.
        opset: ONNX opset (default: optimum's choice for the architecture).
        allow_pickle: Accept `pytorch_model.bin` weights when loading from a path.
        validate: Compare the graph's logits with PyTorch's on a short random prompt after the export, on
            onnxruntime, and log the largest difference; a logit off by more than `atol + rtol * |PyTorch logit|`
            is a warning.
        atol: Absolute part of that tolerance (default: 1e-4 for float32, 1e-2 for float16).
        rtol: Relative part of that tolerance (default: 1e-4 for float32, 1e-2 for float16).

    Raises:
        InvalidConfigError: Bad device/dtype, or CUDA asked for but unavailable.
        UnsupportedModelError: An architecture onnxruntime cannot run (checked before any work).
        OutputExistsError: `output_dir` exists and `overwrite` is false.
    """
    import torch

    require_onnx("the ONNX export")
    requested = device
    if device == AUTO:
        device = resolve_device(AUTO, announce=False)
    if device not in ("cpu", "cuda"):
        raise InvalidConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    dtype = onnx_dtype(dtype)
    if dtype == "float16" and device != "cuda":
        raise InvalidConfigError(
            f"float16 export needs {param('device', 'cuda')} (tracing a float16 model on the CPU fails)"
        )
    inputs = model_inputs(model_or_path)
    check_output_path(output_dir, overwrite, directory=True, inputs=inputs)
    if device == "cuda":
        check_cuda_available()

    handle = ModelHandle.open(model_or_path, allow_pickle=allow_pickle)
    source = handle.source
    if source is not None:
        check_onnx_exportable(handle.config)  # before loading
    model = handle.load(dtype=getattr(torch, dtype))
    if model.dtype != getattr(torch, dtype):
        raise InvalidConfigError(f"the model is {model.dtype} but dtype={dtype!r}; cast it first")
    announce_device(requested, device)
    inputs.append(("model", source or getattr(model, "name_or_path", None) or None))
    with atomic_output_dir(output_dir, overwrite=overwrite, inputs=inputs, expected_bytes=model_bytes(model)) as tmp:
        export_onnx_into(
            model,
            tmp,
            device=device,
            dtype=dtype,
            opset=opset,
            validate=validate,
            atol=atol,
            rtol=rtol,
            tokenizer_from=source,
        )
    logger.debug("Exported to %s", output_dir)
    return Path(output_dir)


# Messages of the exporter that we know to be benign for our graphs, filtered during the export only. Each is
# matched exactly (never a blanket silence), and the graph is checked against PyTorch afterwards (`validate`).
_BENIGN_WARNINGS = (
    # torch.jit tracing: the Python branches it names (cache initialised, padding length, is_causal) are taken
    # once at trace time with optimum's dummy shapes; prefill and decode parity with PyTorch is tested.
    (".*might cause the trace to be incorrect.*", "TracerWarning"),
    # aten::index with non-negative indices only (cache positions, gathered layer outputs).
    (".*Exporting aten::index operator of advanced indexing.*", "UserWarning"),
)
_BENIGN_LOG_PREFIXES = (
    # Tied embedding / LM head (SmolLM2): optimum cannot deduplicate the pair (the LM head became a MatMul input)
    # or leaves an already-tied pair as it is. Only the file size is affected; the logit check below still runs.
    "The groups of weights",
    "Found different candidate ONNX initializers",
)


_TIED_DETAIL = re.compile(r"^\t[\w.]+: (\{.*\}|set\(\))( --> ignored .*)?$")


class _BenignLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.getMessage())
        # The tied-weights message goes on in one record per tensor: "\tlm_head.weight: {'onnx::MatMul_8649'}".
        return not (message.startswith(_BENIGN_LOG_PREFIXES) or _TIED_DETAIL.match(message))


def export_onnx_into(
    model: "PreTrainedModel",
    directory: Path,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    opset: int | None = None,
    validate: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
    tokenizer_from: str | Path | None = None,
    progress: bool = False,
) -> float | None:
    """`export_onnx` without the atomic rename: exports `model` into `directory` (created if missing).

    The export and the check each announce themselves with a start line and a "done in N s" line: on stderr with
    `progress`, else in the INFO log (`progress.phase`).

    Returns:
        The largest |logit| difference between onnxruntime and PyTorch when `validate` (else `None`).

    Raises:
        UnsupportedModelError: An architecture onnxruntime cannot run.
        ExportError: The exporter failed.
    """
    import warnings

    import torch

    require_onnx("the ONNX export")
    from optimum.exporters.onnx import onnx_export_from_model

    check_onnx_exportable(model.config)
    model.eval()
    if device == "cuda":
        model.to("cuda")
    dtype = onnx_dtype(dtype)
    onnx_config = _onnx_config(model)
    with phase(f"Exporting {type(model).__name__} to ONNX ({device}, {dtype})", progress, logger):
        log_filter = _BenignLogFilter()
        optimum_logger = logging.getLogger("optimum")
        optimum_logger.addFilter(log_filter)
        for handler in optimum_logger.handlers:
            handler.addFilter(log_filter)
        try:
            with warnings.catch_warnings():
                for message, category in _BENIGN_WARNINGS:
                    cls = torch.jit.TracerWarning if category == "TracerWarning" else UserWarning
                    warnings.filterwarnings("ignore", message=message, category=cls)
                onnx_export_from_model(
                    model,
                    directory,
                    task=TASK,
                    opset=opset,
                    device=device,
                    do_validation=False,  # we validate logits ourselves below, with a one-line result
                    custom_onnx_configs={"model": onnx_config},
                )
        except (ValueError, RuntimeError, OSError) as error:
            cause = str(error.__cause__ or error).strip().splitlines()
            raise ExportError(
                f"ONNX export failed, nothing was written: {cause[0] if cause else type(error).__name__}"
            ) from error
        finally:
            optimum_logger.removeFilter(log_filter)
            for handler in optimum_logger.handlers:
                handler.removeFilter(log_filter)
    if not any(directory.glob("tokenizer*")):
        origin = tokenizer_from or getattr(model, "name_or_path", None)
        if origin and Path(origin).is_dir():
            _copy_tokenizer(Path(origin), directory)
    if not validate:
        return None
    with phase("Checking the ONNX graph's logits against PyTorch's", progress, logger):
        return check_onnx_logits(model, directory / "model.onnx", device=device, dtype=dtype, atol=atol, rtol=rtol)


def check_onnx_logits(
    model: "PreTrainedModel",
    onnx_path: Path,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    atol: float | None = None,
    rtol: float | None = None,
) -> float | None:
    """Runs `onnx_path` on onnxruntime and `model` in PyTorch on one random 16-token prompt and logs the result: a
    warning if a logit differs by more than `atol + rtol * |PyTorch logit|` (defaults per dtype:
    `VALIDATION_TOLERANCE`), else one info line.

    Returns:
        The largest |logit| difference, or `None` where onnxruntime (or its CUDA provider) is not installed.
    """
    import numpy as np

    default_atol, default_rtol = VALIDATION_TOLERANCE[onnx_dtype(dtype)]
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    compared = _validate_logits(model, onnx_path, device=device)
    if compared is None:
        return None
    logits, reference = compared
    difference = np.abs(logits - reference)
    max_diff = float(difference.max())
    tolerance = f"tolerance {atol:.0e} + {rtol:.0e} x |logit|, largest |logit| {np.abs(reference).max():.3g}"
    if (difference > atol + rtol * np.abs(reference)).any():
        logger.warning(
            "warning: the ONNX graph's logits differ from PyTorch's by up to %.2g (%s) on a random 16-token prompt; "
            "check the export with `optimum-cli gatenorm eval` before use",
            max_diff,
            tolerance,
        )
    else:
        logger.info(
            "ONNX check: logits match PyTorch within %.2g on a random 16-token prompt (%s)", max_diff, tolerance
        )
    return max_diff


def _validate_logits(
    model: "PreTrainedModel", onnx_path: Path, *, device: str, length: int = 16
) -> tuple[np.ndarray, np.ndarray] | None:
    """Logits of onnxruntime (empty KV cache) and of PyTorch on one random prompt, as float64 arrays in that order;
    `None` if onnxruntime cannot run here."""
    import numpy as np
    import torch

    try:
        import onnxruntime
    except ImportError:
        logger.info("ONNX check skipped: onnxruntime is not installed")
        return None
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            logger.info("ONNX check skipped: the installed onnxruntime has no CUDAExecutionProvider")
            return None
        providers.insert(0, "CUDAExecutionProvider")
    session = onnxruntime.InferenceSession(str(onnx_path), providers=providers)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=generator)
    float_type = np.float16 if model.dtype == torch.float16 else np.float32
    feed = {}
    for item in session.get_inputs():
        if item.name == "input_ids":
            feed[item.name] = ids.numpy()
        elif item.name == "attention_mask":
            feed[item.name] = np.ones((1, length), dtype=np.int64)
        elif item.name == "position_ids":
            feed[item.name] = np.arange(length, dtype=np.int64)[None]
        elif item.name.startswith("past_key_values"):
            shape = [1 if i == 0 else (d if isinstance(d, int) else 0) for i, d in enumerate(item.shape)]
            feed[item.name] = np.zeros(shape, dtype=float_type)
        else:
            logger.info("ONNX check skipped: unexpected graph input %s", item.name)
            return None
    logits = session.run(["logits"], feed)[0].astype(np.float64)
    with torch.no_grad():
        reference = model(ids.to(model.device)).logits.double().cpu().numpy()
    return logits, reference
