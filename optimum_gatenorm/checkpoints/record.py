"""The pruning record: which attention sublayers a checkpoint lacks, stored in its `config.json`.

A pruned checkpoint records its pruned layers as a transformers "quantization" config with
`quant_method: "gatenorm: import optimum_gatenorm to load this checkpoint"` (`"gatenorm"` before 0.7;
`PrunedAttentionConfig`, registered with transformers under both names here). Everything that needs to
know whether a layer still has attention reads it through `get_pruned_layers(config)`, and which removed layers
hold a replacement (`optimum_gatenorm.pruning.replacement`) through `get_replacements(config)`. Records written
before replacements existed have no `attention_replacements` field and load as plain removals.

A checkpoint can be pruned again: the record then keeps each removed layer's own provenance, the criterion that chose
it (`layer_criteria`, read through `get_layer_criteria(config)`) and its replacement. Records written before
`layer_criteria` existed load with every removed layer credited to their one `criterion`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from transformers.quantizers.auto import register_quantization_config
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..adapters import get_adapter
from ..errors import InvalidCheckpointError
from ..validation import check_int_list, is_int
from ..version import __version__
from .structure import REPLACEMENT_KINDS, validate_pruned_set


if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

__all__ = [
    "GATENORM_QUANT_METHOD",
    "QUANT_METHODS",
    "PrunedAttentionConfig",
    "get_layer_criteria",
    "get_pruned_layers",
    "get_replacements",
    "tombstone_name",
]

logger = logging.getLogger(__name__)

# A process that has not imported optimum_gatenorm meets a pruned checkpoint's record in transformers' warning
# "Unknown quantization type, got <quant_method> - supported types are: [...]", printed on both transformers lines
# just before the tombstone (`checkpoints.modeling`) stops the load: so the name itself says the fix.
GATENORM_QUANT_METHOD = "gatenorm: import optimum_gatenorm to load this checkpoint"
# The name written before it said the fix (0.6.0 and earlier): still read, and registered too.
LEGACY_QUANT_METHODS = ("gatenorm",)
QUANT_METHODS = (GATENORM_QUANT_METHOD, *LEGACY_QUANT_METHODS)


@register_quantization_config(GATENORM_QUANT_METHOD)
class PrunedAttentionConfig(QuantizationConfigMixin):
    """The pruning record stored as `config.quantization_config`.

    Args:
        pruned_attention_layers: Decoder layers whose attention sublayer was removed.
        num_hidden_layers: Number of decoder layers of the model.
        num_attention_layers: Kept attention sublayers; checked against the two above when given.
        criterion: Criterion of the latest pruning run, for the record (`layer_criteria` has each layer's own).
        attention_replacements: Removed layer -> what replaces its attention sublayer (`"mean"` or `"linear"`,
            see `optimum_gatenorm.pruning.replacement`); layers not named are plain removals. JSON keys are the
            layer indices as strings.
        layer_criteria: Removed layer -> the criterion that chose it, across every pruning run of the checkpoint
            (a layer removed by hand, `prune_model` without a criterion, is not named). JSON keys are the layer
            indices as strings. Default (records written before it existed): every removed layer -> `criterion`.
        gatenorm_version: Version of optimum-gatenorm that wrote the record.
    """

    def __init__(
        self,
        pruned_attention_layers: Iterable[int],
        num_hidden_layers: int,
        num_attention_layers: int | None = None,
        criterion: str | None = None,
        attention_replacements: Mapping[int | str, str] | None = None,
        layer_criteria: Mapping[int | str, str] | None = None,
        gatenorm_version: str = __version__,
        **kwargs,
    ):
        self.quant_method = GATENORM_QUANT_METHOD
        if not is_int(num_hidden_layers) or num_hidden_layers < 1:
            raise InvalidCheckpointError(f"pruning record: bad num_hidden_layers {num_hidden_layers!r}")
        layers = check_int_list(
            "pruning record: pruned_attention_layers", pruned_attention_layers, error=InvalidCheckpointError
        )
        if len(set(layers)) != len(layers):
            raise InvalidCheckpointError(f"pruning record: pruned_attention_layers has duplicates: {layers}")
        try:
            self.pruned_attention_layers = validate_pruned_set(layers, num_hidden_layers)
        except ValueError as error:
            raise InvalidCheckpointError(f"pruning record: {error}") from None
        self.num_hidden_layers = num_hidden_layers
        kept = num_hidden_layers - len(self.pruned_attention_layers)
        if num_attention_layers is not None and num_attention_layers != kept:
            raise InvalidCheckpointError(
                f"pruning record is inconsistent: num_attention_layers={num_attention_layers} but "
                f"{num_hidden_layers} layers minus {len(self.pruned_attention_layers)} pruned leaves {kept}"
            )
        self.num_attention_layers = kept
        self.criterion = criterion
        self.attention_replacements = _check_replacements(attention_replacements, self.pruned_attention_layers)
        if layer_criteria is None and criterion is not None:
            layer_criteria = dict.fromkeys(self.pruned_attention_layers, criterion)
        self.layer_criteria = _check_layer_map(
            "layer_criteria", layer_criteria, self.pruned_attention_layers, _check_criterion
        )
        self.gatenorm_version = gatenorm_version
        if kwargs:
            logger.debug("Ignoring unknown keys in the pruning record: %s", sorted(kwargs))

    def to_dict(self) -> dict:
        output = super().to_dict()
        if not output.get("attention_replacements"):
            output.pop("attention_replacements", None)  # plain removal: the record reads as before replacements
        if not output.get("layer_criteria"):
            output.pop("layer_criteria", None)
        return output

    @property
    def replacements(self) -> dict[int, str]:
        """`attention_replacements` keyed by layer index."""
        return {int(layer): kind for layer, kind in self.attention_replacements.items()}

    @property
    def criteria(self) -> dict[int, str]:
        """`layer_criteria` keyed by layer index."""
        return {int(layer): name for layer, name in self.layer_criteria.items()}

    def check_model_config(self, config: "PretrainedConfig") -> None:
        if config.num_hidden_layers != self.num_hidden_layers:
            raise InvalidCheckpointError(
                f"pruning record is inconsistent: it is for {self.num_hidden_layers} layers but the config has "
                f"num_hidden_layers={config.num_hidden_layers}"
            )


for _name in LEGACY_QUANT_METHODS:
    register_quantization_config(_name)(PrunedAttentionConfig)


def _check_replacement_kind(index: int, kind) -> None:
    if kind not in REPLACEMENT_KINDS:
        raise InvalidCheckpointError(
            f"pruning record: layer {index} has replacement {kind!r}; known: {', '.join(REPLACEMENT_KINDS)} "
            "(a newer optimum-gatenorm may have written it: upgrade)"
        )


def _check_criterion(index: int, name) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidCheckpointError(f"pruning record: layer {index} has criterion {name!r}; expected a name")


def _check_replacements(replacements, pruned: list[int]) -> dict[str, str]:
    """`replacements` as `{"layer": kind}` (sorted by layer), checked against the pruned layers."""
    return _check_layer_map("attention_replacements", replacements, pruned, _check_replacement_kind)


def _check_layer_map(name: str, mapping, pruned: list[int], check_value) -> dict[str, str]:
    """`mapping` (layer -> value) as `{"layer": value}` (sorted by layer), its layers checked against the pruned
    layers and its values by `check_value(layer, value)`."""
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise InvalidCheckpointError(f"pruning record: {name} must map layer indices to names, got {mapping!r}")
    checked: dict[int, str] = {}
    for layer, value in mapping.items():
        index = int(layer) if isinstance(layer, str) and layer.isdigit() else layer
        if not is_int(index) or index not in pruned:
            raise InvalidCheckpointError(
                f"pruning record: {name} names layer {layer!r}, which is not one of the pruned layers {pruned}"
            )
        check_value(int(index), value)
        checked[int(index)] = value
    return {str(layer): checked[layer] for layer in sorted(checked)}


def _record(config: "PretrainedConfig | PreTrainedModel") -> "PrunedAttentionConfig | None":
    from transformers import PreTrainedModel

    if isinstance(config, PreTrainedModel):
        config = config.config
    record = getattr(config, "quantization_config", None)
    if record is None:
        return None
    if isinstance(record, dict):
        if record.get("quant_method") not in QUANT_METHODS:
            return None
        record = PrunedAttentionConfig.from_dict(record)
    if getattr(record, "quant_method", None) not in QUANT_METHODS:
        return None
    record.check_model_config(config)
    return record


def get_pruned_layers(config: "PretrainedConfig | PreTrainedModel") -> list[int]:
    """The decoder layers whose attention sublayer was removed, from a config or a model (`[]` for an unpruned
    model)."""
    record = _record(config)
    return list(record.pruned_attention_layers) if record is not None else []


def get_replacements(config: "PretrainedConfig | PreTrainedModel") -> dict[int, str]:
    """Removed layer -> its replacement kind (`"mean"` / `"linear"`), from a config or a model; `{}` when no removed
    layer holds one (plain removal, an unpruned model, or a record written before replacements existed)."""
    record = _record(config)
    return record.replacements if record is not None else {}


def get_layer_criteria(config: "PretrainedConfig | PreTrainedModel") -> dict[int, str]:
    """Removed layer -> the criterion that chose it, from a config or a model, across every pruning run (`{}` for an
    unpruned model; a record written before per-layer criteria existed credits every layer to its `criterion`)."""
    record = _record(config)
    return record.criteria if record is not None else {}


def tombstone_name(config: "PretrainedConfig", pruned: list[int]) -> str:
    """The checkpoint name of the empty "tombstone" tensor a pruned checkpoint stores (see `checkpoints.modeling`):
    the first query/key weight of the first removed attention sublayer."""
    adapter = get_adapter(config)
    return adapter.qk_tensor_names(pruned[0])[0]
