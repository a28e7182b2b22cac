"""Registry of architecture adapters, keyed by `config.model_type`: the one place that knows model types.

To add an architecture, write one module next to this one that builds an `ArchitectureAdapter` per model type
(every field is a fact the rest of the package reads, see `base.py`), and register it in `_REGISTERED` below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UnsupportedModelError
from .base import (
    ArchitectureAdapter,
    FusedConv1D,
    FusedRows,
    HeadDims,
    HeadInterleaved,
    MLPLayout,
    ParameterLayout,
    QKLayout,
    SeparateProjections,
)
from .gemma import GEMMA2, GEMMA3_TEXT
from .gpt2 import GPT2
from .gpt_neox import GPT_NEOX
from .llama import LLAMA, MISTRAL, QWEN2
from .phi3 import PHI3
from .qwen3 import QWEN3


if TYPE_CHECKING:
    from transformers import PretrainedConfig

__all__ = [
    "ArchitectureAdapter",
    "FusedConv1D",
    "FusedRows",
    "HeadDims",
    "HeadInterleaved",
    "MLPLayout",
    "ParameterLayout",
    "QKLayout",
    "SeparateProjections",
    "get_adapter",
    "register_adapter",
    "supported_model_types",
]

_ADAPTERS: dict[str, ArchitectureAdapter] = {}

# Model types refused with their own reason and the way out, instead of the generic "not supported" line.
_REFUSED = {
    # The multimodal wrapper keeps its text layers under model.language_model and its sizes under text_config;
    # its language model alone is a gemma3_text model that transformers loads from the same checkpoint.
    "gemma3": (
        "model_type 'gemma3' (Gemma3ForConditionalGeneration, text + vision) is not supported; prune its language "
        "model: m = Gemma3ForConditionalGeneration.from_pretrained(path); text = Gemma3ForCausalLM(m.config.text_config); "
        "text.model, text.lm_head = m.model.language_model, m.lm_head; text.save_pretrained(out), then prune out "
        "(a gemma3_text model)"
    ),
}


def register_adapter(adapter: ArchitectureAdapter) -> ArchitectureAdapter:
    """Registers `adapter` for each of its model types.

    Raises:
        ValueError: If one of its model types already has an adapter.
    """
    for model_type in adapter.model_types:
        if model_type in _ADAPTERS:
            raise ValueError(f"An adapter for model_type {model_type!r} is already registered")
    for model_type in adapter.model_types:
        _ADAPTERS[model_type] = adapter
    return adapter


def supported_model_types() -> list[str]:
    return sorted(_ADAPTERS)


def get_adapter(config_or_model_type: "PretrainedConfig | str") -> ArchitectureAdapter:
    """Returns the adapter for a config (validating its options) or a model type.

    Raises:
        UnsupportedModelError: If the model type has no adapter or the config uses an unsupported option.
    """
    model_type = getattr(config_or_model_type, "model_type", config_or_model_type)
    if model_type in _REFUSED:
        raise UnsupportedModelError(_REFUSED[model_type])
    adapter = _ADAPTERS.get(model_type)
    if adapter is None:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported decoder-only architectures: "
            f"{', '.join(supported_model_types())}"
        )
    if not isinstance(config_or_model_type, str):
        adapter.check_config(config_or_model_type)
    return adapter


# Every built-in adapter, one per model type.
_REGISTERED = (LLAMA, MISTRAL, QWEN2, QWEN3, PHI3, GPT2, GPT_NEOX, GEMMA2, GEMMA3_TEXT)
for _adapter in _REGISTERED:
    register_adapter(_adapter)
