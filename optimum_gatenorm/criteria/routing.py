"""`trace_write`: `gate_trace`'s self-match and the attention's relative write, by rank; a sliding-window model's
few long-range layers last.

Two weight-only signals, each derived in its own module, say different things about an attention sublayer:

- *what it reads*: `gate_trace` (`optimum_gatenorm.criteria.gate`), the head's expected self-match logit
  `-(1/sqrt(d)) sum_h tr(diag(gamma) W_Q^h (W_K^{g(h)})^T diag(gamma))`: a self-matching sublayer re-writes what
  the token already holds;
- *how much it writes*: the expected norm `A_l` of the sublayer's update relative to the estimated residual stream
  `R_l` it is added to. For a pre-norm model (Llama, SmolLM2) `A_l` is `ov_norm` and the ratio is `ov_relative`
  (`optimum_gatenorm.criteria.circuits`). For a sandwich-norm model (Gemma 2/3: the attention output passes an
  RMSNorm before it is added) the architecture fixes it: an RMSNorm scales its input to unit rms and multiplies by
  its gain `gamma_post`, so the write has norm `||gamma_post||_2` whatever the attention computed (isotropic
  coordinates assumed); the MLP's write is likewise `||gamma_post_ff||_2`, and
  `R_l^2 = e^2 + sum_{j<l} (A_j^2 + M_j^2)` as in `ov_relative`.

Neither is on a scale of the other, so they are combined by rank, with no constant: `s_l = rank(gate_trace_l) +
rank(A_l / R_l)` (0 = the lowest of the layers being scored); the lowest sum is removed first, plain k lowest
(`min_gap 1`).

Some architectures interleave two kinds of attention layer (the kind is `config.layer_types`, a standard
`transformers` config field): many *local* sliding-window layers and a few *global* full-attention ones (Gemma 3:
one in six). A global layer is the only way information travels further than the window, and no weight shows
which kind a layer is (the mask that makes a layer local is not a weight), so the layers of the *scarcer* kind are
moved after all the others, keeping their order: `s_l += max(s) + 1 - min(s)` for them. A model with one kind
(every model without `layer_types`, or one value in it: Llama, SmolLM2, Qwen2/3 without sliding windows), or two
equally common kinds, is scored by the rank sum alone.

Measured (benchmarks/criteria/default_search.md): at least as good as the median of 7 random draws at every
measured k on Gemma-3-270M (k = 4, 6, 7 of 18) and SmolLM2-135M (k = 4, 8, 12 of 30), on *Pride and Prejudice*
only, and 1.4-1.7x `cosine`'s perplexity at the largest k.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..checkpoints.tensors import layer_weights
from .circuits import ov_relative
from .gate import gate_trace
from .registry import register_criterion


if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from .circuits import StackWeights

__all__ = ["ranks", "relative_writes", "scarce_attention_layers", "trace_write"]


def scarce_attention_layers(config: "PretrainedConfig") -> set[int]:
    """Indices of the layers of the least common attention kind in `config.layer_types`, or none.

    None when the config has no `layer_types`, one kind only, or no single least common kind (a tie).
    """
    kinds = list(getattr(config, "layer_types", None) or [])
    counts = {kind: kinds.count(kind) for kind in set(kinds)}
    if len(counts) < 2:
        return set()
    fewest = min(counts.values())
    scarce = [kind for kind, count in counts.items() if count == fewest]
    if len(scarce) != 1 or fewest == max(counts.values()):
        return set()
    return {index for index, kind in enumerate(kinds) if kind == scarce[0]}


def ranks(values: list[float]) -> list[int]:
    """Rank of each value, 0 for the lowest (ties broken by position)."""
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    result = [0] * len(values)
    for position, index in enumerate(order):
        result[index] = position
    return result


def relative_writes(stack: "StackWeights") -> list[float]:
    """`A_l / R_l` for each layer of `stack.layers` (module docstring): `ov_relative` for pre-norm models, the
    post-attention and post-MLP norm gains for sandwich-norm ones (`adapter.attention_norms == 2`: the norm after
    the input norm in `pruned_modules` is the post-attention norm, the last of `pruned_forward` the post-MLP one)."""
    adapter = stack.adapter
    if adapter.attention_norms < 2:
        return ov_relative(stack)

    def gain_norm(layer: int, module: str) -> float:
        name = f"{adapter.layer_prefix(layer)}.{module}.weight"
        return float(adapter.norm_gain(stack._tensor(name)).norm())

    post_attention = adapter.pruned_modules[adapter.pruned_modules.index(adapter.input_norm) + 1]
    post_mlp = adapter.pruned_forward[-1]
    squared = stack.embedding_norm() ** 2
    residual, writes = [], []
    for layer in range(stack.config.num_hidden_layers):
        residual.append(math.sqrt(squared))
        write = gain_norm(layer, post_attention) if layer in stack.layers else 0.0
        writes.append(write)
        squared += write**2 + gain_norm(layer, post_mlp) ** 2
    return [writes[layer] / residual[layer] for layer in stack.layers]


@register_criterion(
    "trace_write",
    description="rank of gate_trace + rank of the attention's relative write (weights only); a sliding-window "
    "model's few full-attention layers last",
    uses_norm=True,
    uses_ov=True,  # informational for a stack criterion: StackWeights reads what it needs
    stack=True,
)
def trace_write(stack: "StackWeights") -> list[float]:
    """`rank(gate_trace_l) + rank(A_l / R_l)`, the scarcer attention kind shifted last (module docstring)."""
    traces = [
        gate_trace(layer_weights(stack.source, stack.config, layer, with_norm=True, device=stack.device))
        for layer in stack.layers
    ]
    combined = [float(a + b) for a, b in zip(ranks(traces), ranks(relative_writes(stack)), strict=True)]
    scarce = scarce_attention_layers(stack.config)
    if not combined or not scarce:
        return combined
    shift = max(combined) + 1.0 - min(combined)
    return [score + shift if layer in scarce else score for layer, score in zip(stack.layers, combined, strict=True)]
