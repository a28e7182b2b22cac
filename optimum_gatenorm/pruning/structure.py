"""Removing attention sublayers from a model in memory.

A pruned decoder layer computes `h + m_n(...m_1(h))` over the adapter's `pruned_forward` modules (for most
architectures `h + mlp(post_norm(h))`): the adapter's `pruned_modules` (the attention module and the norms that
only serve it) are deleted, so it has no weights and no KV-cache entry for them. The surviving attention modules are renumbered
`layer_idx = 0..n_kept-1`, so the KV cache holds exactly the kept layers in order; transformers' caches read
the sequence length and masks from slot 0, so leaving holes would break incremental decoding.

The pruned layer keeps the class of the original layer (a subclass is swapped in), so every `isinstance` check
transformers makes (hidden-state recording, gradient checkpointing) still holds.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..adapters import ArchitectureAdapter, get_adapter
from ..compat import layer_returns_tuple
from ..errors import InvalidConfigError, UnsupportedModelError


if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["AttentionPrunedLayerMixin", "apply_pruned_structure", "is_attention_pruned"]

logger = logging.getLogger(__name__)


class AttentionPrunedLayerMixin:
    """Forward of a decoder layer without attention: `h + m_n(...m_1(h))` over the adapter's `pruned_forward`."""

    _gatenorm_adapter: ArchitectureAdapter

    def forward(self, hidden_states, *args, **kwargs):
        adapter = self._gatenorm_adapter
        update = hidden_states
        for name in adapter.pruned_forward:
            update = getattr(self, name)(update)
        hidden_states = hidden_states + update
        if layer_returns_tuple(adapter):
            return (hidden_states, None) if kwargs.get("output_attentions") else (hidden_states,)
        return hidden_states


_PRUNED_CLASSES: dict[type, type] = {}


def _pruned_class(base: type, adapter: ArchitectureAdapter) -> type:
    """`AttentionPruned<Base>`, a subclass of the layer class; registered in this module so it pickles."""
    if base in _PRUNED_CLASSES:
        return _PRUNED_CLASSES[base]
    name = f"AttentionPruned{base.__name__}"
    module = sys.modules[__name__]
    while hasattr(module, name):
        name += "_"
    cls = type(name, (AttentionPrunedLayerMixin, base), {"_gatenorm_adapter": adapter, "__module__": __name__})
    setattr(module, name, cls)
    _PRUNED_CLASSES[base] = cls
    return cls


def is_attention_pruned(layer) -> bool:
    return isinstance(layer, AttentionPrunedLayerMixin)


def validate_pruned_set(layers: Iterable[int], total: int) -> list[int]:
    """Sorted unique layer indices, checked against `total` decoder layers.

    Raises:
        InvalidConfigError: On an out-of-range index, or when no attention sublayer would remain.
    """
    layers = sorted(set(int(i) for i in layers))
    bad = [i for i in layers if not 0 <= i < total]
    if bad:
        raise InvalidConfigError(f"layer indices {bad} are out of range for a model with {total} layers")
    if len(layers) >= total:
        raise InvalidConfigError(
            f"cannot remove all {total} attention sublayers; at most {total - 1} can go (export needs one)"
        )
    return layers


def _check_layer_types(config, adapter: ArchitectureAdapter, kept: list[int]) -> None:
    # Caches build slot j from layer_types[j]; with mixed sliding/full layers, renumbering must not change that.
    layer_types = getattr(config, adapter.layer_types_attr, None) if adapter.layer_types_attr else None
    if layer_types and [layer_types[i] for i in kept] != list(layer_types[: len(kept)]):
        raise UnsupportedModelError(
            f"{config.model_type} mixes attention types {sorted(set(layer_types))} across layers; removing these "
            "layers would give kept layers a cache of the wrong type. Choose layers that keep the type sequence"
        )


def apply_pruned_structure(model: "PreTrainedModel", layers: Iterable[int]) -> list[int]:
    """Removes the attention sublayers of `layers` (on top of any already removed) and renumbers the rest.

    Works on real and on meta-device models (before weights are loaded). Does not touch the config record;
    see `optimum_gatenorm.checkpoints.modeling.prune_model` for the full in-memory operation.

    Returns:
        The sorted indices of all layers without attention.
    """
    adapter = get_adapter(model.config)
    decoder_layers = model.get_submodule(adapter.layers)
    total = len(decoder_layers)
    already = {i for i, layer in enumerate(decoder_layers) if is_attention_pruned(layer)}
    pruned = validate_pruned_set(set(layers) | already, total)
    kept = [i for i in range(total) if i not in pruned]
    _check_layer_types(model.config, adapter, kept)
    for index in pruned:
        layer = decoder_layers[index]
        if index in already:
            continue
        layer.__class__ = _pruned_class(type(layer), adapter)
        for name in adapter.pruned_modules:
            delattr(layer, name)
    for slot, index in enumerate(kept):
        getattr(decoder_layers[index], adapter.attention).layer_idx = slot
    return pruned
