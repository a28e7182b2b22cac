"""Every length read from a file is bounded by the file before it is used.

A safetensors header length of 10^15 or 2^64 - 1 (a file of 0xFF bytes), or one past the end of the file, used to
surface as MemoryError / OverflowError from the conversion cache's damage check; a GGUF array length of 2^64 made
`gguf.GGUFReader` loop until memory ran out. Each damaged file here is refused in one line
(`InvalidCheckpointError`), and a damaged cache entry is named and converted again.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_model

from optimum_gatenorm import GateNormPruner, InvalidCheckpointError, convert_gguf
from optimum_gatenorm.checkpoints import models
from optimum_gatenorm.checkpoints.gguf import check_gguf_header
from optimum_gatenorm.checkpoints.modeling import _stored_shapes
from optimum_gatenorm.checkpoints.models import CONVERSION_FILE, CONVERSION_FORMAT, _damage
from optimum_gatenorm.checkpoints.tensors import inspect_checkpoint, read_safetensors_header


HUGE = (1 << 64) - 1


# --- safetensors -----------------------------------------------------------------------------------------------------


def _with_length(data: bytes, length: int) -> bytes:
    return struct.pack("<Q", length) + data[8:]


def _with_header(data: bytes, header: bytes) -> bytes:
    """`header` in place of the JSON header, padded with spaces to its length (the file's size is unchanged)."""
    length = struct.unpack("<Q", data[:8])[0]
    return data[:8] + header.ljust(length) + data[8 + length :]


SAFETENSORS_DAMAGE = {  # name -> valid file bytes -> damaged bytes
    "header length 10^15": lambda data: _with_length(data, 10**15),
    "all 0xFF": lambda data: b"\xff" * len(data),
    "header length one past the end": lambda data: _with_length(data, len(data) - 7),
    "header not JSON": lambda data: _with_header(data, b"{not json"),
    "header not an object": lambda data: _with_header(data, b"[1, 2]"),
    "shorter than its length field": lambda data: data[:5],
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """A directory shaped like a cached conversion (config, one safetensors file, the conversion marker)."""
    directory = tmp_path_factory.mktemp("converted") / "smollm2-135m"
    tiny_model("llama").save_pretrained(directory)
    (directory / CONVERSION_FILE).write_text(json.dumps({"format": CONVERSION_FORMAT, "gguf": "x.gguf"}))
    return directory


def _damaged_copy(source: Path, target: Path, damage) -> Path:
    target.mkdir(parents=True)
    for file in source.iterdir():
        data = file.read_bytes()
        (target / file.name).write_bytes(damage(data) if file.suffix == ".safetensors" else data)
    return target


def test_the_valid_file_reads(converted):
    length, header = read_safetensors_header(converted / "model.safetensors")
    assert "model.embed_tokens.weight" in header and 8 < length < (converted / "model.safetensors").stat().st_size
    assert _damage(converted) is None


@pytest.mark.parametrize("case", SAFETENSORS_DAMAGE)
def test_damaged_safetensors_is_refused_in_one_line(case, converted, tmp_path):
    folder = _damaged_copy(converted, tmp_path / "damaged", SAFETENSORS_DAMAGE[case])
    weights = folder / "model.safetensors"
    with pytest.raises(InvalidCheckpointError, match="safetensors file") as error:
        read_safetensors_header(weights)
    assert "\n" not in str(error.value)
    assert _damage(folder) == "model.safetensors is not a readable safetensors file"
    with pytest.raises(InvalidCheckpointError, match="truncated or not a safetensors file"):
        GateNormPruner.from_pretrained(folder)
    # the record check reads headers too; a damaged file is left for the loader to name
    checkpoint = inspect_checkpoint(converted)
    checkpoint.weight_map = {name: weights for name in checkpoint.weight_map}
    assert _stored_shapes(checkpoint) == {}


@pytest.mark.parametrize("case", ["header length 10^15", "all 0xFF"])
def test_a_damaged_cache_entry_is_converted_again(case, converted, tmp_path, monkeypatch, caplog):
    cache = tmp_path / "cache"
    entry = _damaged_copy(converted, cache / "models" / "smollm2-135m", SAFETENSORS_DAMAGE[case])
    monkeypatch.setenv("OPTIMUM_GATENORM_CACHE", str(cache))
    calls = []

    def convert(gguf_file, output_dir, *, overwrite=False):  # the real one takes ~40 s on the real model
        calls.append((gguf_file, Path(output_dir), overwrite))
        return Path(output_dir)

    monkeypatch.setattr(models, "convert_gguf", convert)
    with caplog.at_level("WARNING"):
        assert models._converted(tmp_path / "x.gguf", "smollm2-135m") == entry
    assert calls == [(tmp_path / "x.gguf", entry, True)]
    assert "is damaged (model.safetensors is not a readable safetensors file): converting" in caplog.text


# --- GGUF ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def valid_gguf(tmp_path_factory) -> Path:
    """A tiny GGUF file: a string, a float array, a string array, a uint8 array and one float32 tensor."""
    import gguf

    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_string("general.name", "tiny")
    writer.add_array("tokenizer.ggml.scores", [0.5, 0.25])
    writer.add_array("tokenizer.ggml.tokens", ["a", "bc"])
    writer.add_key_value("general.flags", [1, 0, 1], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.UINT8)
    writer.add_tensor("token_embd.weight", np.ones((2, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _after(data: bytes, key: str, skip: int = 0) -> int:
    """The offset `skip` bytes past the end of the name `key` in the file."""
    return data.index(key.encode()) + len(key) + skip


def _patch(fmt: str, where) -> callable:
    def damage(data: bytes) -> bytes:
        out = bytearray(data)
        offset = where(data)
        struct.pack_into(fmt, out, offset, HUGE if fmt == "<Q" else 0xFFFFFFFF)
        return bytes(out)

    return damage


# name -> damage; the numbers are 2^64 - 1 (counts, lengths) or 2^32 - 1 (types, dimension counts)
GGUF_DAMAGE = {
    "tensor count": _patch("<Q", lambda data: 8),
    "key-value count": _patch("<Q", lambda data: 16),
    "key length": _patch("<Q", lambda data: 24),
    "string length": _patch("<Q", lambda data: _after(data, "general.name", 4)),
    "float array length": _patch("<Q", lambda data: _after(data, "tokenizer.ggml.scores", 8)),
    "string array length": _patch("<Q", lambda data: _after(data, "tokenizer.ggml.tokens", 8)),
    "uint8 array length": _patch("<Q", lambda data: _after(data, "general.flags", 8)),  # GGUFReader loops forever
    "array item type": _patch("<I", lambda data: _after(data, "general.flags", 4)),
    "value type": _patch("<I", lambda data: _after(data, "general.name")),
    "tensor name length": _patch("<Q", lambda data: data.index(b"token_embd.weight") - 8),
    "tensor dimension count": _patch("<I", lambda data: _after(data, "token_embd.weight")),
}


def test_the_valid_gguf_file_passes(valid_gguf):
    import gguf

    check_gguf_header(valid_gguf)
    reader = gguf.GGUFReader(valid_gguf)
    assert [t.name for t in reader.tensors] == ["token_embd.weight"] and "general.flags" in reader.fields


@pytest.mark.parametrize("case", GGUF_DAMAGE)
def test_damaged_gguf_is_refused_in_one_line_before_it_is_parsed(case, valid_gguf, tmp_path):
    damaged = tmp_path / "model.gguf"
    damaged.write_bytes(GGUF_DAMAGE[case](valid_gguf.read_bytes()))
    start = time.perf_counter()
    with pytest.raises(InvalidCheckpointError, match="is truncated or corrupt .*; download or reinstall it again"):
        check_gguf_header(damaged)
    assert time.perf_counter() - start < 1
    with pytest.raises(InvalidCheckpointError, match="is truncated or corrupt") as error:
        convert_gguf(damaged, tmp_path / "converted")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "converted").exists()


def test_counts_that_fit_but_lie_are_still_refused_by_the_reader(valid_gguf, tmp_path):
    """A tensor offset past the end passes the header walk; the tensor-size check after GGUFReader refuses it."""
    data = bytearray(valid_gguf.read_bytes())
    struct.pack_into("<Q", data, _after(data, "token_embd.weight", 4 + 2 * 8 + 4), 1 << 40)
    damaged = tmp_path / "model.gguf"
    damaged.write_bytes(bytes(data))
    check_gguf_header(damaged)
    with pytest.raises(InvalidCheckpointError, match="truncated"):
        convert_gguf(damaged, tmp_path / "converted")
