"""The pruning record: which attention sublayers a checkpoint lacks, stored in its `config.json`.

A pruned checkpoint records its pruned layers as a transformers "quantization" config with
`quant_method: "gatenorm"` (`PrunedAttentionConfig`, registered with transformers here). Everything that needs to
know whether a layer still has attention reads it through `get_pruned_layers(config)`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from transformers.quantizers.auto import register_quantization_config
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..adapters import get_adapter
from ..errors import InvalidCheckpointError
from ..pruning.structure import validate_pruned_set
from ..validation import check_int_list, is_int
from ..version import __version__


if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

__all__ = ["GATENORM_QUANT_METHOD", "PrunedAttentionConfig", "get_pruned_layers", "tombstone_name"]

logger = logging.getLogger(__name__)

GATENORM_QUANT_METHOD = "gatenorm"


@register_quantization_config(GATENORM_QUANT_METHOD)
class PrunedAttentionConfig(QuantizationConfigMixin):
    """The pruning record stored as `config.quantization_config`.

    Args:
        pruned_attention_layers: Decoder layers whose attention sublayer was removed.
        num_hidden_layers: Number of decoder layers of the model.
        num_attention_layers: Kept attention sublayers; checked against the two above when given.
        criterion: Criterion that chose the layers, for the record.
        gatenorm_version: Version of optimum-gatenorm that wrote the record.
    """

    def __init__(
        self,
        pruned_attention_layers: Iterable[int],
        num_hidden_layers: int,
        num_attention_layers: int | None = None,
        criterion: str | None = None,
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
        self.gatenorm_version = gatenorm_version
        if kwargs:
            logger.debug("Ignoring unknown keys in the pruning record: %s", sorted(kwargs))

    def check_model_config(self, config: "PretrainedConfig") -> None:
        if config.num_hidden_layers != self.num_hidden_layers:
            raise InvalidCheckpointError(
                f"pruning record is inconsistent: it is for {self.num_hidden_layers} layers but the config has "
                f"num_hidden_layers={config.num_hidden_layers}"
            )


def get_pruned_layers(config: "PretrainedConfig | PreTrainedModel") -> list[int]:
    """The decoder layers whose attention sublayer was removed, from a config or a model (`[]` for an unpruned
    model)."""
    from transformers import PreTrainedModel

    if isinstance(config, PreTrainedModel):
        config = config.config
    record = getattr(config, "quantization_config", None)
    if record is None:
        return []
    if isinstance(record, dict):
        if record.get("quant_method") != GATENORM_QUANT_METHOD:
            return []
        record = PrunedAttentionConfig.from_dict(record)
    if getattr(record, "quant_method", None) != GATENORM_QUANT_METHOD:
        return []
    record.check_model_config(config)
    return list(record.pruned_attention_layers)


def tombstone_name(config: "PretrainedConfig", pruned: list[int]) -> str:
    """The checkpoint name of the empty "tombstone" tensor a pruned checkpoint stores (see `checkpoints.modeling`):
    the first query/key weight of the first removed attention sublayer."""
    adapter = get_adapter(config)
    return adapter.qk_tensor_names(pruned[0])[0]
