"""Quantized GGUF through llama.cpp's own quantizer: what llama.cpp users serve (Q8_0, Q4_K_M, ...).

`export_gguf(..., quantize="q4_k_m")` writes the f16 (or f32) GGUF first, then runs `llama_model_quantize`, the
function behind llama.cpp's `llama-quantize` tool, as llama-cpp-python exposes it (the `serve` extra). Its own
choices stay: the k-quant mixes (`_m` / `_s`: which tensors get more bits), the fallback to a simpler type for a
tensor whose rows are not a multiple of the block size, and norms kept in f32. The pruned layouts are llama.cpp's
own `deci` layers (attention-free: no attention tensors at all; linear attention: `attn_norm` + `attn_output`), which
its quantizer handles as any other tensor list; tests/exporters/test_serving.py quantizes and runs each.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import ExportError, InvalidConfigError, MissingExtraError
from ..params import param


__all__ = ["QUANTIZE_TYPES", "check_quantize", "quantize_gguf", "require_llama_cpp"]

logger = logging.getLogger(__name__)

# `--quantize` name -> llama.cpp's file type (`LLAMA_FTYPE_MOSTLY_<NAME>`), the names `llama-quantize` takes. The
# i-quants (IQ*) are left out: they need an importance matrix computed on data.
QUANTIZE_TYPES = {
    "q8_0": "Q8_0",
    "q6_k": "Q6_K",
    "q5_k_m": "Q5_K_M",
    "q5_k_s": "Q5_K_S",
    "q5_0": "Q5_0",
    "q4_k_m": "Q4_K_M",
    "q4_k_s": "Q4_K_S",
    "q4_0": "Q4_0",
    "q3_k_l": "Q3_K_L",
    "q3_k_m": "Q3_K_M",
    "q3_k_s": "Q3_K_S",
    "q2_k": "Q2_K",
}


def check_quantize(quantize: str | None, gguf_type: str) -> None:
    """Refuses an unknown quantization type, or one asked of an already quantized export, before any work.

    Raises:
        InvalidConfigError: With the valid names.
    """
    if quantize is None:
        return
    if quantize not in QUANTIZE_TYPES:
        raise InvalidConfigError(
            f"{param('quantize', quantize)} is not a llama.cpp quantization type this export runs; choose one of "
            f"{', '.join(QUANTIZE_TYPES)}"
        )
    if gguf_type not in ("f16", "f32"):
        raise InvalidConfigError(
            f"{param('quantize', quantize)} quantizes the f16 or f32 export, not {param('gguf_type', gguf_type)}; "
            f"drop {param('gguf_type', gguf_type)}"
        )


def require_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise MissingExtraError(
            f"{param('quantize', '...')} runs llama.cpp's quantizer from llama-cpp-python: "
            "pip install 'optimum-gatenorm[serve]' (it builds llama.cpp, a few minutes)"
        ) from None
    return llama_cpp


def quantize_gguf(input_file: str | Path, output_file: str | Path, quantize: str, *, threads: int | None = None):
    """Quantizes a GGUF file with llama.cpp's `llama_model_quantize` into `output_file` (written as it is; the caller
    makes it atomic).

    Args:
        input_file: An f16 or f32 GGUF file.
        output_file: Where the quantized file goes.
        quantize: A key of `QUANTIZE_TYPES`.
        threads: Quantizer threads (default: every core).

    Raises:
        MissingExtraError: llama-cpp-python is not installed.
        ExportError: llama.cpp's quantizer reported a failure.
    """
    llama_cpp = require_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{QUANTIZE_TYPES[quantize]}")
    params.nthread = threads or os.cpu_count() or 1
    # llama.cpp writes a line per tensor, through llama-cpp-python's logger and straight to the process's stdout /
    # stderr: both are kept aside, summarised on success and quoted on failure.
    engine_logger = logging.getLogger("llama-cpp-python")
    level = engine_logger.level
    engine_logger.setLevel(logging.ERROR)
    try:
        with _native_output() as output:
            status = llama_cpp.llama_model_quantize(
                str(input_file).encode(), str(output_file).encode(), ctypes.byref(params)
            )
    finally:
        engine_logger.setLevel(level)
    lines = [line.strip() for line in output.text.splitlines() if line.strip()]
    if status != 0:
        said = next((line for line in reversed(lines) if "error" in line.lower() or "failed" in line.lower()), None)
        raise ExportError(
            f"llama.cpp's quantizer failed on {input_file} ({quantize}, status {status})"
            + (f": {said}" if said else "")
        )
    fallback = next((m for m in map(_FALLBACK.search, lines) if m), None)
    logger.info(
        "Quantized to %s with llama.cpp's quantizer (llama-cpp-python %s)%s",
        quantize,
        llama_cpp.__version__,
        f"; {fallback[1]} of {fallback[2]} tensors took a simpler type (rows not a multiple of the block size)"
        if fallback
        else "",
    )


_FALLBACK = re.compile(r"(\d+) of (\d+) tensor\(s\) required fallback quantization")


class _Captured:
    text = ""


@contextmanager
def _native_output() -> Iterator[_Captured]:
    """Sends what native code writes to file descriptors 1 and 2 into a temporary file, for the duration."""
    captured = _Captured()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield captured
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", errors="replace")
