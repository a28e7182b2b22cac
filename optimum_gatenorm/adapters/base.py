"""Every per-architecture fact, as data.

An `ArchitectureAdapter` says where the decoder layers, the attention module, its norms and its MLP are, what a
pruned layer loses and still runs, how norms apply their gain, what the cost model counts (`ParameterLayout`),
which onnxruntime quirks apply, and a tiny random config for tests; a `QKLayout` says how the query and key
projections are stored in the attention module's tensors. Scoring, pruning, the cost model, the exporter and the
tests only talk to these objects; nothing outside `optimum_gatenorm.adapters` asks for `model_type`.

All extracted projections use the `nn.Linear` convention: `q[h]` is the `[head_dim, hidden]` block that maps a
hidden state `x` to the query of head `h` (`q_h = q[h] @ x`), so `W_Q^h = q[h].T` in the paper's notation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal


if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig

from ..errors import UnsupportedModelError


# The shape every tiny test model shares (hidden 32, 4 layers, 4 query heads); adapters add their own keys.
TINY_COMMON = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4)

__all__ = [
    "TINY_COMMON",
    "ArchitectureAdapter",
    "CompatFacts",
    "ForTests",
    "FusedConv1D",
    "FusedRows",
    "HeadDims",
    "HeadInterleaved",
    "MLPLayout",
    "Numerics",
    "OnnxFacts",
    "ParameterLayout",
    "QKLayout",
    "SeparateProjections",
    "ServingFacts",
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
    storage: str = ""  # how the tensors hold Q and K, for the supported-architectures table

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

    storage = "separate"

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

    storage = "fused rows [Q; K; V]"

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

    storage = "fused Conv1D, stored [in, out]"

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

    storage = "fused, interleaved per head"

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
class ParameterLayout:
    """What the cost model's parameter count of one architecture depends on, besides the config's sizes.

    Whether the MLP is gated (three matrices instead of two) is the adapter's `mlp_layout.gated`; how many norms a
    pruned layer loses is the number of norms in its `pruned_modules`; per-head query/key norms are `qk_norms`.

    Args:
        norm_bias: Norms are LayerNorms with a bias (2 * D parameters) instead of RMSNorms (D).
        qkv_bias: The q, k and v projections have biases.
        o_bias: The output projection has a bias.
        mlp_bias: Every MLP matrix has a bias.
        attention_bias_attr: Config attribute that, when present, overrides `qkv_bias` and `o_bias`.
        mlp_bias_attr: Config attribute that, when present, overrides `mlp_bias`.
        intermediate_attr: Config attribute holding the MLP width; `None` or missing means 4 * D.
        position_embeddings_attr: Config attribute holding the number of learned position embeddings, if any.
        norms_per_layer: Hidden-size norms in an unpruned decoder layer (2; 4 for sandwich-norm models). One final
            norm after the last layer is counted besides.
    """

    norm_bias: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    attention_bias_attr: str | None = None
    mlp_bias_attr: str | None = None
    intermediate_attr: str = "intermediate_size"
    position_embeddings_attr: str | None = None
    norms_per_layer: int = 2


@dataclass(frozen=True)
class Numerics:
    """How the layer's norms and the embedding scale their input (read by the weight-only criteria).

    Args:
        norm_gain_offset: A norm multiplies by `weight + norm_gain_offset`: 0.0 for `w`, 1.0 for Gemma's `1 + w`.
        embedding_scale: How token embeddings are scaled before the first layer: `None`, or `"sqrt_hidden"`
            (multiplied by `sqrt(hidden_size)`, as Gemma does).
    """

    norm_gain_offset: float = 0.0
    embedding_scale: Literal["sqrt_hidden"] | None = None

    def __post_init__(self):
        if self.norm_gain_offset not in (0.0, 1.0):
            raise ValueError(f"norm_gain_offset must be 0.0 (w) or 1.0 (1 + w), got {self.norm_gain_offset!r}")
        if self.embedding_scale not in (None, "sqrt_hidden"):
            raise ValueError(f"embedding_scale must be None or 'sqrt_hidden', got {self.embedding_scale!r}")


@dataclass(frozen=True)
class OnnxFacts:
    """What optimum's `ORTModelForCausalLM` reads for this model type (`exporters.onnx.check_onnx_exportable`).

    Args:
        reads_kv_heads: It reads `num_key_value_heads` (else it sizes the empty KV cache with
            `num_attention_heads`, so grouped-query models cannot run).
        reads_head_dim: It reads `head_dim` (else it takes `hidden_size // num_attention_heads`, so models with
            another head_dim cannot run).
    """

    reads_kv_heads: bool = False
    reads_head_dim: bool = False


@dataclass(frozen=True)
class ServingFacts:
    """What the GGUF and Nemotron-NAS exports can write (`exporters.serving`, `exporters.gguf`).

    Args:
        llama_cpp_arch: llama.cpp architecture (`general.architecture` of a GGUF file) that runs this model type
            unpruned, with the q/k row permutation of llama-style rope (`llama`), or `None` if the GGUF exporter
            cannot write it. A pruned model is written as llama.cpp's `deci` instead (per-layer head counts, 0 for
            an attention-free layer), so only Llama-family layouts qualify.
        nemotron_nas: The checkpoint can be written as NVIDIA's Nemotron-NAS (`DeciLMForCausalLM`): Llama layer
            layout and weight names, no biases, one rope and no sliding window.
        unsupported_flags: `(config attribute, reason)` pairs that make both exports refuse the model when truthy
            (e.g. a sliding window neither format expresses).
    """

    llama_cpp_arch: str | None = None
    nemotron_nas: bool = False
    unsupported_flags: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class CompatFacts:
    """Where transformers 4.57 differs from 5.x for this model type (`optimum_gatenorm.compat`).

    Args:
        returns_tuple: A decoder layer returns `(hidden_states, ...)` instead of a tensor on 4.57 (on 5.x every
            layer returns a tensor; `compat.layer_returns_tuple` reads this).
        legacy_rope_names: Where 4.57 reads what 5.x keeps in `config.rope_parameters`: key of `rope_parameters`
            (`"<layer type>.<key>"` for per-layer-type parameters) -> 4.57 config attribute. Default:
            `rope_theta` and `partial_rotary_factor` under their own names (`compat` also writes `rope_scaling`).
            Checkpoints saved on 5.x carry these too, so 4.57 reads them right.
    """

    returns_tuple: bool = False
    legacy_rope_names: Mapping[str, str] = field(
        default_factory=lambda: {"rope_theta": "rope_theta", "partial_rotary_factor": "partial_rotary_factor"},
        hash=False,
    )


@dataclass(frozen=True)
class ForTests:
    """What the test suite and the docs' code blocks build for this model type.

    Args:
        tiny_config: A tiny random config: `AutoConfig.for_model(model_type, **tiny_config)` kwargs (no
            `model_type`); hidden 32, 4 layers, 4 query heads, vocabulary 128. Read-only.
    """

    tiny_config: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self):
        if "model_type" in self.tiny_config:
            raise ValueError("tiny_config must not name model_type; it is built once per entry of model_types")


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Everything the package knows about one decoder-only architecture.

    Adding an architecture is one module in `optimum_gatenorm/adapters/` that builds and registers one of these per
    model type (docs/architectures.md, "Add an architecture"). The layout (where things are, what a pruned layer
    loses and runs) is read by scoring, pruning and the checkpoint code, so it is flat; the facts only one consumer
    reads are grouped by that consumer: `numerics` (criteria), `onnx` (ONNX export), `serving` (GGUF and
    Nemotron-NAS), `cost` (the cost model), `compat` (transformers 4.57) and `tests` (the test suite).

    Paths are attribute paths from the `*ForCausalLM` model (for modules) or from one decoder layer.

    Args:
        model_types: The `config.model_type` values this adapter serves.
        layers: Path of the `nn.ModuleList` of decoder layers, e.g. `"model.layers"`.
        attention: Name of the attention module inside a decoder layer.
        input_norm: Name of the pre-attention norm inside a decoder layer (its gain is Gate-Norm's `g`).
        post_norm: Name of the norm in front of the MLP inside a decoder layer.
        qk: How Q, K, V and the output projection are stored in the attention module.
        mlp_layout: How the MLP stores its weights (used by weight-only criteria that estimate the MLP's output
            scale); `None` if unknown.
        embedding: Path of the token embedding module, e.g. `"model.embed_tokens"`.
        mlp: Name of the MLP inside a decoder layer.
        unsupported_flags: `(config attribute, reason)` pairs; a truthy attribute makes the model unsupported.
        pruned_modules: Modules a pruned layer loses: the attention module first, then the norms that only serve it
            (hidden-size norms, counted by the cost model). Default `(attention, input_norm)`; sandwich-norm models
            add their post-attention norm.
        pruned_forward: Modules a pruned layer still runs, in order: it computes `h + m_n(...m_1(h))`. Default
            `(post_norm, mlp)`; add an MLP-output dropout or a post-MLP norm where the layer applies one.
        qk_norms: Names, inside the attention module, of the per-head query and key norms, or `None`.
        attention_output_norm: Name of a norm applied to the attention output before the residual add (Gemma's
            sandwich `post_attention_layernorm`), or `None`; it must be one of `pruned_modules`.
        mlp_output_norm: Name of a norm applied to the MLP output before the residual add (Gemma's
            `post_feedforward_layernorm`), or `None`; it must be one of `pruned_forward`.
        parallel_residual_attr: Config attribute that, when truthy, makes the MLP read the layer's input rather than
            the stream after the attention update (`h + attn(ln1(h)) + mlp(ln2(h))`, GPT-NeoX), or `None` when the
            layer is always sequential. A replaced attention sublayer (`pruning.replacement`) adds its output where
            the attention's went.
        layer_types_attr: Config attribute listing each layer's attention type (full / sliding window); pruning
            gives the compacted KV cache one slot per kept layer of that layer's own type
            (`checkpoints.structure.CacheLayerTypesConfigMixin`). `None` if the architecture has none.
        notes: One line for the supported-architectures table (`describe_architectures`): what is special about the
            family, and which of its options are refused.
        quality_reference: The built-in model on which the criterion study measured the family nearest to this
            architecture (`optimum_gatenorm.criteria.measurements`), so that `prune` can warn past the measured
            limits; `None` if no measured family is close (then `prune` says the criteria were never measured on it).
        numerics: How norms and the embedding scale their input (`Numerics`).
        onnx: What optimum's `ORTModelForCausalLM` reads for this model type (`OnnxFacts`).
        serving: What the GGUF and Nemotron-NAS exports can write (`ServingFacts`).
        cost: What the cost model's parameter count depends on (`ParameterLayout`).
        compat: Where transformers 4.57 differs (`CompatFacts`).
        tests: A tiny random config for tests and docs (`ForTests`).
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
    unsupported_flags: tuple[tuple[str, str], ...] = ()
    pruned_modules: tuple[str, ...] = ()
    pruned_forward: tuple[str, ...] = ()
    qk_norms: tuple[str, str] | None = None
    attention_output_norm: str | None = None
    mlp_output_norm: str | None = None
    parallel_residual_attr: str | None = None
    layer_types_attr: str | None = "layer_types"
    notes: str = ""
    quality_reference: str | None = None
    numerics: Numerics = Numerics()
    onnx: OnnxFacts = OnnxFacts()
    serving: ServingFacts = ServingFacts()
    cost: ParameterLayout = ParameterLayout()
    compat: CompatFacts = CompatFacts()
    tests: ForTests = ForTests()

    def __post_init__(self):
        if not self.pruned_modules:
            object.__setattr__(self, "pruned_modules", (self.attention, self.input_norm))
        if not self.pruned_forward:
            object.__setattr__(self, "pruned_forward", (self.post_norm, self.mlp))
        if self.pruned_modules[0] != self.attention or self.input_norm not in self.pruned_modules:
            raise ValueError(
                f"pruned_modules={self.pruned_modules!r} must start with the attention module {self.attention!r} and "
                f"include the input norm {self.input_norm!r}"
            )
        if self.mlp not in self.pruned_forward or set(self.pruned_forward) & set(self.pruned_modules):
            raise ValueError(
                f"pruned_forward={self.pruned_forward!r} must run the MLP {self.mlp!r} and no module of "
                f"pruned_modules={self.pruned_modules!r}"
            )
        attention_only_norms = set(self.pruned_modules) - {self.attention, self.input_norm}
        if self.attention_output_norm is not None and self.attention_output_norm not in attention_only_norms:
            raise ValueError(
                f"attention_output_norm={self.attention_output_norm!r} must be one of the norms in "
                f"pruned_modules={self.pruned_modules!r}"
            )
        if self.mlp_output_norm is not None and self.mlp_output_norm not in self.pruned_forward:
            raise ValueError(
                f"mlp_output_norm={self.mlp_output_norm!r} must be one of pruned_forward={self.pruned_forward!r}"
            )

    @property
    def base_model_prefix(self) -> str:
        """First component of `layers`; some checkpoints store weights without it (e.g. `h.0.attn...`)."""
        return self.layers.split(".", 1)[0]

    @property
    def attention_norms(self) -> int:
        """Hidden-size norms a pruned layer loses with its attention (1; 2 for sandwich-norm models)."""
        return len(self.pruned_modules) - 1

    def parallel_residual(self, config: "PretrainedConfig") -> bool:
        """Whether the MLP of a layer of `config` reads the layer's input instead of the attention-updated stream."""
        return bool(self.parallel_residual_attr and getattr(config, self.parallel_residual_attr, False))

    def norm_gain(self, weight: "torch.Tensor") -> "torch.Tensor":
        """The factor a norm with this `weight` multiplies by (`weight + numerics.norm_gain_offset`)."""
        offset = self.numerics.norm_gain_offset
        return weight + offset if offset else weight

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

    def pruned_module_prefixes(self, index: int) -> tuple[str, ...]:
        """Module paths that disappear when layer `index`'s attention sublayer is removed (`pruned_modules`)."""
        return tuple(f"{self.layer_prefix(index)}.{name}" for name in self.pruned_modules)

    def describe(self, model_type: str) -> dict:
        """One row of the supported-architectures table: where Q and K live and what each export takes."""
        names = ", ".join(f"{self.attention}.{name.removesuffix('.weight')}" for name in self.qk.tensor_names())
        onnx = "yes"
        if not self.onnx.reads_kv_heads:
            onnx = "multi-head attention only (no GQA/MQA)"
        elif not self.onnx.reads_head_dim:
            onnx = "head_dim = hidden_size / heads only"
        return {
            "model_type": model_type,
            "query_key": f"{names} ({self.qk.storage})",
            "onnx": onnx,
            "gguf": self.serving.llama_cpp_arch is not None,
            "nemotron_nas": self.serving.nemotron_nas,
            "quality_measured_on": self.quality_reference,
            "notes": self.notes,
        }

    def check_config(self, config: "PretrainedConfig") -> None:

        for flag, reason in self.unsupported_flags:
            if getattr(config, flag, False):
                raise UnsupportedModelError(
                    f"{config.model_type} with {flag}={getattr(config, flag)!r} is not supported: {reason}"
                )
