"""Where a model runs: `--device auto` and `--provider auto`, the default of every command that runs a model.

`auto` is the GPU when there is one and the CPU otherwise, and the log says which and why: on a GPU box the
self-sampled calibration text and the replacement fit of an 8B model take seconds there instead of hours on the CPU.
An explicit name (`cpu`, `cuda`, `cuda:1`, ...) is checked against this machine before any heavy work.
"""

from __future__ import annotations

import logging

from .errors import InvalidConfigError
from .params import param


__all__ = ["AUTO", "check_device", "resolve_device", "resolve_provider"]

logger = logging.getLogger(__name__)

AUTO = "auto"


def check_device(name: str) -> None:
    """Refuses a device that torch cannot parse or that this machine lacks, before any heavy work.

    Raises:
        InvalidConfigError: With the reason and the fix.
    """
    import torch

    try:
        torch.empty(0, device=name)
    except Exception as error:  # RuntimeError for a bad name, AssertionError for CUDA missing from the build
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InvalidConfigError(
            f"{param('device', name)} is not usable here ({reason}); use {param('device', 'cpu')}, or e.g. "
            f"{param('device', 'cuda')} on a machine with a GPU"
        ) from None


def _no_cuda_reason() -> str | None:
    """Why torch cannot use a GPU here, or None when it can."""
    import torch

    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return f"this torch build ({torch.__version__}) has no CUDA support"
    if not torch.cuda.is_available():
        return "no CUDA device is visible"
    return None


def resolve_device(name: str = AUTO, *, flag: str = "device") -> str:
    """The torch device to run on: `auto` becomes `cuda` when torch sees a GPU, else `cpu` (logged with the reason);
    any other name is checked (`check_device`) and returned as given.

    Args:
        name: `auto`, or a torch device name.
        flag: The option named in the log line (`device`, `provider`).

    Raises:
        InvalidConfigError: For a device this machine lacks or torch cannot parse.
    """
    if str(name) != AUTO:
        check_device(str(name))
        return str(name)
    reason = _no_cuda_reason()
    if reason is None:
        import torch

        logger.info("%s: cuda (found %s)", param(flag, AUTO), torch.cuda.get_device_name(0))
        return "cuda"
    logger.info("%s: cpu (%s)", param(flag, AUTO), reason)
    return "cpu"


def resolve_provider(name: str = AUTO) -> str:
    """The onnxruntime execution provider, or PyTorch device, of `eval` and `benchmark`: `cpu` or `cuda`.

    `auto` is `cuda` when torch sees a GPU and the installed onnxruntime (if any) has its CUDA execution provider
    (`onnxruntime-gpu`), so that an ONNX model never silently falls back; else `cpu`, logged with the reason.
    """
    if name != AUTO:
        return name
    reason = _no_cuda_reason()
    if reason is None:
        try:
            import onnxruntime
        except ImportError:
            onnxruntime = None
        if onnxruntime is not None and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            reason = (
                f"the installed onnxruntime {onnxruntime.__version__} has no CUDA provider: install onnxruntime-gpu"
            )
    if reason is None:
        return resolve_device(AUTO, flag="provider")
    logger.info("%s: cpu (%s)", param("provider", AUTO), reason)
    return "cpu"
