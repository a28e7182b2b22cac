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
    "MLPLayout",
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
    """How the query, key, value and output projections are stored in an attention module's tensors.

    Subclasses name the fused or separate tensors; `o` is the output projection (`nn.Linear` unless noted).
    """

    o: str

    def tensor_names(self) -> tuple[str, ...]:
        """Names, relative to the attention module, of the tensors that hold Q and K."""
        raise NotImplementedError

    def extract(self, tensors: Mapping[str, "torch.Tensor"], dims: HeadDims) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Returns `(q, k)` of shapes `[num_heads, head_dim, hidden]` and `[num_kv_heads, head_dim, hidden]`."""
        raise NotImplementedError

    def ov_tensor_names(self) -> tuple[str, ...]:
        """Names, relative to the attention module, of the tensors that hold V and the output projection."""
        raise NotImplementedError

    def extract_ov(
        self, tensors: Mapping[str, "torch.Tensor"], dims: HeadDims
    ) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Returns `(v, o)` of shapes `[num_kv_heads, head_dim, hidden]` and `[num_heads, hidden, head_dim]`.

        `o[h] @ v[g(h)]` maps the (attention-weighted) input of head `h` to what it adds to the residual stream.
        """
        raise NotImplementedError

    def _linear_o(self, tensors, dims):
        # nn.Linear output projection: weight [hidden, num_heads * head_dim]
        weight = tensors[f"{self.o}.weight"]
        return weight.reshape(dims.hidden_size, dims.num_heads, dims.head_dim).permute(1, 0, 2)


@dataclass(frozen=True)
class SeparateProjections(QKLayout):
    """`q_proj` and `k_proj` are separate `nn.Linear` layers (llama, mistral, qwen2)."""

    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    o: str = "o_proj"

    def tensor_names(self):
        return (f"{self.q}.weight", f"{self.k}.weight")

    def extract(self, tensors, dims):
        q = tensors[f"{self.q}.weight"].reshape(dims.num_heads, dims.head_dim, dims.hidden_size)
        k = tensors[f"{self.k}.weight"].reshape(dims.num_kv_heads, dims.head_dim, dims.hidden_size)
        return q, k

    def ov_tensor_names(self):
        return (f"{self.v}.weight", f"{self.o}.weight")

    def extract_ov(self, tensors, dims):
        v = tensors[f"{self.v}.weight"].reshape(dims.num_kv_heads, dims.head_dim, dims.hidden_size)
        return v, self._linear_o(tensors, dims)


@dataclass(frozen=True)
class FusedRows(QKLayout):
    """One `nn.Linear` whose output rows are `[Q; K; V]`, K and V sized by the KV heads (phi3 `qkv_proj`)."""

    name: str = "qkv_proj"
    o: str = "o_proj"

    def tensor_names(self):
        return (f"{self.name}.weight",)

    def extract(self, tensors, dims):
        weight = tensors[f"{self.name}.weight"]
        q = weight[: dims.q_size].reshape(dims.num_heads, dims.head_dim, dims.hidden_size)
        k = weight[dims.q_size : dims.q_size + dims.kv_size].reshape(
            dims.num_kv_heads, dims.head_dim, dims.hidden_size
        )
        return q, k

    def ov_tensor_names(self):
        return (f"{self.name}.weight", f"{self.o}.weight")

    def extract_ov(self, tensors, dims):
        weight = tensors[f"{self.name}.weight"]
        v = weight[dims.q_size + dims.kv_size :].reshape(dims.num_kv_heads, dims.head_dim, dims.hidden_size)
        return v, self._linear_o(tensors, dims)


@dataclass(frozen=True)
class FusedConv1D(QKLayout):
    """GPT-2's `Conv1D`: weight stored `[in, out]`, output columns `[Q, K, V]` (MHA only)."""

    name: str = "c_attn"
    o: str = "c_proj"  # also a Conv1D: weight [num_heads * head_dim, hidden]

    def tensor_names(self):
        return (f"{self.name}.weight",)

    def extract(self, tensors, dims):
        weight = tensors[f"{self.name}.weight"]  # [hidden, 3 * hidden]
        q = weight[:, : dims.q_size].T.reshape(dims.num_heads, dims.head_dim, dims.hidden_size)
        k = weight[:, dims.q_size : 2 * dims.q_size].T.reshape(dims.num_kv_heads, dims.head_dim, dims.hidden_size)
        return q, k

    def ov_tensor_names(self):
        return (f"{self.name}.weight", f"{self.o}.weight")

    def extract_ov(self, tensors, dims):
        weight = tensors[f"{self.name}.weight"]
        v = weight[:, 2 * dims.q_size :].T.reshape(dims.num_kv_heads, dims.head_dim, dims.hidden_size)
        o = tensors[f"{self.o}.weight"].reshape(dims.num_heads, dims.head_dim, dims.hidden_size).transpose(1, 2)
        return v, o


@dataclass(frozen=True)
class HeadInterleaved(QKLayout):
    """GPT-NeoX's `query_key_value`: output rows grouped per head as `[q_h; k_h; v_h]`."""

    name: str = "query_key_value"
    o: str = "dense"

    def tensor_names(self):
        return (f"{self.name}.weight",)

    def extract(self, tensors, dims):
        weight = tensors[f"{self.name}.weight"].reshape(dims.num_heads, 3, dims.head_dim, dims.hidden_size)
        return weight[:, 0], weight[:, 1]

    def ov_tensor_names(self):
        return (f"{self.name}.weight", f"{self.o}.weight")

    def extract_ov(self, tensors, dims):
        weight = tensors[f"{self.name}.weight"].reshape(dims.num_heads, 3, dims.head_dim, dims.hidden_size)
        return weight[:, 2], self._linear_o(tensors, dims)


@dataclass(frozen=True)
class MLPLayout:
    """How an MLP `down(act(up(x)))` or gated `down(act(gate(x)) * up(x))` stores its weights.

    Args:
        up: Tensor (without `.weight`) of the input projection; for `fused_gate_up`, rows `[gate; up]`.
        down: Tensor of the output projection.
        gate: Tensor of a separate gate projection (gated MLPs such as llama's), else `None`.
        fused_gate_up: Whether `up` holds the gate rows first, then the up rows (phi3 `gate_up_proj`).
        conv1d: Whether weights are GPT-2 `Conv1D`s, stored `[in, out]`.
        activation: Config attribute that names the activation function (a key of transformers' `ACT2FN`).
    """

    up: str
    down: str
    gate: str | None = None
    fused_gate_up: bool = False
    conv1d: bool = False
    activation: str = "hidden_act"

    @property
    def gated(self) -> bool:
        return self.gate is not None or self.fused_gate_up

    def tensor_names(self) -> tuple[str, ...]:
        """Names, relative to the MLP module, of its weight tensors."""
        names = [self.up, self.down] + ([self.gate] if self.gate else [])
        return tuple(f"{name}.weight" for name in names)

    def extract(self, tensors: Mapping[str, "torch.Tensor"]):
        """Returns `(gate, up, down)` in the `nn.Linear` convention: `[inner, hidden]`, `[inner, hidden]` (gate
        `None` if not gated) and `[hidden, inner]`."""
        up, down = tensors[f"{self.up}.weight"], tensors[f"{self.down}.weight"]
        gate = tensors[f"{self.gate}.weight"] if self.gate else None
        if self.conv1d:
            up, down = up.T, down.T
            gate = gate.T if gate is not None else None
        if self.fused_gate_up:
            gate, up = up.chunk(2, dim=0)
        return gate, up, down


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
        qk: How Q, K, V and the output projection are stored in the attention module.
        mlp_layout: How the MLP stores its weights (used by weight-only criteria that estimate the MLP's output
            scale); `None` if unknown.
        embedding: Path of the token embedding module, e.g. `"model.embed_tokens"`.
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
    mlp_layout: MLPLayout | None = None
    embedding: str | None = None
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

    def ov_tensor_names(self, index: int) -> tuple[str, ...]:
        """Checkpoint names of the tensors that hold layer `index`'s V and output projection."""
        prefix = self.attention_prefix(index)
        return tuple(f"{prefix}.{name}" for name in self.qk.ov_tensor_names())

    def mlp_tensor_names(self, index: int) -> tuple[str, ...]:
        """Checkpoint names of layer `index`'s MLP weights (empty without an `mlp_layout`)."""
        if self.mlp_layout is None:
            return ()
        return tuple(f"{self.layer_prefix(index)}.{self.mlp}.{name}" for name in self.mlp_layout.tensor_names())

    def norm_tensor_name(self, index: int) -> str:
        return f"{self.layer_prefix(index)}.{self.input_norm}.weight"

    def post_norm_tensor_name(self, index: int) -> str:
        return f"{self.layer_prefix(index)}.{self.post_norm}.weight"

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
