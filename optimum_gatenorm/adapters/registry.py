"""The adapter registry, keyed by `config.model_type`: the one place that knows model types.

Each family module registers its adapters where it defines them (`register_adapter`); `adapters/__init__.py`
imports every module of the folder, so a new family is one new file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UnsupportedModelError


if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from .base import ArchitectureAdapter

__all__ = ["describe_architectures", "get_adapter", "register_adapter", "supported_model_types"]

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


def describe_architectures() -> list[dict]:
    """The supported-architectures table, one row per registered model type (`ArchitectureAdapter.describe`)."""
    return [_ADAPTERS[model_type].describe(model_type) for model_type in supported_model_types()]


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
