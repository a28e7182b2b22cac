"""Removing attention sublayers from a model in memory.

A pruned decoder layer computes `h + m_n(...m_1(h))` over the adapter's `pruned_forward` modules (for most
architectures `h + mlp(post_norm(h))`): the adapter's `pruned_modules` (the attention module and the norms that
only serve it) are deleted, so it has no weights and no KV-cache entry for them. The surviving attention modules are renumbered
`layer_idx = 0..n_kept-1`, so the KV cache holds exactly the kept layers in order; transformers' caches read
the sequence length and masks from slot 0, so leaving holes would break incremental decoding.

Architectures that mix sliding-window and full-attention layers (`config.layer_types`) keep each kept layer's own
type in the compacted cache, whatever layers are removed: see `CacheLayerTypesConfigMixin`.

The pruned layer keeps the class of the original layer (a subclass is swapped in), so every `isinstance` check
transformers makes (hidden-state recording, gradient checkpointing) still holds.

A *replaced* layer is a pruned layer that also holds an `AttentionReplacement` (`attention_replacement`, fitted by
`optimum_gatenorm.pruning.replacement`) whose output is added where the attention's was: a constant vector
(`mean`) or a bias-free `W @ input_norm(h)` (`linear`, with the layer's own input norm kept inside the module). It
has no attention and no KV-cache entry either.
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..adapters import ArchitectureAdapter, get_adapter
from ..compat import layer_returns_tuple
from ..errors import InvalidConfigError


if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "FittedReplacement",
    "REPLACEMENT_KINDS",
    "REPLACEMENT_MODULE",
    "AttentionPrunedLayerMixin",
    "AttentionReplacement",
    "CacheLayerTypesConfigMixin",
    "apply_pruned_structure",
    "is_attention_pruned",
    "replacement_of",
]

logger = logging.getLogger(__name__)


# What a removed attention sublayer can be replaced by (besides nothing), and where a replaced layer holds it.
REPLACEMENT_KINDS = ("mean", "linear")
REPLACEMENT_MODULE = "attention_replacement"


@dataclass
class FittedReplacement:
    """The fitted replacement of one removed attention sublayer.

    Args:
        kind: `"mean"` or `"linear"`.
        tensors: Parameters of its `AttentionReplacement`, by name (`bias` `[d]`, or `proj.weight` `[d, d]` in the
            `nn.Linear` convention: `W n` is `proj.weight @ n`), float32.
        alpha: The chosen relative ridge strength (`linear` only).
        held_out_error: `||Y - fit||^2 / ||Y||^2` on the held-out windows with the map fitted on the others: the share
            of the sublayer's update the replacement does not explain there (1.0 is no better than removing it).
    """

    kind: str
    tensors: dict[str, "torch.Tensor"]
    alpha: float | None = None
    held_out_error: float | None = None


class AttentionReplacement(nn.Module):
    """What a replaced layer adds to the residual stream in place of its attention sublayer.

    `mean`: a constant vector `bias` (`[hidden]`). `linear`: `proj(norm(h))`, a bias-free `[hidden, hidden]`
    `nn.Linear` on the output of the layer's own input norm (`norm`, the module that fed the attention), which is
    llama.cpp's "linear attention" layer of the `deci` architecture.

    Args:
        kind: `"mean"` or `"linear"`.
        norm: The layer's input norm module (`linear` only); it is kept, weights and all.
        reference: A tensor whose device and dtype the new parameters take (e.g. the norm's weight; may be meta).
        hidden_size: Width of the residual stream.
        parallel: The layer's MLP reads the layer's input, not the updated stream (`ArchitectureAdapter.parallel_residual`).
    """

    def __init__(
        self, kind: str, *, norm: nn.Module | None, reference: torch.Tensor, hidden_size: int, parallel: bool
    ):
        super().__init__()
        assert kind in REPLACEMENT_KINDS, kind
        self.kind = kind
        self.parallel = parallel
        factory = {"device": reference.device, "dtype": reference.dtype}
        if kind == "mean":
            self.bias = nn.Parameter(torch.zeros(hidden_size, **factory))
        else:
            assert norm is not None
            self.norm = norm
            self.proj = nn.Linear(hidden_size, hidden_size, bias=False, **factory)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The update, `[hidden]` for `mean` (it broadcasts) or shaped like `hidden_states` for `linear`."""
        if self.kind == "mean":
            return self.bias
        return self.proj(self.norm(hidden_states))

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, parallel={self.parallel}"


class AttentionPrunedLayerMixin:
    """Forward of a decoder layer without attention: `h + m_n(...m_1(h))` over the adapter's `pruned_forward`.

    With an `AttentionReplacement` `r`: `h' = h + r(h)`, then `h' + m_n(...m_1(h'))` (or, for a parallel-residual
    layer, `h + r(h) + m_n(...m_1(h))`), as the unpruned layer adds its attention update.
    """

    _gatenorm_adapter: ArchitectureAdapter

    def forward(self, hidden_states, *args, **kwargs):
        adapter = self._gatenorm_adapter
        replacement = self._modules.get(REPLACEMENT_MODULE)
        added = replacement(hidden_states) if replacement is not None else None
        parallel = added is not None and replacement.parallel
        if added is not None and not parallel:
            hidden_states = hidden_states + added
        update = hidden_states
        for name in adapter.pruned_forward:
            update = getattr(self, name)(update)
        hidden_states = hidden_states + update
        if parallel:
            hidden_states = hidden_states + added
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


def replacement_of(layer) -> "AttentionReplacement | None":
    """The `AttentionReplacement` of a pruned decoder layer, or `None` (plain removal, or a layer with attention)."""
    return layer._modules.get(REPLACEMENT_MODULE) if is_attention_pruned(layer) else None


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


class CacheLayerTypesConfigMixin:
    """A model config whose KV caches are built for the kept attention layers only, each with its own type.

    transformers' caches (`DynamicCache`, `StaticCache`) build slot `j` from `config.layer_types[j]` (full or
    sliding window), and they build them from `config.get_text_config(decoder=True)`. The kept attention modules are
    renumbered `0..n_kept-1`, so slot `j` belongs to the `j`-th kept layer, whose type is
    `layer_types[kept[j]]`. This mixin makes `get_text_config` return a shallow copy of the config whose layer types
    are exactly those, one per kept layer (and so one cache slot per kept layer). Everything else reads the types
    per decoder layer, as stored: each decoder layer and attention module took its type (mask, window, rotary
    embedding) from `layer_types[i]` when it was built, and `config.json` keeps `layer_types` as it was.
    """

    _gatenorm_layer_types_attr: str
    _gatenorm_base_class: type

    def get_text_config(self, *args, **kwargs):
        config = super().get_text_config(*args, **kwargs)
        kept = self.__dict__.get(_KEPT_ATTRIBUTE)
        layer_types = getattr(self, self._gatenorm_layer_types_attr, None)
        if config is not self or kept is None or layer_types is None:
            return config
        view = copy.copy(self)
        view.__class__ = self._gatenorm_base_class
        del view.__dict__[_KEPT_ATTRIBUTE]
        setattr(view, self._gatenorm_layer_types_attr, [layer_types[i] for i in kept])
        return view

    def to_dict(self):
        output = super().to_dict()
        output.pop(_KEPT_ATTRIBUTE, None)
        return output


_KEPT_ATTRIBUTE = "_gatenorm_kept_attention_layers"
_PRUNED_CONFIG_CLASSES: dict[type, type] = {}


def _cache_config_class(base: type, adapter: ArchitectureAdapter) -> type:
    """A subclass of the config class with `CacheLayerTypesConfigMixin`, registered in this module so it pickles.

    It keeps the base class's `__name__`: transformers' auto classes look configs up by class name.
    """
    if base in _PRUNED_CONFIG_CLASSES:
        return _PRUNED_CONFIG_CLASSES[base]
    name = f"AttentionPruned{base.__name__}"
    module = sys.modules[__name__]
    while hasattr(module, name):
        name += "_"
    cls = type(
        base.__name__,
        (CacheLayerTypesConfigMixin, base),
        {
            "_gatenorm_layer_types_attr": adapter.layer_types_attr,
            "_gatenorm_base_class": base,
            "__module__": __name__,
            "__qualname__": name,
        },
    )
    setattr(module, name, cls)
    _PRUNED_CONFIG_CLASSES[base] = cls
    return cls


def _set_cache_layer_types(model, adapter: ArchitectureAdapter, decoder_layers, kept: list[int]) -> None:
    """Makes the caches built from `config` hold one slot per kept layer, of that layer's type (see the mixin)."""
    config = model.config
    layer_types = getattr(config, adapter.layer_types_attr, None) if adapter.layer_types_attr else None
    if layer_types is None:
        return  # one type for every layer (or none): slot j of a cache of num_hidden_layers slots fits any layer
    if not isinstance(config, CacheLayerTypesConfigMixin):
        config.__class__ = _cache_config_class(type(config), adapter)
    config.__dict__[_KEPT_ATTRIBUTE] = list(kept)
    # The model's forward looks each layer's mask up by type, pruned layers too (which ignore it): by
    # `layer.attention_type` on transformers 4.57, by `config.layer_types[i]` on 5.x. `generate` builds masks only
    # for the types of the cache slots, so when no kept layer has a pruned layer's type (e.g. every full-attention
    # layer was removed) that lookup must still find a mask: the pruned layer names a kept type (4.57), and the
    # base model's mask mapping gets the missing types (`_fill_missing_mask_types`, both lines).
    for layer in decoder_layers:
        if is_attention_pruned(layer) and hasattr(layer, "attention_type"):
            layer.attention_type = layer_types[kept[0]]
    base_model = model.get_submodule(adapter.layers.rpartition(".")[0])
    if not any(hook is _fill_missing_mask_types for hook in base_model._forward_pre_hooks.values()):
        base_model.register_forward_pre_hook(_fill_missing_mask_types, with_kwargs=True)


def _fill_missing_mask_types(module, args, kwargs):
    """Forward pre-hook of the base model: a mask mapping ({layer type: mask}) gets every type of the layer types.

    `generate` passes masks keyed by the cache slots' types, i.e. the kept layers' types; a type it lacks belongs
    to pruned layers only, which ignore their mask, so any mask of the mapping stands in for it.
    """
    masks = kwargs.get("attention_mask")
    attribute = getattr(module.config, "_gatenorm_layer_types_attr", None)  # set by CacheLayerTypesConfigMixin
    layer_types = getattr(module.config, attribute, None) if attribute else None
    if not isinstance(masks, dict) or not masks or not layer_types:
        return None
    missing = set(layer_types) - masks.keys()
    if not missing:
        return None
    stand_in = next(iter(masks.values()))
    return args, {**kwargs, "attention_mask": {**masks, **dict.fromkeys(missing, stand_in)}}


def _drop_stale_forward(layer) -> None:
    """Removes an instance attribute `forward` that is just the layer's own class `forward`, bound.

    transformers 4.57 records `output_hidden_states` / `output_attentions` by wrapping each layer's `forward` for the
    call and then *assigning* the original bound method back as an instance attribute. That attribute would shadow
    the pruned class's `forward` (the layer would still run its deleted attention), so a model that once ran with
    `output_hidden_states=True` could not be pruned. Any other instance `forward` (a user's wrapper) is left alone.
    """
    bound = layer.__dict__.get("forward")
    if getattr(bound, "__self__", None) is layer and getattr(bound, "__func__", None) is type(layer).forward:
        del layer.__dict__["forward"]


def apply_pruned_structure(
    model: "PreTrainedModel", layers: Iterable[int], replacements: Mapping[int, str] | None = None
) -> list[int]:
    """Removes the attention sublayers of `layers` (on top of any already removed) and renumbers the rest.

    Works on real and on meta-device models (before weights are loaded). Does not touch the config record;
    see `optimum_gatenorm.checkpoints.modeling.prune_model` for the full in-memory operation.

    Args:
        model: The model, changed in place.
        layers: Decoder layers whose attention sublayer goes.
        replacements: Layer index (one of `layers`) -> replacement kind (`REPLACEMENT_KINDS`); those layers get an
            `AttentionReplacement` with zero parameters (load or copy the fitted ones into it).

    Returns:
        The sorted indices of all layers without attention.
    """
    adapter = get_adapter(model.config)
    decoder_layers = model.get_submodule(adapter.layers)
    total = len(decoder_layers)
    already = {i for i, layer in enumerate(decoder_layers) if is_attention_pruned(layer)}
    replacements = dict(replacements or {})
    pruned = validate_pruned_set(set(layers) | already, total)
    stray = sorted(set(replacements) - (set(pruned) - already))
    assert not stray, f"replacements for layers {stray} that this call does not remove"
    kept = [i for i in range(total) if i not in pruned]
    for index in pruned:
        layer = decoder_layers[index]
        if index in already:
            continue
        kind = replacements.get(index)
        norm = getattr(layer, adapter.input_norm)
        _drop_stale_forward(layer)
        layer.__class__ = _pruned_class(type(layer), adapter)
        for name in adapter.pruned_modules:
            delattr(layer, name)
        if kind is not None:
            replacement = AttentionReplacement(
                kind,
                norm=norm if kind == "linear" else None,
                reference=next(norm.parameters()),
                hidden_size=model.config.hidden_size,
                parallel=adapter.parallel_residual(model.config),
            )
            layer.add_module(REPLACEMENT_MODULE, replacement)
    for slot, index in enumerate(kept):
        getattr(decoder_layers[index], adapter.attention).layer_idx = slot
    _set_cache_layer_types(model, adapter, decoder_layers, kept)
    return pruned
