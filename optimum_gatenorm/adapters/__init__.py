"""Architecture adapters: every per-architecture fact, one module per model family.

`base.py` defines what an adapter declares (`ArchitectureAdapter`; every field is a fact the rest of the package
reads) and `registry.py` the registry keyed by `config.model_type`. Each family module builds its adapters and
registers them where it defines them (`register_adapter`); this `__init__` imports every module of the folder, so
adding an architecture is one new module here (docs/architectures.md, "Add an architecture").
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import (
    ArchitectureAdapter,
    CompatFacts,
    ForTests,
    FusedConv1D,
    FusedRows,
    HeadDims,
    HeadInterleaved,
    MLPLayout,
    Numerics,
    OnnxFacts,
    ParameterLayout,
    QKLayout,
    SeparateProjections,
    ServingFacts,
)
from .registry import describe_architectures, get_adapter, register_adapter, supported_model_types


__all__ = [
    "FAMILY_MODULES",
    "ArchitectureAdapter",
    "CompatFacts",
    "ForTests",
    "FusedConv1D",
    "FusedRows",
    "HeadDims",
    "HeadInterleaved",
    "MLPLayout",
    "Numerics",
    "OnnxFacts",
    "ParameterLayout",
    "QKLayout",
    "SeparateProjections",
    "ServingFacts",
    "get_adapter",
    "register_adapter",
    "describe_architectures",
    "supported_model_types",
]

# Every module of this folder but the two above is a family module, imported (and so registered) here.
FAMILY_MODULES = tuple(
    sorted(info.name for info in pkgutil.iter_modules(__path__) if info.name not in ("base", "registry"))
)
for _name in FAMILY_MODULES:
    importlib.import_module(f"{__name__}.{_name}")
