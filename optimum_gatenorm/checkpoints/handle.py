"""One model, resolved once: `ModelHandle`.

A command or library call takes its model as a `--model` value (a checkpoint directory, a `.gguf` file, a built-in
alias) or as a model in memory. `ModelHandle.open` turns either into one object, once: the checkpoint directory (the
alias resolved, a `.gguf` file converted), its validated config and architecture adapter, without loading any weight;
`load()` builds the model (with its pruned structure) on first use and keeps it. The exporters open one per call, so a
path is resolved, inspected and checked once, and every refusal comes before the weights load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..adapters import get_adapter


if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel

    from ..adapters import ArchitectureAdapter
    from .tensors import Checkpoint

__all__ = ["ModelHandle"]


@dataclass
class ModelHandle:
    """A model resolved once (see the module docstring).

    Args:
        source: The checkpoint directory, or `None` for a model passed in memory.
        config: Its config (for a directory: read without remote code and validated).
        adapter: Its architecture adapter, found once.
        checkpoint: The inspected checkpoint (weight map, format), `None` for a model in memory.
        allow_pickle: Whether `pytorch_model.bin` weights may be loaded.
    """

    source: Path | None
    config: "PretrainedConfig"
    adapter: "ArchitectureAdapter"
    checkpoint: "Checkpoint | None" = None
    allow_pickle: bool = False
    _model: "PreTrainedModel | None" = field(default=None, repr=False)

    @classmethod
    def open(cls, model: "str | Path | PreTrainedModel | ModelHandle", *, allow_pickle: bool = False) -> ModelHandle:
        """Resolves `model` without loading weights; a handle is returned as it is.

        Raises:
            ModelNotFoundError: A path that does not exist.
            InvalidCheckpointError: A directory that is not a loadable checkpoint.
            UnsupportedModelError: An architecture or option the package does not support.
        """
        if isinstance(model, ModelHandle):
            return model
        if isinstance(model, (str, Path)):
            from .models import resolve_model
            from .tensors import inspect_checkpoint

            checkpoint = inspect_checkpoint(resolve_model(model), allow_pickle=allow_pickle)
            adapter = get_adapter(checkpoint.config)
            return cls(checkpoint.path, checkpoint.config, adapter, checkpoint, allow_pickle)
        return cls(None, model.config, get_adapter(model.config), None, allow_pickle, model)

    def load(self, dtype: "str | torch.dtype" = "auto") -> "PreTrainedModel":
        """The model: the one passed in, or the checkpoint loaded once with its pruned structure (`load_pruned`)."""
        if self._model is None:
            from .modeling import load_checkpoint

            self._model = load_checkpoint(self.checkpoint, dtype=dtype)
        return self._model
