"""Checkpoints: reading weights lazily, the pruning record, saving and loading pruned models, built-in models.

- `tensors`: validating a checkpoint directory and reading its tensors one at a time (`inspect_checkpoint`,
  `WeightSource`, `layer_weights`).
- `record`: the pruning record in `config.json` (`PrunedAttentionConfig`, `get_pruned_layers`).
- `modeling`: the transformers loader hook and `prune_model` / `load_pruned` / `save_pruned`.
- `models`: resolving `--model` (directories, `.gguf` files, built-in aliases).
"""

from .modeling import TOKENIZER_FILES, GateNormQuantizer, load_pruned, prune_model, save_pruned, write_pruned
from .models import BUILTIN_MODELS, DEFAULT_MODEL, cache_dir, convert_gguf, resolve_model
from .record import GATENORM_QUANT_METHOD, PrunedAttentionConfig, get_pruned_layers
from .tensors import (
    AttentionWeights,
    Checkpoint,
    ModelWeights,
    WeightSource,
    inspect_checkpoint,
    layer_weights,
)


__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "GATENORM_QUANT_METHOD",
    "TOKENIZER_FILES",
    "AttentionWeights",
    "Checkpoint",
    "GateNormQuantizer",
    "ModelWeights",
    "PrunedAttentionConfig",
    "WeightSource",
    "cache_dir",
    "convert_gguf",
    "get_pruned_layers",
    "inspect_checkpoint",
    "layer_weights",
    "load_pruned",
    "prune_model",
    "resolve_model",
    "save_pruned",
    "write_pruned",
]
