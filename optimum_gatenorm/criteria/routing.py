"""`gate_trace_local`: `gate_trace`, with the few long-range layers of a sliding-window model ranked last.

Some architectures interleave two kinds of attention layer: many *local* layers that attend to a sliding window of
the last few hundred tokens and a few *global* (full) ones that attend to the whole context (Gemma 2/3: one global
layer in every six; the kind of each layer is `config.layer_types`, a standard `transformers` config field). The
two kinds are not interchangeable, and the reason is in the architecture, not in any measurement:

- a global layer is the only way information travels further than the window. Removing one of Gemma-3-270M's
  three global layers removes a third of the model's long-range routing, while removing a local layer leaves
  fourteen others that do the same short-range job;
- the weights say nothing about this: the self-match trace of `gate_trace` (and every other weight criterion) is
  computed the same way for both kinds, and the attention mask that makes a layer local is not a weight.

So `gate_trace_local` scores every layer with `gate_trace` (the self-match logit
`-(1/sqrt(d)) sum_h tr(diag(gamma) W_Q^h (W_K^{g(h)})^T diag(gamma))`, see `optimum_gatenorm.criteria.gate`) and
then moves the layers of the *scarcer* attention kind after all the others, keeping their order among themselves:

    s_l = gate_trace_l                                          for the common kind,
    s_l = max_j gate_trace_j + 1 + (gate_trace_l - min_j gate_trace_j)   for the scarcer kind,

so every scarcer-kind layer scores above every common-kind layer (the `+ 1` only makes that strict when all traces
are equal) and is removed only once no common-kind layer is left. The selection rule is `gate_trace`'s `min_gap=2`.
A model with one attention kind (every model without `layer_types`, or with one value in it: Llama, SmolLM2,
Qwen2/3 without sliding windows) gets exactly `gate_trace`'s scores. When two kinds are equally common, none is
scarcer and the scores are `gate_trace`'s too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..checkpoints.tensors import layer_weights
from .gate import gate_trace
from .registry import register_criterion


if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from .circuits import StackWeights

__all__ = ["gate_trace_local", "scarce_attention_layers"]


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


@register_criterion(
    "gate_trace_local",
    description="gate_trace with a sliding-window model's few full-attention layers ranked last; min_gap 2",
    uses_norm=True,
    stack=True,
    min_gap=2,
)
def gate_trace_local(stack: "StackWeights") -> list[float]:
    """`gate_trace` per layer; layers of the scarcer attention kind shifted above all others (module docstring)."""
    traces = [
        gate_trace(layer_weights(stack.source, stack.config, layer, with_norm=True, device=stack.device))
        for layer in stack.layers
    ]
    scarce = scarce_attention_layers(stack.config)
    if not traces or not scarce:
        return traces
    top, bottom = max(traces), min(traces)
    return [
        top + 1.0 + (trace - bottom) if layer in scarce else trace
        for layer, trace in zip(stack.layers, traces, strict=True)
    ]
