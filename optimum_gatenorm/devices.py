"""Where a model runs: `--device auto` and `--provider auto`, the default of every command that runs a model.

`auto` is the GPU when there is one and the CPU otherwise, and the log says which and why: on a GPU box the
self-sampled calibration text and the replacement fit of a large model should not run on its CPU by default.
An explicit name (`cpu`, `cuda`, `cuda:1`, ...) is checked against this machine before any heavy work.
"""

from __future__ import annotations

import logging

from .errors import InvalidConfigError
from .params import param


__all__ = ["AUTO", "announce_device", "check_device", "choose_provider", "resolve_device"]

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


def resolve_device(name: str = AUTO, *, flag: str = "device", announce: bool = True) -> str:
    """The torch device to run on: `auto` becomes `cuda` when torch sees a GPU, else `cpu` (logged with the reason);
    any other name is checked (`check_device`) and returned as given.

    Args:
        name: `auto`, or a torch device name.
        flag: The option named in the log line (`device`, `provider`).
        announce: Log the choice of `auto` now. A caller with checks still to make resolves with `False` first and
            calls `announce_device` when the work starts, so that a refusal stays the one line the CLI prints.

    Raises:
        InvalidConfigError: For a device this machine lacks or torch cannot parse.
    """
    if str(name) != AUTO:
        check_device(str(name))
        return str(name)
    device = "cpu" if _no_cuda_reason() is not None else "cuda"
    if announce:
        announce_device(AUTO, device, flag=flag)
    return device


def announce_device(requested: str, device: str, *, flag: str = "device", reason: str | None = None) -> None:
    """Logs which device `auto` chose and why (nothing for an explicit device: the user named it)."""
    if str(requested) != AUTO:
        return
    if device == "cuda":
        import torch

        reason = reason or f"found {torch.cuda.get_device_name(0)}"
    logger.info("%s: %s (%s)", param(flag, AUTO), device, reason or _no_cuda_reason())


def choose_provider(name: str = AUTO) -> tuple[str, str | None]:
    """`(provider, reason)`: `auto` is `cuda` when torch sees a GPU and the installed onnxruntime (if any) has its
    CUDA execution provider (`onnxruntime-gpu`), so that an ONNX model never silently falls back; else `cpu`, with
    the reason. Nothing is logged (`announce_device` does, when the work starts)."""
    if name != AUTO:
        return name, None
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
    return ("cuda", None) if reason is None else ("cpu", reason)
