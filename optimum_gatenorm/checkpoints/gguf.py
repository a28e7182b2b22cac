"""Reading a Gemma 3 GGUF file with the `gguf` package, where transformers 4.57's own GGUF loader goes wrong.

transformers 4.57.6 loads `gemma-3-270m-q4_k_m.gguf` without an error but converts it wrongly, in two places:

- Weights: llama.cpp's converter stores every Gemma RMSNorm gain as `w + 1` (Gemma applies `1 + w`, llama.cpp
  multiplies by the stored value). transformers has a processor that subtracts the 1 again, but looks it up under
  the already-renamed architecture `gemma3_text` and so never applies it: every norm gain is off by one and the
  model generates nonsense.
- Tokenizer: the GGUF holds a SentencePiece BPE vocabulary whose scores are merge ranks (`score = -rank`), and
  transformers builds a Unigram model from them, which prefers many short pieces (" capital" becomes
  " c", "ap", "it", "al"); it adds no `<bos>` either. transformers 5.17 does the same.

This module reads the file itself: tensors dequantised with `gguf.quants.dequantize`, llama.cpp tensor names
mapped to `Gemma3ForCausalLM` names, the config built from the GGUF metadata, and a BPE tokenizer whose merges
are derived from the scores the way SentencePiece applies them. The result is checked against transformers 5.17's
loader and the real model's behaviour in `tests/real/test_gemma_real.py`.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidCheckpointError, UnsupportedModelError


if TYPE_CHECKING:
    import torch
    from gguf import GGUFReader
    from transformers import Gemma3TextConfig, GenerationConfig, PreTrainedTokenizerFast

__all__ = [
    "GEMMA3_NORM_OFFSET",
    "OWN_READERS",
    "GemmaGGUF",
    "check_gguf_header",
    "gemma3_config",
    "read_gemma3_gguf",
    "tensor_name",
]

# llama.cpp's convert_hf_to_gguf.py (Gemma3Model.modify_tensors) adds 1 to every tensor whose name ends in
# "norm.weight"; Gemma3RMSNorm multiplies by `1 + weight`, so the HF weight is the stored value minus 1.
GEMMA3_NORM_OFFSET = 1.0

# Facts llama.cpp does not write into a gemma3 GGUF but hard-codes for the architecture (src/llama-model.cpp,
# LLM_ARCH_GEMMA3): five sliding-window layers for each global one, a rope base of 10,000 on sliding layers, and
# queries scaled by 1/sqrt(key_length) (all sizes but 27B). A file that states them is read instead.
_SLIDING_WINDOW_PATTERN = 6
_ROPE_LOCAL_BASE = 10_000.0

# llama.cpp tensor names (gguf-py's TENSOR_NAMES for MODEL_ARCH.GEMMA3) to Gemma3ForCausalLM parameter names.
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.weight")

# GGUF token types (llama.cpp's llama_token_type).
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4  # (6: byte tokens, <0x00>..<0xFF>, BPE byte fallback)


def tensor_name(gguf_name: str) -> str:
    """The `Gemma3ForCausalLM` parameter name of a llama.cpp tensor name (`blk.3.attn_q.weight` ->
    `model.layers.3.self_attn.q_proj.weight`).

    Raises:
        UnsupportedModelError: For a tensor name this reader does not know (e.g. a vision tower).
    """
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _BLOCK.fullmatch(gguf_name)
    if match is None or match.group(2) not in _BLOCK_NAMES:
        raise UnsupportedModelError(f"unknown tensor {gguf_name!r} in a gemma3 GGUF file; only text models are read")
    return f"model.layers.{match.group(1)}.{_BLOCK_NAMES[match.group(2)]}.weight"


@dataclass
class GemmaGGUF:
    """A Gemma 3 GGUF file, read and converted.

    Args:
        config: The `Gemma3TextConfig` built from the metadata.
        state_dict: float32 tensors under `Gemma3ForCausalLM` names (norm gains with the offset removed).
        tokenizer: A fast BPE tokenizer that adds `<bos>`.
        generation_config: bos/eos/pad ids from the metadata.
    """

    config: Gemma3TextConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer: PreTrainedTokenizerFast
    generation_config: GenerationConfig


def _fields(reader) -> dict[str, Any]:
    return {name: field.contents() for name, field in reader.fields.items()}


def gemma3_config(meta: dict[str, Any]) -> Gemma3TextConfig:
    """The `Gemma3TextConfig` of a gemma3 GGUF file's metadata (`GGUFReader.fields`, as plain values).

    Raises:
        UnsupportedModelError: If the file is not a gemma3 model or uses rope scaling (not read here).
        InvalidCheckpointError: If a required metadata key is missing.
    """
    from transformers import Gemma3TextConfig

    arch = meta.get("general.architecture")
    if arch != "gemma3":
        raise UnsupportedModelError(f"the GGUF reader handles gemma3 files only, not {arch!r}")
    scaling = sorted(key for key in meta if key.startswith("gemma3.rope.scaling."))
    if scaling:
        raise UnsupportedModelError(f"gemma3 GGUF with rope scaling ({', '.join(scaling)}) is not supported")

    def get(key: str):
        if f"gemma3.{key}" not in meta:
            raise InvalidCheckpointError(f"the gemma3 GGUF file has no 'gemma3.{key}' metadata; it is incomplete")
        return meta[f"gemma3.{key}"]

    head_dim = int(get("attention.key_length"))
    if int(meta.get("gemma3.attention.value_length", head_dim)) != head_dim:
        raise UnsupportedModelError("gemma3 GGUF with key_length != value_length is not supported")
    num_layers = int(get("block_count"))
    pattern = int(meta.get("gemma3.attention.sliding_window_pattern", _SLIDING_WINDOW_PATTERN))
    layer_types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(num_layers)]
    vocab = len(meta["tokenizer.ggml.tokens"])
    return Gemma3TextConfig(
        vocab_size=vocab,
        hidden_size=int(get("embedding_length")),
        intermediate_size=int(get("feed_forward_length")),
        num_hidden_layers=num_layers,
        num_attention_heads=int(get("attention.head_count")),
        num_key_value_heads=int(get("attention.head_count_kv")),
        head_dim=head_dim,
        max_position_embeddings=int(get("context_length")),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_theta=float(get("rope.freq_base")),
        rope_local_base_freq=float(meta.get("gemma3.rope.freq_base_swa", _ROPE_LOCAL_BASE)),
        sliding_window=int(get("attention.sliding_window")),
        layer_types=layer_types,
        query_pre_attn_scalar=head_dim,
        hidden_activation="gelu_pytorch_tanh",
        bos_token_id=int(meta["tokenizer.ggml.bos_token_id"]),
        eos_token_id=int(meta["tokenizer.ggml.eos_token_id"]),
        pad_token_id=int(meta.get("tokenizer.ggml.padding_token_id", 0)),
        tie_word_embeddings=True,
        dtype="float32",
    )


def _bpe_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """BPE merges equivalent to SentencePiece's BPE encoding with these scores.

    SentencePiece BPE repeatedly joins the adjacent pair whose joined piece has the highest score; a BPE model
    with the merge list ordered by that score (ties by the pieces' ids) joins the same pairs. Every normal piece
    contributes one merge per way of splitting it into two normal pieces (transformers' SentencePieceExtractor
    derives merges the same way).
    """
    ids = {token: i for i, token in enumerate(tokens) if types[i] == _NORMAL}
    merges = []
    for piece, piece_id in ids.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                merges.append((-scores[piece_id], piece_id, ids[left], ids[right], left, right))
    merges.sort()
    return [(left, right) for *_, left, right in merges]


def bos_eos_template(bos: tuple[str, int] | None, eos: tuple[str, int] | None, add_bos: bool, add_eos: bool):
    """The `tokenizers` post-processor that puts BOS before / EOS after each encoded text where `add_bos` /
    `add_eos` say (llama.cpp's `tokenizer.ggml.add_bos_token` / `add_eos_token`); tokens are (text, id)."""
    from tokenizers import processors

    add_bos, add_eos = add_bos and bos is not None, add_eos and eos is not None
    single = ([f"{bos[0]}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos[0]}:0"] if add_eos else [])
    pair = single + ([f"{bos[0]}:1"] if add_bos else []) + ["$B:1"] + ([f"{eos[0]}:1"] if add_eos else [])
    specials = dict(token for token in (bos, eos) if token is not None)
    return processors.TemplateProcessing(
        single=" ".join(single), pair=" ".join(pair), special_tokens=list(specials.items())
    )


def gemma3_tokenizer(meta: dict[str, Any]) -> PreTrainedTokenizerFast:
    """A fast tokenizer from the `tokenizer.ggml.*` metadata of a gemma3 GGUF file.

    BPE with byte fallback over SentencePiece pieces (spaces as "▁"); control tokens (`<bos>`, `<start_of_turn>`,
    ...) are special, user-defined ones (runs of newlines or spaces, some HTML tags) are matched whole before BPE,
    as SentencePiece does; `<bos>` is added to every encoded text (`tokenizer.ggml.add_bos_token`).

    Raises:
        UnsupportedModelError: If the vocabulary is not a SentencePiece ("llama") one.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE
    from transformers import GemmaTokenizerFast

    if meta.get("tokenizer.ggml.model") != "llama":
        raise UnsupportedModelError(
            f"gemma3 GGUF tokenizer model {meta.get('tokenizer.ggml.model')!r} is not supported (expected 'llama')"
        )
    tokens = list(meta["tokenizer.ggml.tokens"])
    scores = [float(s) for s in meta["tokenizer.ggml.scores"]]
    types = [int(t) for t in meta["tokenizer.ggml.token_type"]]
    # llama.cpp writes user-defined runs of spaces with real spaces; the normalizer turns text spaces into "▁".
    tokens = [t.replace(" ", "▁") if types[i] == _USER_DEFINED else t for i, t in enumerate(tokens)]
    vocab = {token: i for i, token in enumerate(tokens)}
    unk = tokens[int(meta["tokenizer.ggml.unknown_token_id"])]
    model = BPE(vocab=vocab, merges=_bpe_merges(tokens, scores, types), unk_token=unk, byte_fallback=True)
    backend = Tokenizer(model)
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.add_tokens(
        [AddedToken(t, special=False, normalized=True) for i, t in enumerate(tokens) if types[i] == _USER_DEFINED]
    )
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for i, t in enumerate(tokens) if types[i] == _CONTROL]
    )
    bos = tokens[int(meta["tokenizer.ggml.bos_token_id"])]
    eos = tokens[int(meta["tokenizer.ggml.eos_token_id"])]
    pad = tokens[int(meta.get("tokenizer.ggml.padding_token_id", 0))]
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", True))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    backend.post_processor = bos_eos_template((bos, vocab[bos]), (eos, vocab[eos]), add_bos, add_eos)
    return GemmaTokenizerFast(
        tokenizer_object=backend,
        unk_token=unk,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        add_bos_token=add_bos,
        add_eos_token=add_eos,
        model_max_length=int(meta.get("gemma3.context_length", 8192)),
    )


# GGUF value types (gguf.GGUFValueType) -> bytes of one scalar; 8 is a string, 9 an array
_GGUF_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_GGUF_MAX_NESTING = 8  # arrays of arrays; llama.cpp writes none


def check_gguf_header(path: str | Path) -> None:
    """Refuses a GGUF file whose header counts or lengths do not fit in the file, before `gguf.GGUFReader` reads it.

    GGUFReader trusts every count in the file: an array length of 2^64 makes it loop until memory runs out. This
    walks the header (the tensor and key-value counts, every key, string and array length, each tensor's name and
    dimension count) and checks each against the bytes left in the file, without reading any value: 0.09 s for
    SmolLM2's 49k tokens and 49k merges. Versions other than 2 and 3 are left to GGUFReader, which refuses them.

    Raises:
        InvalidCheckpointError: If the file is not a GGUF file, or a count or length in its header does not fit.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            raise _corrupt(path, f"{size} bytes, shorter than a GGUF header")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data[:4] != b"GGUF":
                raise InvalidCheckpointError(f"{path} is not a GGUF file (bad magic bytes)")
            order = "<" if struct.unpack_from("<I", data, 4)[0] & 0xFFFF else ">"  # GGUFReader's byte-order test
            version, tensors, keys = struct.unpack_from(order + "IQQ", data, 4)
            if version not in (2, 3):
                return
            # a key-value takes at least 13 bytes (key length, type, a one-byte value), a tensor's entry 24
            if keys * 13 + tensors * 24 > size - 24:
                raise _corrupt(path, f"{tensors} tensors and {keys} metadata keys cannot fit in {size} bytes")
            try:
                _walk_gguf_header(data, order, keys, tensors)
            except ValueError as error:
                raise _corrupt(path, str(error)) from None


def _corrupt(path, why: str) -> InvalidCheckpointError:
    return InvalidCheckpointError(f"{path} is truncated or corrupt ({why}); download or reinstall it again")


def _walk_gguf_header(data: mmap.mmap, order: str, keys: int, tensors: int) -> None:
    """Steps over the key-values and tensor entries of a GGUF header; ValueError names the first that does not
    fit."""
    size = len(data)

    def take(pos: int, count: int, what: str) -> int:
        if count > size - pos:
            raise ValueError(f"{what} needs {count} bytes at offset {pos}; the file ends at {size}")
        return pos + count

    def number(pos: int, fmt: str, what: str) -> tuple[int, int]:
        end = take(pos, struct.calcsize(fmt), what)
        return struct.unpack_from(order + fmt, data, pos)[0], end

    def string(pos: int, what: str) -> int:
        length, pos = number(pos, "Q", f"the length of {what}")
        return take(pos, length, what)

    def value(pos: int, kind: int, depth: int, what: str) -> int:
        if kind in _GGUF_SCALAR_BYTES:
            return take(pos, _GGUF_SCALAR_BYTES[kind], what)
        if kind == _GGUF_STRING:
            return string(pos, what)
        if kind != _GGUF_ARRAY:
            raise ValueError(f"{what} has the unknown value type {kind}")
        if depth >= _GGUF_MAX_NESTING:
            raise ValueError(f"{what} nests arrays more than {_GGUF_MAX_NESTING} deep")
        item, pos = number(pos, "I", f"the item type of {what}")
        count, pos = number(pos, "Q", f"the length of {what}")
        if item in _GGUF_SCALAR_BYTES:
            return take(pos, count * _GGUF_SCALAR_BYTES[item], f"{what} ({count} items)")
        take(pos, count * 8, f"{what} ({count} items)")  # each string or array item takes at least 8 bytes
        for _ in range(count):
            pos = value(pos, item, depth + 1, f"an item of {what}")
        return pos

    pos = 24
    for index in range(keys):
        start = pos
        pos = string(pos, f"metadata key {index}")
        name = bytes(data[start + 8 : pos]).decode("utf-8", "replace")
        kind, pos = number(pos, "I", f"the type of {name!r}")
        pos = value(pos, kind, 0, f"the value of {name!r}")
    for index in range(tensors):
        pos = string(pos, f"the name of tensor {index}")
        dims, pos = number(pos, "I", f"the dimension count of tensor {index}")
        pos = take(pos, dims * 8 + 12, f"the shape, type and offset of tensor {index}")


def read_gemma3_gguf(gguf: str | Path | GGUFReader) -> GemmaGGUF:
    """Reads a gemma3 GGUF file into a float32 state dict, config, tokenizer and generation config.

    Args:
        gguf: The file, or a `gguf.GGUFReader` already open on it (parsing the metadata takes ~15 s).

    Raises:
        UnsupportedModelError: If the file is not a gemma3 text model this reader knows.
        InvalidCheckpointError: If metadata is missing or tensor shapes disagree with it.
    """
    import numpy as np
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from transformers import GenerationConfig

    if not isinstance(gguf, GGUFReader):
        check_gguf_header(gguf)
    reader = gguf if isinstance(gguf, GGUFReader) else GGUFReader(gguf)
    path = getattr(reader.data, "filename", None) or "the gemma3 GGUF file"  # np.memmap keeps the file name
    meta = _fields(reader)
    config = gemma3_config(meta)
    state: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = tensor_name(tensor.name)
        # GGUF lists dimensions innermost first; dequantize returns the row-major array, i.e. torch's
        # [out_features, in_features]. llama.cpp does not permute Gemma's q/k rows (it uses NeoX-style rope, the
        # same half-split rotation as transformers), so no un-permuting is needed.
        array = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        array = array.reshape([int(d) for d in reversed(tensor.shape.tolist())])
        if name.endswith("norm.weight"):
            array = array - np.float32(GEMMA3_NORM_OFFSET)
        state[name] = torch.from_numpy(np.ascontiguousarray(array))
    embed = state.get("model.embed_tokens.weight")
    if embed is None or tuple(embed.shape) != (config.vocab_size, config.hidden_size):
        raise InvalidCheckpointError(
            f"{path}: token_embd shape {None if embed is None else tuple(embed.shape)} does not match the "
            f"vocabulary ({config.vocab_size}) and embedding_length ({config.hidden_size})"
        )
    generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    return GemmaGGUF(config, state, gemma3_tokenizer(meta), generation_config)


# GGUF architectures (`general.architecture`) read here instead of by transformers' loader.
OWN_READERS = {"gemma3": read_gemma3_gguf}
