"""Where the query and key weights of an attention sublayer live, as data.

An `ArchitectureAdapter` says where the decoder layers, the attention module, its norms and its MLP are, and a
`QKLayout` says how the query and key projections are stored in the attention module's tensors. The scoring
and pruning code only talks to these two objects; it never asks for `model_type`.

All extracted projections use the `nn.Linear` convention: `q[h]` is the `[head_dim, hidden]` block that maps a
hidden state `x` to the query of head `h` (`q_h = q[h] @ x`), so `W_Q^h = q[h].T` in the paper's notation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig

__all__ = [
    "ArchitectureAdapter",
    "FusedConv1D",
    "FusedRows",
    "HeadDims",
    "HeadInterleaved",
    "QKLayout",
    "SeparateProjections",
]


@dataclass(frozen=True)
class HeadDims:
    """Head geometry of one attention sublayer.

    Args:
        hidden_size: Width of the residual stream.
        num_heads: Number of query heads.
        num_kv_heads: Number of key/value heads (`num_heads` for MHA, 1 for MQA, in between for GQA).
        head_dim: Width of one head.
    """

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads={self.num_heads} is not a multiple of num_key_value_heads={self.num_kv_heads}"
            )

    @classmethod
    def from_config(cls, config: "PretrainedConfig") -> "HeadDims":
        num_heads = config.num_attention_heads
        num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
        return cls(config.hidden_size, num_heads, num_kv_heads, head_dim)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim


class QKLayout:
    """How the query and key projections are stored in an attention module's tensors."""

    def tensor_names(self) -> tuple[str, ...]:
        """Names, relative to the attention module, of the tensors that hold Q and K."""
        raise NotImplementedError

    def extract(self, tensors: Mapping[str, "torch.Tensor"], dims: HeadDims) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Returns `(q, k)` of shapes `[num_heads, head_dim, hidden]` and `[num_kv_heads, head_dim, hidden]`."""
        raise NotImplementedError


@dataclass(frozen=True)
class SeparateProjections(QKLayout):
    """`q_proj` and `k_proj` are separate `nn.Linear` layers (llama, mistral, qwen2)."""

    q: str = "q_proj"
    k: str = "k_proj"

    def tensor_names(self):
        return (f"{self.q}.weight", f"{self.k}.weight")

    def extract(self, tensors, dims):
        q = tensors[f"{self.q}.weight"].reshape(dims.num_heads, dims.head_dim, dims.hidden_size)
        k = tensors[f"{self.k}.weight"].reshape(dims.num_kv_heads, dims.head_dim, dims.hidden_size)
        return q, k


@dataclass(frozen=True)
class FusedRows(QKLayout):
    """One `nn.Linear` whose output rows are `[Q; K; V]`, K and V sized by the KV heads (phi3 `qkv_proj`)."""

    name: str = "qkv_proj"

    def tensor_names(self):
        return (f"{self.name}.weight",)

    def extract(self, tensors, dims):
        weight = tensors[f"{self.name}.weight"]
        q = weight[: dims.q_size].reshape(dims.num_heads, dims.head_dim, dims.hidden_size)
        k = weight[dims.q_size : dims.q_size + dims.kv_size].reshape(
            dims.num_kv_heads, dims.head_dim, dims.hidden_size
        )
        return q, k


@dataclass(frozen=True)
class FusedConv1D(QKLayout):
    """GPT-2's `Conv1D`: weight stored `[in, out]`, output columns `[Q, K, V]` (MHA only)."""

    name: str = "c_attn"

    def tensor_names(self):
        return (f"{self.name}.weight",)

    def extract(self, tensors, dims):
        weight = tensors[f"{self.name}.weight"]  # [hidden, 3 * hidden]
        q = weight[:, : dims.q_size].T.reshape(dims.num_heads, dims.head_dim, dims.hidden_size)
        k = weight[:, dims.q_size : 2 * dims.q_size].T.reshape(dims.num_kv_heads, dims.head_dim, dims.hidden_size)
        return q, k


@dataclass(frozen=True)
class HeadInterleaved(QKLayout):
    """GPT-NeoX's `query_key_value`: output rows grouped per head as `[q_h; k_h; v_h]`."""

    name: str = "query_key_value"

    def tensor_names(self):
        return (f"{self.name}.weight",)

    def extract(self, tensors, dims):
        weight = tensors[f"{self.name}.weight"].reshape(dims.num_heads, 3, dims.head_dim, dims.hidden_size)
        return weight[:, 0], weight[:, 1]


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Where one decoder-only architecture keeps its attention sublayers.

    Paths are attribute paths from the `*ForCausalLM` model (for modules) or from one decoder layer.

    Args:
        model_types: The `config.model_type` values this adapter serves.
        layers: Path of the `nn.ModuleList` of decoder layers, e.g. `"model.layers"`.
        attention: Name of the attention module inside a decoder layer.
        input_norm: Name of the pre-attention norm inside a decoder layer.
        post_norm: Name of the norm in front of the MLP inside a decoder layer.
        qk: How Q and K are stored in the attention module.
        mlp: Name of the MLP inside a decoder layer.
        mlp_dropout: Name of a dropout applied to the MLP output before the residual add, if any.
        returns_tuple: Whether a decoder layer returns `(hidden_states, ...)` instead of a tensor.
        unsupported_flags: `(config attribute, reason)` pairs; a truthy attribute makes the model unsupported.
    """

    model_types: tuple[str, ...]
    layers: str
    attention: str
    input_norm: str
    post_norm: str
    qk: QKLayout
    mlp: str = "mlp"
    mlp_dropout: str | None = None
    returns_tuple: bool = False
    unsupported_flags: tuple[tuple[str, str], ...] = ()

    @property
    def base_model_prefix(self) -> str:
        """First component of `layers`; some checkpoints store weights without it (e.g. `h.0.attn...`)."""
        return self.layers.split(".", 1)[0]

    def layer_prefix(self, index: int) -> str:
        return f"{self.layers}.{index}"

    def attention_prefix(self, index: int) -> str:
        return f"{self.layer_prefix(index)}.{self.attention}"

    def qk_tensor_names(self, index: int) -> tuple[str, ...]:
        """Checkpoint names of the tensors that hold layer `index`'s Q and K."""
        prefix = self.attention_prefix(index)
        return tuple(f"{prefix}.{name}" for name in self.qk.tensor_names())

    def norm_tensor_name(self, index: int) -> str:
        return f"{self.layer_prefix(index)}.{self.input_norm}.weight"

    def pruned_module_prefixes(self, index: int) -> tuple[str, str]:
        """Module paths that disappear when layer `index`'s attention sublayer is removed."""
        return (self.attention_prefix(index), f"{self.layer_prefix(index)}.{self.input_norm}")

    def check_config(self, config: "PretrainedConfig") -> None:
        from ..errors import UnsupportedModelError

        for flag, reason in self.unsupported_flags:
            if getattr(config, flag, False):
                raise UnsupportedModelError(
                    f"{config.model_type} with {flag}={getattr(config, flag)!r} is not supported: {reason}"
                )
