"""Checkpoints: reading weights lazily, the pruning record, saving and loading pruned models, built-in models.

- `tensors`: validating a checkpoint directory and reading its tensors one at a time (`inspect_checkpoint`,
  `WeightSource`, `layer_weights`).
- `record`: the pruning record in `config.json` (`PrunedAttentionConfig`, `get_pruned_layers`).
- `modeling`: the transformers loader hook and `prune_model` / `load_pruned` / `save_pruned`.
- `models`: resolving `--model` (directories, `.gguf` files, built-in aliases).
- `structure`: the surgery that removes attention sublayers from a model (and that loading replays), and the
  modules that replace them.
- `card`: the model card a pruned checkpoint carries.

Import from the submodules, or the public names from `optimum_gatenorm`; this `__init__` imports nothing, so that
`structure` loads without the loader (`benchmarks/gpu_study.py` imports it on machines without the whole stack).
"""
