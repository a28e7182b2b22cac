"""Exceptions for user errors.

Every exception here means "the input was wrong, here is how to fix it": the CLI prints its message on one line
and exits with status 2. Each subclasses the built-in exception a Python caller would expect, so `except
ValueError` and `except FileNotFoundError` keep working.
"""

__all__ = [
    "ExportError",
    "GateNormError",
    "InvalidCheckpointError",
    "InvalidConfigError",
    "MissingExtraError",
    "ModelNotFoundError",
    "OutputExistsError",
    "OutputInUseError",
    "OutputNotWritableError",
    "UnsupportedModelError",
]


class GateNormError(Exception):
    """Base class of the errors caused by user input (bad paths, unsupported models, bad options)."""


class InvalidConfigError(GateNormError, ValueError):
    """A pruning option has a bad value (e.g. a negative `num_layers`)."""


class ModelNotFoundError(GateNormError, FileNotFoundError):
    """The model path or alias does not exist, or a file the checkpoint needs is missing."""


class InvalidCheckpointError(GateNormError, ValueError):
    """The checkpoint exists but cannot be used as it is (pickled weights, truncated file, NaN weights...)."""


class UnsupportedModelError(GateNormError, ValueError):
    """The architecture or one of its options is not supported."""


class OutputExistsError(GateNormError, FileExistsError):
    """The output path exists and `overwrite` was not given."""


class OutputInUseError(OutputExistsError):
    """Another run (a live process) is writing the same output right now."""


class ExportError(GateNormError, RuntimeError):
    """An export failed part-way (nothing was left behind)."""


class OutputNotWritableError(GateNormError, PermissionError):
    """The output (or cache) location cannot be written: a read-only filesystem, no permission, a full disk."""


class MissingExtraError(GateNormError, ImportError):
    """A feature needs an optional extra that is not installed (e.g. `[onnx]` for the ONNX export)."""
