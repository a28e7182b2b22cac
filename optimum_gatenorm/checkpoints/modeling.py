"""Saving and loading pruned checkpoints so that they can never load wrongly.

A pruned checkpoint records its pruned layers in `config.json` as a transformers "quantization" config with
`quant_method: "gatenorm: import optimum_gatenorm to load this checkpoint"` (`optimum_gatenorm.checkpoints.record`;
`"gatenorm"` before 0.7). Importing `optimum_gatenorm` registers both names with transformers' quantizer registry,
so plain `AutoModelForCausalLM.from_pretrained(dir)` rebuilds the pruned structure before the weights load and
reports 0 missing keys.

A process that has *not* imported `optimum_gatenorm` must not load the checkpoint with randomly initialised
attention. transformers only warns about an unknown quantization method and then initialises missing weights
randomly, so the checkpoint also stores one empty "tombstone" tensor under the name of the first removed
attention weight: plain transformers then stops with a size-mismatch error instead, while our quantizer drops
the tombstone. The tombstone holds no parameters. Its warning just before names the method, whose name says the fix.
`ignore_mismatched_sizes=True` gets past the tombstone with random weights (after that warning and transformers'
report of the missing weights): nothing a checkpoint can hold stops it without also stopping our own loader.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import AutoConfig, AutoModelForCausalLM
from transformers.quantizers import HfQuantizer
from transformers.quantizers.auto import register_quantizer

from ..adapters import get_adapter
from ..compat import (
    TRANSFORMERS_5,
    adapt_config,
    check_config_readable,
    ignore_unexpected_keys,
    load_auto_tokenizer,
    write_portable_config,
    write_portable_tokenizer_config,
)
from ..errors import InvalidCheckpointError
from ..outputs import atomic_output_dir
from ..report import REPORT_FILE, PruningReport
from ..validation import first_line
from .models import resolve_model
from .record import (
    GATENORM_QUANT_METHOD,
    LEGACY_QUANT_METHODS,
    PrunedAttentionConfig,
    get_layer_criteria,
    get_pruned_layers,
    get_replacements,
    tombstone_name,
)
from .structure import apply_pruned_structure, replacement_of, validate_pruned_set
from .tensors import inspect_checkpoint, read_safetensors_header


if TYPE_CHECKING:
    from collections.abc import Mapping

    import torch
    from transformers import PretrainedConfig, PreTrainedModel

    from .structure import FittedReplacement
    from .tensors import Checkpoint

__all__ = [
    "TOKENIZER_FILES",
    "GateNormQuantizer",
    "check_record_matches_weights",
    "load_checkpoint",
    "load_pruned",
    "load_tokenizer",
    "model_bytes",
    "next_record",
    "prune_model",
    "save_pruned",
    "write_companions",
    "write_pruned",
]

logger = logging.getLogger(__name__)


@register_quantizer(GATENORM_QUANT_METHOD)
class GateNormQuantizer(HfQuantizer):
    """Rebuilds the pruned structure before weights load; nothing is quantized."""

    requires_calibration = False
    required_packages = None
    requires_parameters_quantization = False

    def validate_environment(self, *args, **kwargs):
        pass

    def _process_model_before_weight_loading(self, model, **kwargs):
        self.quantization_config.check_model_config(model.config)
        check_config_readable(model.config)  # a 5.x checkpoint on 4.57 outside load_pruned: refuse, not wrong RoPE
        apply_pruned_structure(
            model, self.quantization_config.pruned_attention_layers, self.quantization_config.replacements
        )
        # Checkpoint keys of removed modules (the tombstone, or the attention weights of an unpruned checkpoint
        # loaded with a pruning record) stay "unexpected", so transformers skips them, but are not reported.
        adapter = get_adapter(model.config)
        base = adapter.base_model_prefix + "."
        patterns = [
            r"(^|\.)" + re.escape(prefix.removeprefix(base) + ".")
            for layer in self.quantization_config.pruned_attention_layers
            for prefix in adapter.pruned_module_prefixes(layer)
        ]
        ignore_unexpected_keys(model, patterns)
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        # Nothing is quantized: keep .half(), .float() and training available.
        model.is_quantized = False
        return model

    def get_state_dict_and_metadata(self, model, safe_serialization=False):
        import torch

        state_dict = model.state_dict()
        pruned = self.quantization_config.pruned_attention_layers
        if pruned:
            dtype = next(iter(state_dict.values())).dtype
            state_dict[tombstone_name(model.config, pruned)] = torch.empty(0, dtype=dtype)
        return state_dict, {}

    def is_serializable(self, safe_serialization=None):
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    def _dequantize(self, model):
        raise ValueError("removed attention sublayers cannot be restored; reload the original checkpoint")


for _name in LEGACY_QUANT_METHODS:  # records written before the name said the fix
    register_quantizer(_name)(GateNormQuantizer)


def prune_model(
    model: "PreTrainedModel",
    layers: Iterable[int],
    *,
    criterion: str | None = None,
    replacements: "Mapping[int, FittedReplacement] | None" = None,
) -> list[int]:
    """Removes the attention sublayers of `layers` in place and records them in `model.config`.

    After this, `model.save_pretrained(dir)` writes a checkpoint that `load_pruned(dir)` (or, with
    `optimum_gatenorm` imported, `AutoModelForCausalLM.from_pretrained(dir)`) loads back exactly.

    Args:
        model: The model, changed in place.
        layers: Decoder layers whose attention sublayer goes.
        criterion: Recorded in the pruning record as the criterion that chose `layers`; layers removed earlier keep
            the criterion and the replacement their record names.
        replacements: Layer (one of `layers`) -> its fitted replacement (`pruning.replacement.fit_replacements`);
            the others are removed plainly.

    Returns:
        All layers without attention (earlier prunings included).
    """
    import torch

    replacements = dict(replacements or {})
    kinds = {layer: fitted.kind for layer, fitted in replacements.items()}
    record, _ = next_record(model.config, layers, criterion=criterion, replacements=kinds)
    pruned = apply_pruned_structure(model, layers, kinds)
    decoder_layers = model.get_submodule(get_adapter(model.config).layers)
    with torch.no_grad():
        for layer, fitted in replacements.items():
            module = replacement_of(decoder_layers[layer])
            for name, tensor in fitted.tensors.items():
                module.get_parameter(name).copy_(tensor)
    model.config.quantization_config = record
    model.hf_quantizer = GateNormQuantizer(record, pre_quantized=True)
    return pruned


def next_record(
    config: "PretrainedConfig",
    layers: Iterable[int],
    *,
    criterion: str | None = None,
    replacements: "Mapping[int, str] | None" = None,
) -> tuple[PrunedAttentionConfig, list[int]]:
    """The pruning record of `config`'s model once `layers` are removed too, and all layers it then names.

    Layers removed earlier keep the criterion and the replacement their record names; `layers` are credited to
    `criterion` and get `replacements` (layer -> kind) where given.

    Raises:
        InvalidConfigError: On an out-of-range layer, or when no attention sublayer would remain.
    """
    earlier_pruned = set(get_pruned_layers(config))
    pruned = validate_pruned_set(set(layers) | earlier_pruned, config.num_hidden_layers)
    now = [layer for layer in pruned if layer not in earlier_pruned]
    chosen_by = {**get_layer_criteria(config), **(dict.fromkeys(now, criterion) if criterion is not None else {})}
    record = PrunedAttentionConfig(
        pruned,
        config.num_hidden_layers,
        criterion=criterion,
        attention_replacements={**get_replacements(config), **dict(replacements or {})},
        layer_criteria=chosen_by,
    )
    return record, pruned


def load_pruned(
    model_path: str | Path,
    *,
    dtype: "str | torch.dtype" = "auto",
    allow_pickle: bool = False,
    **kwargs: Any,
) -> "PreTrainedModel":
    """Loads a checkpoint (pruned by optimum-gatenorm or not) with its pruned structure, strictly.

    Args:
        model_path: A local checkpoint directory, a `.gguf` file or a built-in alias (see `resolve_model`).
        dtype: Torch dtype, or `"auto"` for the checkpoint's own.
        allow_pickle: Accept `pytorch_model.bin` weights (loaded with `torch.load(weights_only=True)`).
        **kwargs: Passed to `AutoModelForCausalLM.from_pretrained` (e.g. `device_map`). Remote code is never run.

    Raises:
        InvalidCheckpointError: If any weight is missing or has the wrong shape (it would be randomly initialised).
    """
    checkpoint = inspect_checkpoint(resolve_model(model_path), allow_pickle=allow_pickle)
    return load_checkpoint(checkpoint, dtype=dtype, **kwargs)


def load_checkpoint(
    checkpoint: "Checkpoint", *, dtype: "str | torch.dtype" = "auto", **kwargs: Any
) -> "PreTrainedModel":
    """`load_pruned` of a checkpoint already inspected (`inspect_checkpoint`, `ModelHandle`): nothing resolved again.

    Raises:
        InvalidCheckpointError: If any weight is missing or has the wrong shape, or the record and the weights
            disagree.
    """
    check_record_matches_weights(checkpoint, get_pruned_layers(checkpoint.config))  # before transformers sees it
    kwargs.pop("trust_remote_code", None)
    if "config" not in kwargs and not TRANSFORMERS_5:
        config = adapt_config(AutoConfig.from_pretrained(checkpoint.path, trust_remote_code=False))
        if config is not None:  # written by transformers 5 without the 4.57 names (compat.adapt_config)
            kwargs["config"] = config
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            checkpoint.path,
            dtype=dtype,
            use_safetensors=checkpoint.format == "safetensors",
            trust_remote_code=False,
            output_loading_info=True,
            **kwargs,
        )
    except RuntimeError as error:
        detail = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        raise InvalidCheckpointError(f"cannot load {checkpoint.path}: {detail}") from None
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "mismatched_keys") and v}
    if problems:
        raise InvalidCheckpointError(f"{checkpoint.path} does not match its config: {problems}")
    model.eval()
    return model


def _stored_shapes(checkpoint: "Checkpoint") -> dict[str, list[int]]:
    """Tensor name -> shape, from the safetensors headers alone (nothing loaded); empty for pickled weights."""
    shapes: dict[str, list[int]] = {}
    if checkpoint.format != "safetensors":
        return shapes
    for file in sorted(set(checkpoint.weight_map.values())):
        try:
            _, header = read_safetensors_header(file)
        except (OSError, ValueError):
            continue  # the loader names a damaged file
        shapes.update(
            {
                name: entry["shape"]
                for name, entry in header.items()
                if name != "__metadata__" and isinstance(entry, dict) and isinstance(entry.get("shape"), list)
            }
        )
    return shapes


def check_record_matches_weights(checkpoint: "Checkpoint", pruned: list[int]) -> None:
    """Refuses a pruned checkpoint whose record and weights disagree, naming the layer, before anything loads.

    A checkpoint saved pruned holds an empty "tombstone" tensor for its first removed layer. If it does, every
    layer the record names must have no attention weights, and the tombstone's layer must be in the record. (An
    unpruned checkpoint, without a tombstone, may be given a record: its removed layers' weights are skipped.)

    Raises:
        InvalidCheckpointError: If the record names a layer that still has its attention weights, or leaves out
            the tombstone's layer.
    """
    shapes = _stored_shapes(checkpoint)
    if not shapes:
        return
    adapter = get_adapter(checkpoint.config)
    layers = range(checkpoint.config.num_hidden_layers)
    tombstones = [i for i in layers for name in adapter.qk_tensor_names(i) if 0 in shapes.get(name, [1])]
    if not tombstones:
        return
    record = f"the pruning record in {checkpoint.path / 'config.json'} (pruned_attention_layers={sorted(pruned)})"
    for layer in tombstones:
        if layer not in pruned:
            raise InvalidCheckpointError(
                f"{record} does not name layer {layer}, whose attention this checkpoint has removed; restore the "
                "record, or prune and save the original model again"
            )
    for layer in pruned:
        kept = [name for name in adapter.qk_tensor_names(layer) + adapter.ov_tensor_names(layer) if name in shapes]
        if any(0 not in shapes[name] for name in kept):
            raise InvalidCheckpointError(
                f"{record} names layer {layer} as removed, but the weights still hold its attention ({kept[0]}); "
                "restore the record, or prune and save the original model again"
            )


def save_pruned(
    model: "PreTrainedModel",
    output_dir: str | Path,
    *,
    report: "PruningReport | None" = None,
    tokenizer_from: str | Path | None = None,
    overwrite: bool = False,
    dtype: "torch.dtype | None" = None,
) -> Path:
    """Saves a pruned model, its tokenizer and its pruning report, atomically.

    Everything is written to a temporary directory beside `output_dir` and renamed into place at the end, so an
    error leaves nothing behind.

    Args:
        model: A model pruned with `prune_model` / `GateNormPruner.prune`.
        output_dir: Target directory.
        report: The `PruningReport` to write as `gatenorm_report.json` (default: the one `GateNormPruner.prune`
            attached to the model, if any).
        tokenizer_from: Directory whose tokenizer to save alongside (default: the model's `name_or_path`).
        overwrite: Replace an existing `output_dir`.
        dtype: Cast the model to this dtype before saving.

    Raises:
        OutputExistsError: If `output_dir` exists and `overwrite` is false.
    """
    source = getattr(model, "name_or_path", None) or None
    inputs = [("model", source), ("tokenizer", tokenizer_from)]
    expected = model_bytes(model, dtype)
    with atomic_output_dir(output_dir, overwrite=overwrite, inputs=inputs, expected_bytes=expected) as tmp:
        write_pruned(model, tmp, report=report, tokenizer_from=tokenizer_from, dtype=dtype)
    logger.info("Saved the pruned model to %s", output_dir)
    return Path(output_dir)


def model_bytes(model: "PreTrainedModel", dtype: "torch.dtype | None" = None) -> int:
    """About how many bytes `model`'s weights take on disk (tied weights once), in `dtype` if given."""
    total = 0
    for parameter in model.parameters():
        size = dtype.itemsize if dtype is not None else parameter.element_size()
        total += parameter.numel() * size
    return total


def write_pruned(
    model: "PreTrainedModel",
    directory: Path,
    *,
    report: "PruningReport | None" = None,
    tokenizer_from: str | Path | None = None,
    dtype: "torch.dtype | None" = None,
) -> None:
    """`save_pruned` without the atomic rename: writes into an existing (temporary) directory."""
    report = report if report is not None else getattr(model, "gatenorm_report", None)
    if dtype is not None:
        model.to(dtype)
    model.save_pretrained(directory)
    write_portable_config(directory)
    write_companions(
        directory, tokenizer_from if tokenizer_from is not None else getattr(model, "name_or_path", None), report
    )


def write_companions(directory: Path, source: str | Path | None, report: "PruningReport | None") -> None:
    """Writes what a pruned checkpoint holds beside its weights and config: the tokenizer of `source` (a
    checkpoint directory; nothing if it has none) and `report` as `gatenorm_report.json`."""
    if source and Path(source).is_dir():
        _copy_tokenizer(Path(source), directory)
    if report is not None:
        report.save(directory / REPORT_FILE)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


def _copy_tokenizer(source: Path, target: Path) -> None:
    """Saves the tokenizer of `source` into `target`, if `source` has one, in a form both transformers lines load."""
    # AutoTokenizer raises AttributeError/TypeError (not OSError) on a directory without tokenizer files.
    if not any((source / name).is_file() for name in TOKENIZER_FILES):
        logger.info("No tokenizer saved: %s has no tokenizer files", source)
        return
    try:
        tokenizer = load_auto_tokenizer(source)
    except (OSError, ValueError, TypeError, AttributeError) as error:
        logger.warning("No tokenizer saved (cannot load one from %s: %s)", source, first_line(error))
        return
    tokenizer.save_pretrained(target)
    write_portable_tokenizer_config(target)


def load_tokenizer(directory: str | Path):
    """The tokenizer saved in `directory`.

    Raises:
        InvalidCheckpointError: If `directory` has no tokenizer, or it cannot be loaded.
    """
    directory = Path(directory)
    # AutoTokenizer raises AttributeError/TypeError (not OSError) on a directory without tokenizer files.
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise InvalidCheckpointError(
            f"{directory} has no tokenizer ({', '.join(TOKENIZER_FILES)}); save the model's tokenizer there "
            "(tokenizer.save_pretrained)"
        )
    try:
        return load_auto_tokenizer(directory)
    except (OSError, ValueError, TypeError, AttributeError) as error:
        raise InvalidCheckpointError(f"cannot load the tokenizer of {directory}: {first_line(error)}") from None
