"""An analytical cost model: the best speed-up removing attention sublayers can give.

Benchmarks print the measured throughput ratio next to the ideal one from this module ("efficiency = measured /
ideal"). Two ideals bound any implementation: `compute_bound` (ratio of FLOPs, baseline / pruned) and
`memory_bound` (ratio of bytes moved). Both are exactly 1.0 when no layer is pruned and > 1 when some are.

What is counted (see `ModelCost.prefill` and `ModelCost.decode_step` for the formulas):

* FLOPs: matrix multiplications only, 2 FLOPs per multiply-add. Biases, norms, activations, rotary embeddings,
  softmax and residual adds are elementwise and left out.
* Bytes: every weight read once per forward, the rows the embedding lookup gathers, and the KV cache traffic.
  Activations are left out (they stay in cache for small batches and are the same with or without pruning, up to
  the attention outputs).

Parameters are counted from the architecture adapter's facts (`ArchitectureAdapter.cost`, its MLP layout, its
`pruned_modules` and `qk_norms`), so that `ModelCost.num_parameters` equals
`sum(p.numel() for p in model.parameters())` (tied weights once) of the real model, pruned or not. A pruned layer
loses its attention projections (with their biases and query/key norms) and the norms that only serve the
attention (`pruned_modules`); it keeps its MLP and the norms around the MLP. A *replaced* layer
(`optimum_gatenorm.pruning.replacement`) adds its replacement back: `mean` a D-vector (no matrix product), `linear`
a bias-free D x D matrix on the output of the layer's input norm, which it keeps (one D x D product per token).

Sliding-window layers (Gemma-2/3's `layer_types`, Mistral's and Phi-3's `sliding_window`) attend to the last W
positions only. On an engine that exploits the window (`ModelCost.window_aware`, the default: llama.cpp's SWA cache,
transformers' sliding cache for decode) such a layer's scores and KV-cache reads stop growing at W, so at a context
past W removing it saves less than removing a global layer; the planner therefore counts the cheapest layers first.
With `window_aware=False` every layer costs the full context, as the ONNX export runs on onnxruntime.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from ..adapters import get_adapter
from ..adapters.base import HeadDims
from ..checkpoints.record import get_pruned_layers, get_replacements
from ..checkpoints.structure import validate_pruned_set
from ..errors import InvalidConfigError


if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from transformers import PretrainedConfig

__all__ = ["Cost", "ModelCost", "ideal_speedup", "replacement_share", "sliding_window_layers"]


@dataclass(frozen=True)
class Cost:
    """The work of one forward pass.

    Args:
        flops: Floating-point operations (2 per multiply-add), matrix products only.
        bytes: Bytes read or written from memory: weights, embedding rows, KV cache.
        flops_breakdown: `flops` split by component (the values sum to `flops`).
        bytes_breakdown: `bytes` split by component (the values sum to `bytes`).
    """

    flops: int
    bytes: int
    flops_breakdown: dict[str, int] = field(default_factory=dict)
    bytes_breakdown: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        assert sum(self.flops_breakdown.values()) == self.flops
        assert sum(self.bytes_breakdown.values()) == self.bytes

    @property
    def arithmetic_intensity(self) -> float:
        """FLOPs per byte moved."""
        return self.flops / self.bytes

    def to_dict(self) -> dict:
        return {
            "flops": self.flops,
            "bytes": self.bytes,
            "arithmetic_intensity": self.arithmetic_intensity,
            "flops_breakdown": dict(self.flops_breakdown),
            "bytes_breakdown": dict(self.bytes_breakdown),
        }


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class ModelCost:
    """Sizes of a decoder-only model, pruned or not, and the cost of its forward passes.

    Build it with `ModelCost.from_config`. Notation used in the formulas: D hidden size, L layers, K kept attention
    layers, H query heads, G key/value heads, d head_dim, I MLP width, V vocabulary, B batch, P prompt length,
    C context length, s `dtype_bytes`.

    Args:
        model_type: `config.model_type`.
        hidden_size: D.
        num_layers: L.
        pruned_layers: Sorted indices of the layers without attention.
        head_dims: Query heads H, key/value heads G, head_dim d.
        intermediate_size: I.
        gated_mlp: Three MLP matrices (D x I each) instead of two.
        vocab_size: V.
        tie_word_embeddings: The LM head shares the input embedding matrix.
        position_embeddings: Rows of the learned position embedding table (0 when positions are rotary).
        qkv_bias: The q, k, v projections have biases.
        o_bias: The output projection has a bias.
        mlp_bias: The MLP matrices have biases.
        norm_bias: Norms have a bias besides their weight (LayerNorm) or not (RMSNorm).
        norms_per_layer: Hidden-size norms in an unpruned decoder layer (2, or 4 with sandwich norms).
        attention_norms_per_layer: Of those, the norms a pruned layer loses with its attention (1, or 2).
        qk_norms: The attention has per-head query and key norms (head_dim-sized, shared by the heads).
        dtype_bytes: s, bytes per parameter and per KV cache element.
        replacements: `(layer, kind)` pairs, sorted: the pruned layers that hold a replacement (`"mean"` or
            `"linear"`); the other pruned layers are plain removals.
        sliding_window: W, the positions a sliding-window layer attends to (`None`: no such layers).
        sliding_layers: Sorted indices of the sliding-window layers (the others attend to the whole context).
        window_aware: The engine limits a sliding layer's scores and KV cache to its window; `False`: it computes
            the full causal product and keeps every position.
    """

    model_type: str
    hidden_size: int
    num_layers: int
    pruned_layers: tuple[int, ...]
    head_dims: HeadDims
    intermediate_size: int
    gated_mlp: bool
    vocab_size: int
    tie_word_embeddings: bool
    position_embeddings: int = 0
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    norm_bias: bool = False
    norms_per_layer: int = 2
    attention_norms_per_layer: int = 1
    qk_norms: bool = False
    dtype_bytes: int = 4
    replacements: tuple[tuple[int, str], ...] = ()
    sliding_window: int | None = None
    sliding_layers: tuple[int, ...] = ()
    window_aware: bool = True

    def __post_init__(self):
        _positive("dtype_bytes", self.dtype_bytes)
        sliding = tuple(sorted(set(int(layer) for layer in self.sliding_layers)))
        if sliding and (sliding[0] < 0 or sliding[-1] >= self.num_layers):
            raise InvalidConfigError(f"sliding_layers {list(sliding)} must be in 0..{self.num_layers - 1}")
        if sliding and self.sliding_window is None:
            raise InvalidConfigError("sliding_layers need a sliding_window")
        if self.sliding_window is not None:
            _positive("sliding_window", self.sliding_window)
        object.__setattr__(self, "sliding_layers", sliding)
        object.__setattr__(self, "pruned_layers", tuple(validate_pruned_set(self.pruned_layers, self.num_layers)))
        replacements = tuple(sorted((int(layer), kind) for layer, kind in dict(self.replacements).items()))
        for layer, kind in replacements:
            if layer not in self.pruned_layers:
                raise InvalidConfigError(
                    f"replacements name layer {layer}, which is not pruned {list(self.pruned_layers)}"
                )
            if kind not in ("mean", "linear"):
                raise InvalidConfigError(f"layer {layer} has replacement {kind!r}; known: mean, linear")
        object.__setattr__(self, "replacements", replacements)

    @classmethod
    def from_config(
        cls,
        config: "PretrainedConfig",
        pruned_layers: "Iterable[int] | None" = None,
        dtype_bytes: int = 4,
        replacements: "Mapping[int, str] | None" = None,
        window_aware: bool = True,
    ) -> "ModelCost":
        """Reads the sizes from a transformers config.

        Args:
            config: The model's config.
            pruned_layers: Layers without attention; defaults to those recorded in the config
                (`get_pruned_layers(config)`, `[]` for an unpruned model).
            dtype_bytes: Bytes per weight and per KV cache element (4 for float32, 2 for float16/bfloat16).
            replacements: Pruned layer -> `"mean"` or `"linear"`; defaults to the replacements recorded in the
                config (`get_replacements(config)`) of the layers in `pruned_layers`.
            window_aware: As the field (sliding-window layers are read from the config, `sliding_window_layers`).

        Raises:
            UnsupportedModelError: If the model type has no architecture adapter.
            InvalidConfigError: If a pruned layer index is out of range or all layers are pruned.
        """
        adapter = get_adapter(config.model_type)
        arch = adapter.cost
        hidden = config.hidden_size
        attention_bias = getattr(config, arch.attention_bias_attr, None) if arch.attention_bias_attr else None
        mlp_bias = getattr(config, arch.mlp_bias_attr, None) if arch.mlp_bias_attr else None
        positions = getattr(config, arch.position_embeddings_attr) if arch.position_embeddings_attr else 0
        pruned = tuple(get_pruned_layers(config) if pruned_layers is None else pruned_layers)
        if replacements is None:
            replacements = {layer: kind for layer, kind in get_replacements(config).items() if layer in pruned}
        return cls(
            model_type=config.model_type,
            hidden_size=hidden,
            num_layers=config.num_hidden_layers,
            pruned_layers=pruned,
            head_dims=HeadDims.from_config(config),
            intermediate_size=getattr(config, arch.intermediate_attr, None) or 4 * hidden,
            gated_mlp=adapter.mlp_layout.gated,
            vocab_size=config.vocab_size,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            position_embeddings=positions,
            qkv_bias=arch.qkv_bias if attention_bias is None else bool(attention_bias),
            o_bias=arch.o_bias if attention_bias is None else bool(attention_bias),
            mlp_bias=arch.mlp_bias if mlp_bias is None else bool(mlp_bias),
            norm_bias=arch.norm_bias,
            norms_per_layer=arch.norms_per_layer,
            attention_norms_per_layer=adapter.attention_norms,
            qk_norms=adapter.qk_norms is not None,
            dtype_bytes=dtype_bytes,
            replacements=tuple(dict(replacements).items()),
            **dict(zip(("sliding_window", "sliding_layers"), sliding_window_layers(config), strict=True)),
            window_aware=window_aware,
        )

    # Layers.

    def span(self, layer: int, length: int) -> int:
        """The positions `layer` attends to in a context of `length`: `min(length, W)` for a sliding-window layer on
        a window-aware engine, else `length`."""
        if self.window_aware and self.sliding_window is not None and layer in self.sliding_layers:
            return min(length, self.sliding_window)
        return length

    @property
    def kept_layers(self) -> tuple[int, ...]:
        """Layers that still have attention."""
        return tuple(i for i in range(self.num_layers) if i not in self.pruned_layers)

    @property
    def num_kept_layers(self) -> int:
        """K."""
        return self.num_layers - len(self.pruned_layers)

    @property
    def num_linear_replacements(self) -> int:
        """R, the pruned layers that hold a `linear` replacement."""
        return sum(1 for _, kind in self.replacements if kind == "linear")

    @property
    def num_mean_replacements(self) -> int:
        """The pruned layers that hold a `mean` replacement."""
        return sum(1 for _, kind in self.replacements if kind == "mean")

    # Parameter counts.

    @property
    def attention_matmul_params_per_layer(self) -> int:
        """Weights of q, k, v, o in one layer: D*H*d + 2*D*G*d + H*d*D (fused layouts have the same count)."""
        q, kv, d = self.head_dims.q_size, self.head_dims.kv_size, self.hidden_size
        return d * q + 2 * d * kv + q * d

    @property
    def attention_params_per_layer(self) -> int:
        """Matmul weights plus biases (H*d + 2*G*d if q, k, v have biases, + D if o has one) plus the query and key
        norms, if any (2*d, or 4*d with biases)."""
        q, kv = self.head_dims.q_size, self.head_dims.kv_size
        bias = (q + 2 * kv if self.qkv_bias else 0) + (self.hidden_size if self.o_bias else 0)
        qk_norms = 2 * (2 if self.norm_bias else 1) * self.head_dims.head_dim if self.qk_norms else 0
        return self.attention_matmul_params_per_layer + bias + qk_norms

    @property
    def mlp_matmul_params_per_layer(self) -> int:
        """3*D*I when gated, else 2*D*I."""
        return (3 if self.gated_mlp else 2) * self.hidden_size * self.intermediate_size

    @property
    def mlp_params_per_layer(self) -> int:
        """Matmul weights plus biases (each output: 2*I + D when gated, I + D otherwise)."""
        outputs = (2 if self.gated_mlp else 1) * self.intermediate_size + self.hidden_size
        return self.mlp_matmul_params_per_layer + (outputs if self.mlp_bias else 0)

    @property
    def params_per_norm(self) -> int:
        """D (RMSNorm) or 2*D (LayerNorm)."""
        return (2 if self.norm_bias else 1) * self.hidden_size

    @property
    def num_norms(self) -> int:
        """Hidden-size norms: those serving the attention in kept layers, those around every MLP, one final, and the
        input norm a `linear` replacement keeps.

        K*a + L*(n - a) + 1 + R for n norms per layer of which a serve the attention; K + L + 1 + R for most models.
        """
        a = self.attention_norms_per_layer
        kept = self.num_kept_layers * a + self.num_layers * (self.norms_per_layer - a) + 1
        return kept + self.num_linear_replacements

    @property
    def replacement_params(self) -> int:
        """D*D per `linear` replacement (its norm is counted in the norms), D per `mean` one."""
        d = self.hidden_size
        return self.num_linear_replacements * d * d + self.num_mean_replacements * d

    @property
    def attention_params(self) -> int:
        return self.num_kept_layers * self.attention_params_per_layer

    @property
    def mlp_params(self) -> int:
        return self.num_layers * self.mlp_params_per_layer

    @property
    def norm_params(self) -> int:
        return self.num_norms * self.params_per_norm

    @property
    def embedding_params(self) -> int:
        """Token embeddings V*D plus learned position embeddings, if any."""
        return (self.vocab_size + self.position_embeddings) * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        """V*D, or 0 when tied to the input embeddings (already counted there)."""
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def num_parameters(self) -> int:
        """All parameters, tied ones once (what `sum(p.numel() for p in model.parameters())` gives)."""
        return (
            self.attention_params
            + self.replacement_params
            + self.mlp_params
            + self.norm_params
            + self.embedding_params
            + self.lm_head_params
        )

    # Costs.

    def _weights_bytes(self) -> dict[str, int]:
        # The LM head matrix is read in full (for a tied model it is the embedding table, counted once here).
        s = self.dtype_bytes
        return {
            "attention_weights": self.attention_params * s,
            "replacement_weights": self.replacement_params * s,
            "mlp_weights": self.mlp_params * s,
            "norm_weights": self.norm_params * s,
            "lm_head_weights": self.vocab_size * self.hidden_size * s,
        }

    def _embedding_lookup_bytes(self, tokens: int) -> int:
        tables = 1 + (1 if self.position_embeddings else 0)
        return tables * tokens * self.hidden_size * self.dtype_bytes

    def _kv_entry_bytes(self) -> int:
        """Bytes of one token's keys and values in one layer: 2*G*d*s."""
        return 2 * self.head_dims.kv_size * self.dtype_bytes

    def prefill(self, batch: int, prompt_len: int) -> Cost:
        """Cost of processing a prompt of P tokens for B sequences, returning logits for every position.

        FLOPs (N = B*P tokens):
            attention_projections = 2 * N * K * (D*H*d + 2*D*G*d + H*d*D)
            attention_scores      = sum over kept layers of B * (2*H*d*P*S [QK^T] + 2*H*d*P*S [AV]), S = `span`
                                    (P, or min(P, W) for a sliding layer on a window-aware engine) -- the full
                                    P x S product, causal mask or not: what eager and SDPA-without-flash kernels
                                    compute on CPU.
            attention_replacements = 2 * N * R * D*D, the `linear` replacements' products.
            mlp                   = 2 * N * L * (3 or 2)*D*I
            lm_head               = 2 * N * V*D -- logits for every prompt position, as the ONNX export does.

        Bytes:
            attention_weights, mlp_weights, norm_weights = their parameter counts * s (kept layers only for attention)
            replacement_weights = (R*D*D + D per `mean` replacement) * s
            lm_head_weights  = V*D*s (the tied embedding matrix is counted once, here)
            embedding_lookup = tables * N * D * s, the gathered rows (tables = 2 with learned positions, else 1)
            kv_cache         = K * N * 2*G*d*s, the keys and values written.
            Activations are ignored.

        Args:
            batch: B.
            prompt_len: P.
        """
        b, p = _positive("batch", batch), _positive("prompt_len", prompt_len)
        tokens = b * p
        k, dims = self.num_kept_layers, self.head_dims
        flops = {
            "attention_projections": 2 * tokens * k * self.attention_matmul_params_per_layer,
            "attention_scores": sum(b * 2 * (2 * dims.q_size * p * self.span(i, p)) for i in self.kept_layers),
            "attention_replacements": 2 * tokens * self.num_linear_replacements * self.hidden_size**2,
            "mlp": 2 * tokens * self.num_layers * self.mlp_matmul_params_per_layer,
            "lm_head": 2 * tokens * self.vocab_size * self.hidden_size,
        }
        moved = {
            **self._weights_bytes(),
            "embedding_lookup": self._embedding_lookup_bytes(tokens),
            "kv_cache": k * tokens * self._kv_entry_bytes(),
        }
        return Cost(sum(flops.values()), sum(moved.values()), flops, moved)

    def decode_step(self, batch: int, context_len: int) -> Cost:
        """Cost of generating one token for B sequences that attend to C positions (past tokens plus the new one).

        FLOPs (N = B tokens):
            attention_projections = 2 * B * K * (D*H*d + 2*D*G*d + H*d*D)
            attention_scores      = sum over kept layers of B * (2*H*d*1*S [QK^T] + 2*H*d*1*S [AV]), S = `span`
                                    (C, or min(C, W) for a sliding layer on a window-aware engine)
            attention_replacements = 2 * B * R * D*D
            mlp                   = 2 * B * L * (3 or 2)*D*I
            lm_head               = 2 * B * V*D -- logits for the new position only.

        Bytes:
            weights as in `prefill` (all read once per step)
            embedding_lookup = tables * B * D * s
            kv_cache         = sum over kept layers of B * 2*G*d*s * (S + 1): S entries read and the new token's
                               entry written.
            Activations are ignored.

        Args:
            batch: B.
            context_len: C, the number of key positions each new query attends to (at least 1).
        """
        b, c = _positive("batch", batch), _positive("context_len", context_len)
        k, dims = self.num_kept_layers, self.head_dims
        flops = {
            "attention_projections": 2 * b * k * self.attention_matmul_params_per_layer,
            "attention_scores": sum(b * 2 * (2 * dims.q_size * self.span(i, c)) for i in self.kept_layers),
            "attention_replacements": 2 * b * self.num_linear_replacements * self.hidden_size**2,
            "mlp": 2 * b * self.num_layers * self.mlp_matmul_params_per_layer,
            "lm_head": 2 * b * self.vocab_size * self.hidden_size,
        }
        moved = {
            **self._weights_bytes(),
            "embedding_lookup": self._embedding_lookup_bytes(b),
            "kv_cache": sum(b * self._kv_entry_bytes() * (self.span(i, c) + 1) for i in self.kept_layers),
        }
        return Cost(sum(flops.values()), sum(moved.values()), flops, moved)

    def cost(self, phase: Literal["prefill", "decode"], batch: int, length: int) -> Cost:
        """`prefill(batch, length)` or `decode_step(batch, length)`.

        Raises:
            InvalidConfigError: If `phase` is neither.
        """
        if phase == "prefill":
            return self.prefill(batch, length)
        if phase == "decode":
            return self.decode_step(batch, length)
        raise InvalidConfigError(f"phase must be 'prefill' or 'decode', got {phase!r}")

    def to_dict(self) -> dict:
        """Sizes and parameter counts, JSON-friendly."""
        data = asdict(self)
        data["pruned_layers"] = list(self.pruned_layers)
        data["replacements"] = {str(layer): kind for layer, kind in self.replacements}
        data["sliding_layers"] = list(self.sliding_layers)
        data["num_kept_layers"] = self.num_kept_layers
        data["parameters"] = {
            "attention": self.attention_params,
            "replacements": self.replacement_params,
            "mlp": self.mlp_params,
            "norms": self.norm_params,
            "embeddings": self.embedding_params,
            "lm_head": self.lm_head_params,
            "total": self.num_parameters,
        }
        return data


def sliding_window_layers(config: "PretrainedConfig") -> tuple[int | None, tuple[int, ...]]:
    """`(W, layers)`: the sliding window of a config and the layers that use it (`(None, ())` when none does).

    `layer_types` (Gemma-2/3, Qwen-2/3 with `use_sliding_window`) names each layer's kind; without it a set
    `sliding_window` (Mistral, Phi-3) applies to every layer.
    """
    window = getattr(config, "sliding_window", None)
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        return None, ()
    types = getattr(config, "layer_types", None)
    if types is None:
        return window, tuple(range(config.num_hidden_layers))
    layers = tuple(i for i, kind in enumerate(types) if kind == "sliding_attention")
    return (window, layers) if layers else (None, ())


def ideal_speedup(
    baseline: ModelCost, pruned: ModelCost, phase: Literal["prefill", "decode"], batch: int, length: int
) -> dict:
    """The best speed-up the pruned model can reach over the baseline, under two bounds.

    `compute_bound = baseline FLOPs / pruned FLOPs` (a compute-bound kernel's time follows its FLOPs) and
    `memory_bound = baseline bytes / pruned bytes` (a memory-bound one's follows its bytes). Prefill is usually
    compute-bound, decode at small batch memory-bound. Both are >= 1 when `pruned` has fewer attention layers and
    exactly 1.0 when it has the same ones.

    Args:
        baseline: The unpruned (or less pruned) model.
        pruned: The same architecture with attention layers removed.
        phase: `"prefill"` (`length` = prompt length P) or `"decode"` (`length` = context length C).
        batch: B.
        length: P or C.

    Returns:
        A JSON-friendly dict: `phase`, `batch`, `length`, `compute_bound`, `memory_bound`, and the `baseline` and
        `pruned` costs (`Cost.to_dict()`).

    Raises:
        InvalidConfigError: If the two models do not share their sizes (only the pruned layers may differ), or
            `phase` is not `"prefill"` or `"decode"`.
    """
    mismatched = [
        name
        for name, value in baseline.to_dict().items()
        if name not in ("pruned_layers", "replacements", "num_kept_layers", "parameters")
        and pruned.to_dict()[name] != value
    ]
    if mismatched:
        raise InvalidConfigError(
            f"baseline and pruned models differ in {mismatched}; only pruned_layers and replacements may differ"
        )
    before, after = baseline.cost(phase, batch, length), pruned.cost(phase, batch, length)
    return {
        "phase": phase,
        "batch": batch,
        "length": length,
        "compute_bound": before.flops / after.flops,
        "memory_bound": before.bytes / after.bytes,
        "baseline": before.to_dict(),
        "pruned": after.to_dict(),
    }


def replacement_share(
    baseline: ModelCost, pruned: ModelCost, phase: Literal["prefill", "decode"], batch: int, length: int
) -> float:
    """What the replacements of the sublayers `pruned` removes (beyond `baseline`'s) still cost, as a share of what
    removing those sublayers saves: FLOPs for prefill, bytes for decode (the bound each phase follows).

    0.0 for plain removal; for one `linear` replacement about D*D / (the attention's weights) plus its scores.
    A measured removal time `t` then shrinks to `t * (1 - share)` (`AttentionShares.speedup`'s `kept_share`).

    Raises:
        InvalidConfigError: As `ideal_speedup`.
    """
    ideal_speedup(baseline, pruned, phase, batch, length)  # the same sizes
    earlier = set(baseline.replacements)
    plain = replace(pruned, replacements=tuple(pair for pair in pruned.replacements if pair in earlier))
    unit = "flops" if phase == "prefill" else "bytes"
    before, removed, replaced = (getattr(m.cost(phase, batch, length), unit) for m in (baseline, plain, pruned))
    saved = before - removed
    return (replaced - removed) / saved if saved > 0 else 0.0
