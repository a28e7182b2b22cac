"""Reading checkpoints safely and lazily: validation up front, then one tensor at a time.

Scoring needs only the query/key projections (and norm gains) of each layer, so it reads exactly those tensors
from the safetensors shards with `safetensors.safe_open` and never builds the model: a 70B checkpoint scores in
the memory of one layer's Q and K. `layer_weights` reads one layer's attention weights through the architecture
adapter into an `AttentionWeights`, the input of every weight-level criterion.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..adapters import HeadDims, get_adapter
from ..compat import CONFIG_ERRORS
from ..errors import InvalidCheckpointError, ModelNotFoundError, UnsupportedModelError
from ..params import param
from ..validation import is_int
from .record import QUANT_METHODS


if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel

__all__ = [
    "AttentionWeights",
    "Checkpoint",
    "ModelWeights",
    "PickleWeights",
    "SafetensorsWeights",
    "WeightSource",
    "check_quantization",
    "inspect_checkpoint",
    "layer_weights",
    "read_safetensors_header",
]

logger = logging.getLogger(__name__)

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_FILE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"


class WeightSource:
    """Tensors by checkpoint name; names may omit the base-model prefix (old GPT-2 checkpoints do)."""

    def names(self) -> Iterable[str]:
        raise NotImplementedError

    def _get(self, name: str) -> "torch.Tensor":
        raise NotImplementedError

    def get(self, name: str, base_model_prefix: str | None = None) -> "torch.Tensor":
        """Returns the tensor `name`, trying it without `base_model_prefix.` if that is how it was stored.

        Raises:
            InvalidCheckpointError: If the checkpoint has no such tensor.
        """
        candidates = [name]
        if base_model_prefix and name.startswith(base_model_prefix + "."):
            candidates.append(name[len(base_model_prefix) + 1 :])
        for candidate in candidates:
            if self._has(candidate):
                return self._get(candidate)
        raise InvalidCheckpointError(f"the checkpoint has no tensor {name!r}; is it complete and of the right model?")

    def _has(self, name: str) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ModelWeights(WeightSource):
    """The parameters and buffers of an in-memory model."""

    def __init__(self, model: "PreTrainedModel"):
        self._tensors = dict(model.named_parameters(remove_duplicate=False))
        self._tensors.update(model.named_buffers(remove_duplicate=False))

    def names(self):
        return self._tensors.keys()

    def _has(self, name):
        return name in self._tensors

    def _get(self, name):
        return self._tensors[name].detach()


class _ShardedWeights(WeightSource):
    def __init__(self, weight_map: Mapping[str, Path]):
        self._weight_map = dict(weight_map)
        self._handles = {}

    def names(self):
        return self._weight_map.keys()

    def _has(self, name):
        return name in self._weight_map

    def _get(self, name):
        path = self._weight_map[name]
        if path not in self._handles:
            self._handles[path] = self._open(path)
        return self._read(self._handles[path], name, path)

    def close(self):
        for handle in self._handles.values():
            if isinstance(handle, tuple):
                handle[0].close()
        self._handles.clear()


# safetensors' dtype names -> torch's
SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U64": "uint64",
    "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
}  # fmt: skip


class SafetensorsWeights(_ShardedWeights):
    """safetensors shards, each tensor read from its file when asked for (no memory map): a tensor takes memory
    only while the caller holds it, so scoring a model larger than memory holds one layer's Q and K at a time."""

    def _open(self, path):
        start, header = read_safetensors_header(path)
        return open(path, "rb"), start, header

    def _read(self, handle, name, path):
        import torch

        file, start, header = handle
        entry = header.get(name)
        try:
            begin, end = entry["data_offsets"]
            shape = [int(n) for n in entry["shape"]]
            dtype = getattr(torch, SAFETENSORS_DTYPES[entry["dtype"]])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise InvalidCheckpointError(
                f"cannot read tensor {name!r} from {path}: its header entry is not one safetensors writes "
                f"({entry!r}); re-download or re-save it"
            ) from None
        data = bytearray(max(end - begin, 0))
        file.seek(start + begin)
        if file.readinto(data) != len(data) or len(data) != math.prod(shape) * dtype.itemsize:
            raise InvalidCheckpointError(
                f"cannot read tensor {name!r} from {path}: the file is truncated or its header is wrong; "
                "re-download or re-save it"
            )
        if not data:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(data, dtype=dtype).reshape(shape)


class PickleWeights(_ShardedWeights):
    """`pytorch_model.bin` shards, loaded with `torch.load(weights_only=True)` (only after the user opted in)."""

    def _open(self, path):
        import torch

        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:
            raise InvalidCheckpointError(f"cannot load {path} with torch.load(weights_only=True): {error}") from None

    def _read(self, handle, name, path):
        return handle[name]


# safetensors itself refuses a header longer than this (its MAX_HEADER_SIZE)
MAX_SAFETENSORS_HEADER = 100_000_000


def read_safetensors_header(path: str | Path) -> tuple[int, dict[str, Any]]:
    """The JSON header of a safetensors file and the bytes it takes (its 8-byte length included); nothing else is
    read.

    The header length stored in the file is checked against the file's size and safetensors' own 100 MB limit
    before that many bytes are read, so a damaged file costs no memory.

    Raises:
        InvalidCheckpointError: If the header length does not fit the file or the header is not a JSON object.
        OSError: If the file cannot be read.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        length = int.from_bytes(prefix, "little")
        if len(prefix) < 8 or length > min(size - 8, MAX_SAFETENSORS_HEADER):
            raise InvalidCheckpointError(
                f"{path} is truncated or not a safetensors file (a header of {length} bytes in a file of {size}); "
                "re-download or re-save it"
            )
        try:
            header = json.loads(f.read(length))
        except ValueError:
            header = None
    if not isinstance(header, dict):
        raise InvalidCheckpointError(
            f"{path} is not a safetensors file (its header is not a JSON object); re-download or re-save it"
        )
    return 8 + length, header


def _safe_open(path: Path):
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as error:
        raise InvalidCheckpointError(
            f"{path} is truncated or not a safetensors file ({error}); re-download or re-save it"
        ) from None


@dataclass
class Checkpoint:
    """A validated local checkpoint directory.

    Args:
        path: The directory.
        config: Its config, loaded without remote code.
        weight_map: Tensor name -> file holding it.
        format: `"safetensors"` or `"pickle"`.
    """

    path: Path
    config: "PretrainedConfig"
    weight_map: dict[str, Path]
    format: str

    def open_weights(self) -> WeightSource:
        cls = SafetensorsWeights if self.format == "safetensors" else PickleWeights
        return cls(self.weight_map)


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidCheckpointError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise InvalidCheckpointError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def check_quantization(config_dict: Mapping, where: str) -> None:
    """Refuses checkpoints with packed or quantized weights (except our own pruning record)."""
    quant = config_dict.get("quantization_config")
    if quant is None:
        return
    method = quant.get("quant_method") if isinstance(quant, Mapping) else getattr(quant, "quant_method", None)
    if method in QUANT_METHODS:
        required = ("pruned_attention_layers", "num_hidden_layers")
        missing = [key for key in required if key not in quant] if isinstance(quant, Mapping) else []
        if missing:
            raise InvalidCheckpointError(
                f"{where}: the pruning record (quantization_config) lacks {', '.join(missing)}; re-save the pruned "
                "model with optimum-gatenorm"
            )
        return
    if isinstance(quant, Mapping) and (quant.get("load_in_4bit") or quant.get("load_in_8bit")):
        method = "bitsandbytes"
    raise UnsupportedModelError(
        f"{where} is quantized ({method or 'unknown method'}); its weights are packed integers and scoring them "
        "would be wrong; use the unquantized checkpoint"
    )


def _sharded_weight_map(index_path: Path) -> dict[str, Path]:
    index = _read_json(index_path)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise InvalidCheckpointError(f"{index_path} has no 'weight_map'")
    out = {}
    for name, file in weight_map.items():
        shard = index_path.parent / file
        if not shard.is_file():
            raise ModelNotFoundError(f"shard {file} listed in {index_path.name} is missing from {index_path.parent}")
        out[name] = shard
    return out


def _file_weight_map(path: Path, format: str) -> dict[str, Path]:
    if format == "safetensors":
        return {name: path for name in _safe_open(path).keys()}
    return {name: path for name in PickleWeights({})._open(path)}


_SIZES = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim")


def _check_sizes(values: Mapping[str, Any], config_file: Path) -> None:
    for name in _SIZES:
        value = values.get(name)
        optional = name in ("num_key_value_heads", "head_dim")  # absent or null: derived from the others
        if not ((is_int(value) and value > 0) or (optional and value is None)):
            raise InvalidCheckpointError(f"{config_file}: {name} must be a positive integer, got {value!r}")


def _check_dimensions(config: "PretrainedConfig", config_file: Path) -> None:
    """Refuses configs whose layer count or head geometry cannot describe a model (hand-edited, corrupt)."""
    _check_sizes({name: getattr(config, name, None) for name in _SIZES}, config_file)
    try:
        dims = HeadDims.from_config(config)
    except ValueError as error:
        raise InvalidCheckpointError(f"{config_file}: {error}") from None
    if dims.head_dim < 1:
        raise InvalidCheckpointError(
            f"{config_file}: hidden_size={dims.hidden_size} is too small for {dims.num_heads} attention heads"
        )


def inspect_checkpoint(path: str | Path, *, allow_pickle: bool = False) -> Checkpoint:
    """Validates a local checkpoint directory without loading its weights.

    Args:
        path: A directory holding `config.json` and safetensors weights (single file or sharded).
        allow_pickle: Accept `pytorch_model.bin` weights, loaded with `torch.load(weights_only=True)`.

    Raises:
        ModelNotFoundError: If the path or a listed shard does not exist.
        InvalidCheckpointError: If config or weights are missing, unreadable, truncated, or pickled without opt-in.
        UnsupportedModelError: If the architecture is not supported or the weights are quantized.
    """
    from transformers import AutoConfig

    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"model path {str(path)!r} does not exist")
    if not path.is_dir():
        raise InvalidCheckpointError(f"{path} is a file; pass a model directory (with config.json) or a .gguf file")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise InvalidCheckpointError(f"{path} has no config.json; pass a Hugging Face model directory")
    config_dict = _read_json(config_file)
    model_type = config_dict.get("model_type")
    if not model_type:
        raise InvalidCheckpointError(f"{config_file} has no 'model_type'")
    get_adapter(str(model_type))  # one-line error listing the supported types, before transformers sees it
    check_quantization(config_dict, str(path))
    # The sizes config.json names, before transformers 5's strict config validation words the error its own way.
    _check_sizes(
        {**{name: 1 for name in _SIZES}, **{k: v for k, v in config_dict.items() if k in _SIZES}}, config_file
    )
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except CONFIG_ERRORS as error:
        detail = " ".join(str(error).split())  # one line; 5.x's validation errors span several
        raise InvalidCheckpointError(f"cannot load {config_file}: {detail}") from None
    get_adapter(config)
    _check_dimensions(config, config_file)

    if (path / SAFETENSORS_INDEX).is_file():
        weight_map, format = _sharded_weight_map(path / SAFETENSORS_INDEX), "safetensors"
    elif (path / SAFETENSORS_FILE).is_file():
        weight_map, format = _file_weight_map(path / SAFETENSORS_FILE, "safetensors"), "safetensors"
    elif (path / PICKLE_INDEX).is_file() or (path / PICKLE_FILE).is_file():
        if not allow_pickle:
            raise InvalidCheckpointError(
                f"{path} has only pickled weights ({PICKLE_FILE}), which can run code when loaded; convert them to "
                f"safetensors, or opt in with {param('allow_pickle', True)} to load them with "
                "torch.load(weights_only=True)"
            )
        if (path / PICKLE_INDEX).is_file():
            weight_map = _sharded_weight_map(path / PICKLE_INDEX)
        else:
            weight_map = _file_weight_map(path / PICKLE_FILE, "pickle")
        format = "pickle"
    else:
        raise InvalidCheckpointError(f"{path} has no weights ({SAFETENSORS_FILE} or {SAFETENSORS_INDEX})")

    if format == "safetensors":
        for shard in set(weight_map.values()):
            _safe_open(shard)  # reads the header only; refuses truncated files
    return Checkpoint(path=path, config=config, weight_map=weight_map, format=format)


@dataclass(frozen=True)
class AttentionWeights:
    """The query/key weights of one attention sublayer, upcast for scoring.

    Args:
        layer: Decoder layer index.
        q: `[num_heads, head_dim, hidden]`; `q[h] @ x` is head `h`'s query.
        k: `[num_kv_heads, head_dim, hidden]`; query head `h` attends with key head `h // (num_heads // num_kv_heads)`.
        norm: Gain `[hidden]` of the pre-attention norm, or `None` if the criterion does not use it.
        v: `[num_kv_heads, head_dim, hidden]` value weights, or `None` if the criterion does not use them.
        o: `[num_heads, hidden, head_dim]` output projection per query head, or `None` likewise.
        q_norm: Gain `[head_dim]` of a per-head query RMSNorm applied before the dot product (Qwen3, Gemma 3), or
            `None`. When set, `norm` is always read too (see `gate`).
        k_norm: Gain `[head_dim]` of the per-head key RMSNorm, or `None`.
        out_norm: Gain `[hidden]` of a norm on the attention output (Gemma's sandwich `post_attention_layernorm`),
            read with `v` and `o`; `None` if there is none or they were not read.
    """

    layer: int
    q: "torch.Tensor"
    k: "torch.Tensor"
    norm: "torch.Tensor | None" = None
    v: "torch.Tensor | None" = None
    o: "torch.Tensor | None" = None
    q_norm: "torch.Tensor | None" = None
    k_norm: "torch.Tensor | None" = None
    out_norm: "torch.Tensor | None" = None

    @property
    def group_size(self) -> int:
        return self.q.shape[0] // self.k.shape[0]

    def grouped_q(self) -> "torch.Tensor":
        """`[num_kv_heads, head_dim, hidden]`: the query heads that share a key head, summed.

        `sum_h W_Q^h (W_K^{g(h)})^T = sum_g (sum_{h in g} W_Q^h) (W_K^g)^T`, so GQA/MQA need no repeated keys.
        """
        kv, d, hidden = self.k.shape
        return self.q.reshape(kv, self.group_size, d, hidden).sum(dim=1)

    def gate(self) -> "AttentionWeights":
        """The query/key projections as the attention logit sees them; `self` when there are no query/key norms.

        With per-head RMSNorms on queries and keys (gains `g_q`, `g_k`), head `h` scores query token `i` against
        key token `j` with

            (g_q * q_i / rms(q_i)) . (g_k * k_j / rms(k_j)) = x_i^T W_Q^h diag(g_q * g_k) W_K^h^T x_j / (rms(q_i) rms(k_j)),

        where `q_i = W_Q^h^T x_i`, `k_j = W_K^h^T x_j` and `x` is the attention input (the normalised residual
        stream times the pre-attention gain `gamma`). The per-token normalisation removes the projections' scale:
        multiplying `W_Q` by any constant changes nothing. It is replaced by its expectation under the modelling
        assumption of the weight-only criteria (`x = gamma * x_hat` with isotropic unit-variance `x_hat`):
        `rms(q_i)^2 ~ E[rms(q_i)^2] = ||diag(gamma) W_Q^h||_F^2 / head_dim`, likewise for `k`. The returned weights
        are therefore `W_Q^h diag(g_q * g_k) / (||diag(gamma) W_Q^h||_F / sqrt(d))` and
        `W_K^h / (||diag(gamma) W_K^h||_F / sqrt(d))`: a gate whose bilinear form is the expected logit (before
        the `1/sqrt(d)` scaling). Criteria on it measure how the *direction* of the projections and the gains
        `g_q * g_k` (which now carry all of the scale, i.e. the attention's temperature) couple tokens, not the
        projections' arbitrary scale. Idempotent: the result has no query/key norms left.
        """
        if self.q_norm is None and self.k_norm is None:
            return self
        if self.norm is None or self.q_norm is None or self.k_norm is None:
            raise ValueError(f"layer {self.layer}: query/key norms need both gains and the pre-attention norm gain")
        head_dim = self.k.shape[1]
        q_rms = (self.q * self.norm).square().sum(dim=(1, 2)).div(head_dim).sqrt()  # [heads]
        k_rms = (self.k * self.norm).square().sum(dim=(1, 2)).div(head_dim).sqrt()  # [kv_heads]
        q = self.q * (self.q_norm * self.k_norm)[None, :, None] / q_rms[:, None, None]
        k = self.k / k_rms[:, None, None]
        return AttentionWeights(self.layer, q, k, self.norm, self.v, self.o, out_norm=self.out_norm)

    def folded(self) -> "AttentionWeights":
        """The gate (`gate`) with the norm gain folded in: `W_Q -> diag(gamma) W_Q`, `W_K -> diag(gamma) W_K`."""
        if self.norm is None:
            raise ValueError(f"layer {self.layer}: no norm gain to fold")
        gate = self.gate()
        return AttentionWeights(
            self.layer, gate.q * self.norm, gate.k * self.norm, self.norm, self.v, self.o, out_norm=self.out_norm
        )


def layer_weights(
    source: "WeightSource",
    config: "PretrainedConfig",
    layer: int,
    *,
    with_norm: bool,
    with_ov: bool = False,
    device: "str | torch.device" = "cpu",
) -> AttentionWeights:
    """Reads and upcasts one layer's Q, K (and norm gain, and V and output projection) from `source`.

    Raises:
        InvalidCheckpointError: If a tensor is missing or holds NaN/Inf.
    """
    import torch

    adapter = get_adapter(config)
    dims = HeadDims.from_config(config)
    prefix = adapter.attention_prefix(layer) + "."
    names = adapter.qk_tensor_names(layer) + (adapter.ov_tensor_names(layer) if with_ov else ())
    tensors = {}
    for name in dict.fromkeys(names):
        tensors[name[len(prefix) :]] = source.get(name, adapter.base_model_prefix).to(device, torch.float32)
    v = o = None
    try:
        q, k = adapter.qk.extract(tensors, dims)
        if with_ov:
            v, o = adapter.qk.extract_ov(tensors, dims)
    except RuntimeError as error:  # reshape of a tensor of the wrong size
        raise InvalidCheckpointError(
            f"layer {layer}: attention weights do not match the config's head sizes: {error}"
        ) from None
    norm = q_norm = k_norm = None
    # Query/key norms need the pre-attention gain too: it sets the expected scale of the queries (`gate`).
    if with_norm or adapter.qk_norms:
        norm = adapter.norm_gain(
            source.get(adapter.norm_tensor_name(layer), adapter.base_model_prefix).to(device, torch.float32)
        )
    if adapter.qk_norms:
        q_norm, k_norm = (
            adapter.norm_gain(
                source.get(f"{prefix}{name}.weight", adapter.base_model_prefix).to(device, torch.float32)
            )
            for name in adapter.qk_norms
        )
    out_norm = None
    if with_ov and adapter.attention_output_norm:
        name = f"{adapter.layer_prefix(layer)}.{adapter.attention_output_norm}.weight"
        out_norm = adapter.norm_gain(source.get(name, adapter.base_model_prefix).to(device, torch.float32))
    checked = (("query", q), ("key", k), ("norm gain", norm), ("value", v), ("output projection", o))
    checked += (("query norm gain", q_norm), ("key norm gain", k_norm), ("attention output norm gain", out_norm))
    for what, tensor in checked:
        if tensor is not None and not torch.isfinite(tensor).all():
            raise InvalidCheckpointError(
                f"layer {layer}: the {what} weights hold NaN or Inf values; the checkpoint is corrupt"
            )
    return AttentionWeights(layer, q, k, norm, v, o, q_norm, k_norm, out_norm)
