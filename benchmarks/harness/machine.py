"""The record of the machine a study ran on: date, versions, the git commit, the GPU where there is one."""

from __future__ import annotations

import datetime
import importlib.util
import os
import platform
import subprocess

import torch
import transformers

from harness import ROOT


def optional_modules() -> dict[str, bool]:
    """Which of the package's dependencies this machine has (`optimum` probed by a submodule: the repository's
    own `optimum/commands/register` namespace directory would otherwise count)."""
    probes = {"optimum": "optimum.exporters", "onnxruntime": "onnxruntime.capi"}
    names = ("gguf", "optimum", "onnxruntime", "tqdm", "psutil", "matplotlib", "accelerate", "safetensors", "numpy")
    found = {}
    for name in names:
        try:
            found[name] = importlib.util.find_spec(probes.get(name, name)) is not None
        except (ImportError, ValueError):
            found[name] = False
    return found


def machine_info(device: str) -> dict:
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda_runtime": torch.version.cuda,
        "optional_modules": optional_modules(),
        "pytorch_cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "device": device,
    }
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_capability=f"{props.major}.{props.minor}",
            gpu_count=torch.cuda.device_count(),
            cudnn=torch.backends.cudnn.version(),
        )
    return info


def machine_line() -> str:
    """One line for a CPU study's record: architecture, torch threads, platform."""
    return f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), {platform.platform()}"
