"""Pruning a checkpoint larger than memory: file to file, one tensor at a time, never building the model.

A data-free prune (a weight-level criterion such as `gate_norm`, plain removal) needs no forward pass. Its scores
come from each layer's query and key weights, read one layer at a time (`checkpoints.tensors`), and the pruned
checkpoint is the original's safetensors shards without the removed sublayers' tensors: each kept tensor's bytes
are copied as stored, in chunks of `CHUNK_BYTES`, plus the pruning record in `config.json` and the "tombstone"
tensor (`checkpoints.modeling`). The result is the checkpoint `save_pruned` writes for the same layers, tensor for
tensor (same names, dtypes and values), and the process holds one chunk and one layer's Q and K, whatever the
model's size; a 70B checkpoint prunes at the speed of its disk.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ..adapters import get_adapter
from ..compat import write_portable_config
from ..errors import InvalidConfigError
from ..params import param
from .modeling import next_record
from .tensors import SAFETENSORS_FILE, SAFETENSORS_INDEX, read_safetensors_header


if TYPE_CHECKING:
    from .tensors import Checkpoint

__all__ = [
    "CHUNK_BYTES",
    "available_memory",
    "checkpoint_bytes",
    "checkpoint_parameters",
    "format_bytes",
    "parse_size",
    "write_streamed",
]

logger = logging.getLogger(__name__)

CHUNK_BYTES = 64 << 20
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40})


def parse_size(text: str | int, name: str = "max_memory") -> int:
    """Bytes from `"24GB"`, `"512MiB"`, `"1.5TB"` or a plain number of bytes (decimal units, as accelerate's
    `max_memory`; `KiB`/`MiB`/`GiB`/`TiB` binary).

    Raises:
        InvalidConfigError: For anything else, or a size below one byte.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        raw = str(text).strip().upper().replace(" ", "")
        digits = raw.rstrip("KMGTIB")
        unit = raw[len(digits) :]
        try:
            value = int(float(digits) * _UNITS[unit]) if math.isfinite(float(digits)) else 0
        except (ValueError, KeyError):
            value = 0
    if value < 1:
        raise InvalidConfigError(f"{param(name, text)} is not a size; give bytes or a size such as 24GB or 512MiB")
    return value


def format_bytes(size: int) -> str:
    """`"4.4 GB"`, `"538 MB"`: decimal units, as `parse_size` reads them."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size:,} bytes"


def available_memory() -> int | None:
    """The host memory available to a new allocation (`MemAvailable` of `/proc/meminfo`), or `None` where the system
    does not say (not Linux)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def checkpoint_bytes(checkpoint: "Checkpoint") -> int:
    """Bytes of the checkpoint's weight files: about what loading the model takes, in its own dtype."""
    return sum(path.stat().st_size for path in set(checkpoint.weight_map.values()))


def _tensor_entries(checkpoint: "Checkpoint") -> dict[Path, tuple[int, dict]]:
    """File -> (bytes before its data, its tensors' header entries), from the headers alone.

    Raises:
        InvalidConfigError: For pickled weights (`pytorch_model.bin`).
    """
    if checkpoint.format != "safetensors":
        raise InvalidConfigError(
            f"{checkpoint.path} stores pickled weights; pruning without loading reads safetensors only: convert it "
            f"(save_pretrained writes safetensors), or prune it loaded (a larger {param('max_memory')})"
        )
    entries = {}
    for path in sorted(set(checkpoint.weight_map.values())):
        offset, header = read_safetensors_header(path)
        entries[path] = (offset, header)
    return entries


def _counted(config, name: str) -> bool:
    """Whether tensor `name` counts as parameters: not the stored copy of tied output embeddings."""
    tied = getattr(config.get_text_config(), "tie_word_embeddings", False)
    return name != "__metadata__" and not (tied and name.split(".")[-2:] == ["lm_head", "weight"])


def checkpoint_parameters(checkpoint: "Checkpoint") -> int:
    """Parameters the checkpoint stores (as `model.num_parameters()` counts them: tied weights once), from the
    safetensors headers alone."""
    total = 0
    for _, header in _tensor_entries(checkpoint).values():
        total += sum(math.prod(entry["shape"]) for name, entry in header.items() if _counted(checkpoint.config, name))
    return total


def _dropped(checkpoint: "Checkpoint", layers: Iterable[int]):
    """A test for names under the removed sublayers' modules, stored with or without the base-model prefix."""
    adapter = get_adapter(checkpoint.config)
    base = adapter.base_model_prefix + "."
    prefixes = [prefix for layer in layers for prefix in adapter.pruned_module_prefixes(layer)]
    prefixes += [prefix.removeprefix(base) for prefix in prefixes if prefix.startswith(base)]
    return lambda name: any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _tombstone(checkpoint: "Checkpoint", pruned: list[int], entries) -> tuple[str, Path, str]:
    """(name, file, dtype) of the tombstone: the first removed query/key weight's name as the checkpoint spells it
    (with or without the base-model prefix), in the file that held it, in its dtype."""
    adapter = get_adapter(checkpoint.config)
    full = adapter.qk_tensor_names(pruned[0])[0]
    stripped = full.removeprefix(adapter.base_model_prefix + ".")
    for name in (full, stripped):
        if name in checkpoint.weight_map:
            path = checkpoint.weight_map[name]
            return name, path, entries[path][1][name]["dtype"]
    first = min(entries)
    dtypes = [entry["dtype"] for name, entry in entries[first][1].items() if name != "__metadata__"]
    style = (
        full if any(name.startswith(adapter.base_model_prefix + ".") for name in checkpoint.weight_map) else stripped
    )
    return style, first, dtypes[0] if dtypes else "F32"


def _copy_range(src, dst, offset: int, count: int) -> int:
    """Copies `count` bytes at `offset` of `src` to the end of `dst` inside the kernel (`os.copy_file_range`: no
    bytes pass through this process); 0 where that is not available, for the caller's fallback."""
    if not hasattr(os, "copy_file_range"):
        return 0
    try:
        return os.copy_file_range(src.fileno(), dst.fileno(), count, offset)
    except OSError:  # another file system (EXDEV before Linux 5.3), or not supported by this one
        return 0


def _write_file(source: Path, data_start: int, header: dict, target: Path, progress) -> int:
    """Writes `header`'s tensors from `source` into `target`, bytes as stored; returns the data bytes written."""
    tensors = sorted(
        ((name, entry) for name, entry in header.items() if name != "__metadata__"),
        key=lambda item: item[1]["data_offsets"][0],
    )
    out_header: dict = {"__metadata__": header.get("__metadata__") or {"format": "pt"}}
    position = 0
    for name, entry in tensors:
        start, end = entry["data_offsets"]
        out_header[name] = {
            "dtype": entry["dtype"],
            "shape": entry["shape"],
            "data_offsets": [position, position + end - start],
        }
        position += end - start
    encoded = json.dumps(out_header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(source, "rb") as src, open(target, "wb") as dst:
        dst.write(len(encoded).to_bytes(8, "little"))
        dst.write(encoded)
        dst.flush()
        buffer = None
        for _, entry in tensors:
            start, end = entry["data_offsets"]
            offset, remaining = data_start + start, end - start
            while remaining:
                count = min(CHUNK_BYTES, remaining)
                copied = _copy_range(src, dst, offset, count) if buffer is None else 0
                if not copied:  # no in-kernel copy here: through one reused buffer
                    buffer = buffer if buffer is not None else bytearray(CHUNK_BYTES)
                    src.seek(offset)
                    copied = src.readinto(memoryview(buffer)[:count])
                    if not copied:
                        raise OSError(f"{source} ended before its header said; re-download or re-save it")
                    dst.write(memoryview(buffer)[:copied])
                offset, remaining = offset + copied, remaining - copied
                progress(copied)
    return position


def write_streamed(
    checkpoint: "Checkpoint",
    directory: Path,
    layers: Iterable[int],
    *,
    criterion: str | None = None,
    progress: bool = True,
) -> int:
    """Writes `checkpoint` with the attention sublayers of `layers` removed (plain removal) into the existing
    (temporary) `directory`: weights, `config.json` with the pruning record, `generation_config.json`. The
    tokenizer, report and model card are the caller's.

    Args:
        checkpoint: The (safetensors) checkpoint to prune; it may have been pruned before.
        directory: Where to write.
        layers: Decoder layers whose attention sublayer goes now.
        criterion: Recorded as the criterion that chose `layers`.
        progress: A tqdm bar of the bytes copied.

    Returns:
        The parameters written (each stored tensor's elements, once).

    Raises:
        InvalidConfigError: For pickled weights (`pytorch_model.bin`).
    """
    from tqdm.auto import tqdm

    config = copy.deepcopy(checkpoint.config)
    record, pruned = next_record(config, layers, criterion=criterion)
    entries = _tensor_entries(checkpoint)
    dropped = _dropped(checkpoint, pruned)
    tombstone, tombstone_file, tombstone_dtype = _tombstone(checkpoint, pruned, entries)
    sharded = (checkpoint.path / SAFETENSORS_INDEX).is_file() or len(entries) > 1
    weight_map: dict[str, str] = {}
    total = 0
    survivors = [(n, e) for _, h in entries.values() for n, e in h.items() if n != "__metadata__" and not dropped(n)]
    size = sum(entry["data_offsets"][1] - entry["data_offsets"][0] for _, entry in survivors)
    parameters = sum(math.prod(entry["shape"]) for name, entry in survivors if _counted(config, name))
    with tqdm(total=size, unit="B", unit_scale=True, desc="Copying the kept weights", disable=not progress) as bar:
        for path, (data_start, header) in entries.items():
            kept = {name: entry for name, entry in header.items() if name == "__metadata__" or not dropped(name)}
            if path == tombstone_file:
                end = max((e["data_offsets"][1] for n, e in kept.items() if n != "__metadata__"), default=0)
                kept[tombstone] = {"dtype": tombstone_dtype, "shape": [0], "data_offsets": [end, end]}
            if len(kept) == int("__metadata__" in kept):
                continue
            name = path.name if sharded else SAFETENSORS_FILE
            total += _write_file(path, data_start, kept, directory / name, bar.update)
            weight_map.update({tensor: name for tensor in kept if tensor != "__metadata__"})
    if sharded:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (directory / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    config.quantization_config = record
    config.save_pretrained(directory)
    write_portable_config(directory)
    if (checkpoint.path / "generation_config.json").is_file():
        shutil.copyfile(checkpoint.path / "generation_config.json", directory / "generation_config.json")
    logger.debug("Wrote layers %s pruned into %s (%d tensor bytes)", pruned, directory, total)
    return parameters
