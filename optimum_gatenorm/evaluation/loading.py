"""One loader for evaluation and benchmarking: PyTorch checkpoints (pruned or not) and ONNX exports.

A directory holding `model.onnx` runs on onnxruntime through `ORTModelForCausalLM`; anything else is what
`load_pruned` accepts (a checkpoint directory, a `.gguf` file, a built-in alias). Providers are named `"cpu"` and
`"cuda"` everywhere in this package (and `"auto"`, chosen by `devices.choose_provider` when a model loads);
`ort_provider` turns them into onnxruntime's names.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..checkpoints.modeling import load_pruned
from ..checkpoints.models import resolve_model
from ..compat import require_onnxruntime
from ..devices import AUTO, announce_device, choose_provider
from ..errors import InvalidConfigError
from ..validation import check_choice


if TYPE_CHECKING:
    import torch

__all__ = ["PROVIDERS", "is_onnx_dir", "load_causal_lm", "ort_provider"]

# Our provider names -> onnxruntime's execution providers.
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def ort_provider(provider: str) -> str:
    """onnxruntime's name for `provider` (`"cpu"`, `"cuda"` or `"auto"`; onnxruntime's own names are accepted as
    they are)."""
    if provider in PROVIDERS.values():
        return provider
    if provider == AUTO:
        provider = choose_provider(AUTO)[0]
    return PROVIDERS[check_choice("provider", provider, PROVIDERS)]


_ANNOUNCED: set[str] = set()  # `auto` is logged once per process and choice, not once per model loaded


def _resolve_provider(provider: str) -> str:
    if provider != AUTO:
        return provider
    chosen, reason = choose_provider(AUTO)
    if chosen not in _ANNOUNCED:
        _ANNOUNCED.add(chosen)
        announce_device(AUTO, chosen, flag="provider", reason=reason)
    return chosen


def is_onnx_dir(path: str | Path) -> bool:
    """Whether `path` is a directory holding an ONNX export (`model.onnx`)."""
    path = Path(path)
    return path.is_dir() and (path / "model.onnx").is_file()


def load_causal_lm(
    path: str | Path,
    *,
    provider: str = "cpu",
    dtype: "str | torch.dtype" = "auto",
    io_binding: bool | None = None,
):
    """Loads an ONNX export on onnxruntime, or a PyTorch checkpoint with its pruned structure.

    Args:
        path: An ONNX export directory, or anything `load_pruned` accepts.
        provider: `"cpu"` or `"cuda"`: onnxruntime's execution provider, or the PyTorch device; `"auto"`: CUDA
            when torch sees a GPU (and, for ONNX, onnxruntime-gpu is installed), else the CPU, logged with why.
        dtype: Torch dtype of a PyTorch model (`"auto"`: the checkpoint's); ignored for ONNX.
        io_binding: onnxruntime IO binding (default: on for CUDA, as `ORTModelForCausalLM` chooses).

    Returns:
        `(model, directory)`: the model and the directory it was loaded from (for its tokenizer).

    Raises:
        InvalidConfigError: If CUDA was asked for and onnxruntime fell back to the CPU.
    """
    if provider not in PROVIDERS.values():
        provider = _resolve_provider(check_choice("provider", provider, (AUTO, *PROVIDERS)))
    if is_onnx_dir(path):
        directory = Path(path)
        require_onnxruntime(f"running the ONNX export {directory}")
        from optimum.onnxruntime import ORTModelForCausalLM

        name = ort_provider(provider)
        kwargs = {} if io_binding is None else {"use_io_binding": io_binding}
        model = ORTModelForCausalLM.from_pretrained(directory, provider=name, **kwargs)
        if model.providers[0] != name:
            raise InvalidConfigError(
                f"onnxruntime fell back to {model.providers[0]} for {directory}: CUDA or cuDNN libraries are missing"
            )
        return model, directory
    check_choice("provider", provider, PROVIDERS)
    directory = resolve_model(path)
    model = load_pruned(directory, dtype=dtype)
    return (model.to("cuda") if provider == "cuda" else model), directory
