"""Everything that differs between the transformers lines this package supports (4.57 and 5.x), in one place.

The rest of the package calls these helpers instead of testing versions itself, so checking a new architecture or
a new transformers release on both lines means reading this module and running the suite in both environments
(docs/development.md). The optional extras are checked here too: the ONNX path (`[onnx]`: optimum-onnx, which pins
the 4.57 line) and onnxruntime (`[onnxruntime]` / `[onnxruntime-gpu]`).

What differs, and where it is handled:

- Decoder layers of gpt2, gpt_neox, gemma2 and gemma3 return `(hidden_states, ...)` on 4.57 and a tensor on 5.x
  (every family does on 5.x): `layer_returns_tuple`.
- `PreTrainedModel._keys_to_ignore_on_load_unexpected` is a list on 4.57 and a set on 5.x:
  `ignore_unexpected_keys`.
- Models that mix sliding-window and full layers look each layer's mask up by `layer.attention_type` on 4.57 and
  by `config.layer_types[i]` on 5.x, pruned layers included; `checkpoints.structure` serves both (a pruned layer names
  a kept type, and the base model's mask mapping gets the types only pruned layers have).
- RoPE settings: 5.x keeps them in `config.rope_parameters` and no longer writes `rope_theta`, `rope_scaling`,
  `partial_rotary_factor` (gpt_neox: `rotary_emb_base`, `rotary_pct`); 4.57 ignores `rope_parameters` and falls
  back to its defaults, which silently changes the model (SmolLM2's `rope_theta` is 100000, the default 10000;
  Gemma 3's sliding layers read `rope_local_base_freq` on 4.57, `rope_parameters["sliding_attention"]` on 5.x).
  On 5.x our writers add the 4.57 names to `config.json` (`write_portable_config`; the names per architecture are
  `ArchitectureAdapter.compat.legacy_rope_names`); on 4.57, `load_pruned` reads `rope_parameters` of a checkpoint written
  elsewhere by 5.x (`adapt_config`), and plain `from_pretrained` of such a pruned checkpoint fails loudly
  (`check_config_readable`, from our quantizer) instead of loading with the wrong RoPE. A 5.x config object has no
  `rope_theta` attribute: code that reads the settings (the serving exporters) calls `rope_settings`.
- transformers 5.24 renamed the KV-cache argument of `forward` and the field of its output from
  `past_key_values` to `cache` (the old name logs a deprecation warning and goes in 5.40): `cache_kwargs`,
  `returned_cache`.
- Tokenizers: 5.x saves a tokenizer that is just `tokenizer.json` as `"tokenizer_class": "TokenizersBackend"`, a
  class 4.57 does not have (its `AutoTokenizer` fails). Our writers name it `PreTrainedTokenizerFast`, which both
  lines load from the same `tokenizer.json` (`write_portable_tokenizer_config`), and our readers load 5.x's name
  on 4.57 as that class (`load_auto_tokenizer`).
- The quantizer a pruned checkpoint loads through (`checkpoints.modeling.GateNormQuantizer`) needs no change: both
  lines call `_process_model_before_weight_loading` on the meta-device model and take our state dict from
  `get_state_dict_and_metadata` (4.57 passes `safe_serialization`, 5.x does not).
- Everything else the package touches (`from_pretrained(dtype=...)`, the GGUF loader, `DynamicCache`,
  `layer_idx` renumbering, tokenizers) behaves the same on both lines for the supported architectures; the test
  suite runs on both.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import transformers
from packaging.version import Version

from .errors import InvalidCheckpointError, MissingExtraError


if TYPE_CHECKING:
    from .adapters import ArchitectureAdapter

__all__ = [
    "CONFIG_ERRORS",
    "adapt_config",
    "cache_kwargs",
    "returned_cache",
    "check_config_readable",
    "legacy_rope_config",
    "load_auto_tokenizer",
    "rope_settings",
    "write_portable_config",
    "write_portable_tokenizer_config",
    "ONNX_INSTALL",
    "ONNXRUNTIME_INSTALL",
    "TRANSFORMERS_5",
    "TRANSFORMERS_VERSION",
    "has_onnx",
    "has_onnxruntime",
    "ignore_unexpected_keys",
    "layer_returns_tuple",
    "require_onnx",
    "require_onnxruntime",
]

TRANSFORMERS_VERSION = Version(transformers.__version__)
TRANSFORMERS_5 = TRANSFORMERS_VERSION.major >= 5


def _config_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (ValueError, OSError, TypeError, KeyError, ZeroDivisionError)
    try:  # 5.x configs are strict dataclasses: a wrong type raises this (not a ValueError / TypeError)
        from huggingface_hub.errors import StrictDataclassFieldValidationError
    except ImportError:
        return errors
    return (*errors, StrictDataclassFieldValidationError)


# What `AutoConfig.from_pretrained` raises on a malformed config.json. 4.57 accepts wrong types and fails later;
# 5.x validates while loading (a strict-dataclass error, or ZeroDivisionError for num_attention_heads=0).
CONFIG_ERRORS = _config_errors()

# The one-line fixes the ONNX commands print when an extra is missing. optimum-onnx 0.1.0 requires
# transformers<4.58, so installing it moves a transformers 5 environment back to 4.57.
# No package index serves optimum-gatenorm: the extras install from a clone of its source, as README says.
ONNX_INSTALL = 'pip install -e ".[onnx,onnxruntime]" in the clone of optimum-gatenorm (it needs transformers 4.57)'
ONNXRUNTIME_INSTALL = 'pip install -e ".[onnxruntime]" (or ".[onnxruntime-gpu]") in the clone of optimum-gatenorm'


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package is missing or half-installed
        return False


def has_onnx() -> bool:
    """Whether the `[onnx]` extra is installed: optimum-onnx's exporter (`optimum.exporters.onnx`) and `onnx`."""
    return _module_exists("optimum.exporters.onnx") and _module_exists("onnx")


def has_onnxruntime() -> bool:
    """Whether onnxruntime and optimum-onnx's `ORTModelForCausalLM` (`optimum.onnxruntime`) are installed."""
    return _module_exists("onnxruntime") and _module_exists("optimum.onnxruntime")


def require_onnx(feature: str) -> None:
    """Refuses `feature` (e.g. "the ONNX export") in one line when the `[onnx]` extra is missing.

    Raises:
        MissingExtraError: Naming the extra and the command that installs it.
    """
    if not has_onnx():
        raise MissingExtraError(f"{feature} needs the [onnx] extra (optimum-onnx), not installed; {ONNX_INSTALL}")


def require_onnxruntime(feature: str, alternative: str = "") -> None:
    """Refuses `feature` (e.g. "running an ONNX export") in one line when onnxruntime or optimum-onnx is missing.

    Args:
        feature: What needs it, as the start of the sentence.
        alternative: A way around it without the extra, appended as ", or <alternative>".

    Raises:
        MissingExtraError: Naming the extras and the command that installs them.
    """
    tail = f", or {alternative}" if alternative else ""
    if not _module_exists("optimum.onnxruntime"):
        raise MissingExtraError(
            f"{feature} needs the [onnx] and [onnxruntime] extras (optimum-onnx), not installed; {ONNX_INSTALL}{tail}"
        )
    if not _module_exists("onnxruntime"):
        raise MissingExtraError(f"{feature} needs onnxruntime, not installed; {ONNXRUNTIME_INSTALL}{tail}")


def layer_returns_tuple(adapter: "ArchitectureAdapter") -> bool:
    """Whether a decoder layer of `adapter`'s architecture returns a tuple on the installed transformers.

    `ArchitectureAdapter.compat.returns_tuple` describes the 4.57 line; on 5.x every decoder layer returns a tensor.
    """
    return adapter.compat.returns_tuple and not TRANSFORMERS_5


def ignore_unexpected_keys(model, patterns: list[str]) -> None:
    """Adds regex `patterns` to the checkpoint keys `model.from_pretrained` skips without reporting them.

    The attribute is a list on 4.57 and a set on 5.x (which joins it to another set with `|`).
    """
    current = model._keys_to_ignore_on_load_unexpected or ()
    merged = list(current) + [p for p in patterns if p not in current]
    model._keys_to_ignore_on_load_unexpected = set(merged) if TRANSFORMERS_5 else merged


def cache_kwargs(model, cache) -> "dict[str, Any]":
    """Keyword arguments that pass a KV cache (or `None`) to `model.forward`.

    `cache=` where `forward` takes it (transformers 5.24 and later; `past_key_values=` logs a deprecation warning
    there and is removed in 5.40), `past_key_values=` before.
    """
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


def returned_cache(output):
    """The KV cache a `forward(..., use_cache=True)` returned: `output.cache` (5.24 and later) or
    `output.past_key_values`."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


# 5.x's name for a tokenizer backed by tokenizer.json alone; 4.57's class for the same thing; what 5.x's returns.
TOKENIZERS_BACKEND, FAST_TOKENIZER = "TokenizersBackend", "PreTrainedTokenizerFast"
BACKEND_INPUT_NAMES = ["input_ids", "attention_mask"]


def _tokenizer_config(directory: Path) -> "dict[str, Any]":
    """`tokenizer_config.json` of `directory`, `{}` where it is missing or unreadable."""
    try:
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def write_portable_tokenizer_config(directory: "str | Path") -> None:
    """Names a tokenizer saved in `directory` by 5.x as `TokenizersBackend` `PreTrainedTokenizerFast` instead.

    4.57 has no `TokenizersBackend`; `PreTrainedTokenizerFast` reads the same `tokenizer.json` there, and 5.x loads
    it as `TokenizersBackend` again (same ids, special tokens and chat template on both lines). The model inputs
    are written out as 5.x's (`input_ids`, `attention_mask`): 4.57's class would add `token_type_ids`.
    """
    directory = Path(directory)
    config = _tokenizer_config(directory)
    if config.get("tokenizer_class") != TOKENIZERS_BACKEND or not (directory / "tokenizer.json").is_file():
        return
    config["tokenizer_class"] = FAST_TOKENIZER
    # 4.57's PreTrainedTokenizerFast also returns token_type_ids, which generate() of a decoder refuses
    config.setdefault("model_input_names", BACKEND_INPUT_NAMES)
    (directory / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def load_auto_tokenizer(directory: "str | Path"):
    """`AutoTokenizer.from_pretrained(directory)` (no remote code) that also reads, on 4.57, a tokenizer 5.x saved
    as `TokenizersBackend` (as `PreTrainedTokenizerFast`, from its `tokenizer.json`)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    directory = Path(directory)
    config = _tokenizer_config(directory)
    if not TRANSFORMERS_5 and config.get("tokenizer_class") == TOKENIZERS_BACKEND:
        # transformers logs that the saved class differs from the loading one: that is the point here
        tokenization_logger = logging.getLogger("transformers.tokenization_utils_base")
        level = tokenization_logger.level
        tokenization_logger.setLevel(logging.ERROR)
        try:
            names = config.get("model_input_names") or BACKEND_INPUT_NAMES
            return PreTrainedTokenizerFast.from_pretrained(directory, model_input_names=names)
        finally:
            tokenization_logger.setLevel(level)
    return AutoTokenizer.from_pretrained(directory, trust_remote_code=False)


def legacy_rope_config(config: "dict[str, Any]") -> "dict[str, Any]":
    """The transformers 4.57 config attributes that hold what `config["rope_parameters"]` (5.x) holds.

    Args:
        config: A config as a dict (`config.json`, or `PretrainedConfig.to_dict()`).

    Returns:
        4.57 attribute -> value (empty if the config has no `rope_parameters`).
    """
    from .adapters import get_adapter, supported_model_types

    params = config.get("rope_parameters")
    if not isinstance(params, dict) or not params or config.get("model_type") not in supported_model_types():
        return {}
    nested = all(isinstance(value, dict) for value in params.values())
    # Per-layer-type parameters (e.g. {"full_attention": {...}, "sliding_attention": {...}}): 4.57 keeps the full
    # attention ones under the plain names.
    main = (params.get("full_attention") or next(iter(params.values()))) if nested else params
    flat = dict(main)
    if nested:
        flat.update({f"{kind}.{key}": value for kind, values in params.items() for key, value in values.items()})
    out = {
        name: flat[key]
        for key, name in get_adapter(config["model_type"]).compat.legacy_rope_names.items()
        if key in flat
    }
    scaling = {key: value for key, value in main.items() if key not in ("rope_theta", "partial_rotary_factor")}
    out["rope_scaling"] = None if scaling.get("rope_type", "default") == "default" else scaling
    return out


def rope_settings(config) -> "dict[str, Any]":
    """The RoPE settings of a config object under their transformers 4.57 names, on either line.

    The names are the adapter's `compat.legacy_rope_names` and `rope_scaling` (`None` for plain RoPE). 5.x configs have no
    `rope_theta` attribute (only `rope_parameters`), so `getattr(config, "rope_theta", default)` silently reads the
    default there; writers of other formats (GGUF, Nemotron-NAS) read the settings here instead.
    """
    from .adapters import get_adapter

    if TRANSFORMERS_5:
        return legacy_rope_config(config.to_dict())
    names = [*get_adapter(config.model_type).compat.legacy_rope_names.values(), "rope_scaling"]
    return {name: getattr(config, name) for name in names if hasattr(config, name)}


def write_portable_config(directory: "str | Path") -> None:
    """On transformers 5, adds the 4.57 names of the RoPE settings to `directory/config.json` (no-op on 4.57).

    Call it after every `save_pretrained` of a checkpoint this package writes, so that the other line loads it.
    """
    if not TRANSFORMERS_5:
        return
    path = Path(directory) / "config.json"
    config = json.loads(path.read_text())
    legacy = {key: value for key, value in legacy_rope_config(config).items() if key not in config}
    if legacy:
        config.update(legacy)
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _stale_rope(config) -> "dict[str, Any]":
    """On 4.57: the attributes whose value disagrees with a `rope_parameters` written by 5.x."""
    if TRANSFORMERS_5 or not isinstance(getattr(config, "rope_parameters", None), dict):
        return {}
    legacy = legacy_rope_config({"model_type": config.model_type, "rope_parameters": config.rope_parameters})
    return {key: value for key, value in legacy.items() if getattr(config, key, None) != value}


def adapt_config(config):
    """On 4.57, a copy of a config written by 5.x with the RoPE attributes read from its `rope_parameters`.

    The copy is built from the config's dict, since some 4.57 configs derive attributes in `__init__` (gpt_neox's
    `partial_rotary_factor` from `rotary_pct`).

    Returns:
        The new config, or `None` if nothing needed to change (always on 5.x).
    """
    stale = _stale_rope(config)
    if not stale:
        return None
    return type(config).from_dict({**config.to_dict(), **stale})


def check_config_readable(config) -> None:
    """Refuses, on 4.57, a config whose `rope_parameters` (written by 5.x) this line would not read.

    Raises:
        InvalidCheckpointError: Naming the settings and `load_pruned`, which reads them.
    """
    stale = _stale_rope(config)
    if stale:
        raise InvalidCheckpointError(
            f"this checkpoint was saved by transformers 5 and transformers {TRANSFORMERS_VERSION} would ignore its "
            f"rope_parameters ({', '.join(sorted(stale))}); load it with optimum_gatenorm.load_pruned"
        )
