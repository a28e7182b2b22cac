"""`trace_write`: `gate_trace`'s self-match and the attention's relative write, combined by rank.

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

Sliding-window models (Gemma 3) get no special rule for their few full-attention layers: moving them last was
measured *worse* on Gemma-3-270M (benchmarks/criteria/default_search.md), and in 512-token windows, no longer than
Gemma's sliding window, a full-attention layer does what a local one does.

Measured (benchmarks/criteria/default_search.md): better than the median of 7 random draws at every measured k
on Gemma-3-270M (k = 4, 6, 7 of 18: 1.65 / 1.04 / 1.09x `cosine`) and SmolLM2-135M (k = 4, 8, 12 of 30: 0.97 /
1.02 / 1.73x `cosine`), on *Pride and Prejudice* only.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..checkpoints.tensors import layer_weights
from .circuits import ov_relative
from .gate import gate_trace
from .registry import register_criterion


if TYPE_CHECKING:
    from .circuits import StackWeights

__all__ = ["ranks", "relative_writes", "trace_write"]


def ranks(values: list[float]) -> list[int]:
    """Rank of each value, 0 for the lowest (ties broken by position)."""
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    result = [0] * len(values)
    for position, index in enumerate(order):
        result[index] = position
    return result


def relative_writes(stack: "StackWeights") -> list[float]:
    """`A_l / R_l` for each layer of `stack.layers` (module docstring): `ov_relative` for pre-norm models, the
    post-attention and post-MLP norm gains for sandwich-norm ones (the adapter's `attention_output_norm` and
    `mlp_output_norm`)."""
    adapter = stack.adapter
    if adapter.attention_output_norm is None or adapter.mlp_output_norm is None:
        return ov_relative(stack)

    def gain_norm(layer: int, module: str) -> float:
        name = f"{adapter.layer_prefix(layer)}.{module}.weight"
        return float(adapter.norm_gain(stack._tensor(name)).norm())

    post_attention, post_mlp = adapter.attention_output_norm, adapter.mlp_output_norm
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
    description="rank of gate_trace + rank of the attention's relative write (weights only)",
    uses_norm=True,
    uses_ov=True,  # informational for a stack criterion: StackWeights reads what it needs
    stack=True,
)
def trace_write(stack: "StackWeights") -> list[float]:
    """`rank(gate_trace_l) + rank(A_l / R_l)` (module docstring)."""
    traces = [
        gate_trace(layer_weights(stack.source, stack.config, layer, with_norm=True, device=stack.device))
        for layer in stack.layers
    ]
    return [float(a + b) for a, b in zip(ranks(traces), ranks(relative_writes(stack)), strict=True)]
