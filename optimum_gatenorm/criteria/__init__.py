"""Criteria: how attention sublayers are scored, and the registry every API takes criterion names from.

- `registry`: `Criterion`, `register_criterion` / `register_model_criterion`, `get_criterion`.
- `gate`: the Gate-Norm family (`gate_norm`, `gate_norm_head`, `gate_norm_folded`) and `gate_trace`.
- `circuits`: weight-only criteria of the value-output circuit (`ov_norm`, `gate_ov`, `ov_relative`).
- `routing`: `trace_write`, the ranks of `gate_trace` and of the attention's relative write, summed.
- `baselines`: data-driven (`cosine`, `attn_norm`) and control (`random`, `last`) baselines.
- `selfcal`: `cosine_self`, `cosine` on text the model samples itself (no user data).
- `calibration`: the token windows data-driven criteria run on.
- `scoring`: the drivers (`score_layers`, `score_with_model`) that run a criterion over a model's layers.
- `measurements`: where the criterion study saw each criterion break down, for warnings.

Importing this package imports the criterion modules, which register themselves (as peft's tuners do).
"""

from . import baselines, circuits, gate, routing, selfcal  # noqa: F401  (register their criteria)
from .calibration import Calibration
from .measurements import breakdown_warning
from .registry import (
    DEFAULT_CRITERION,
    Criterion,
    SampledScores,
    available_criteria,
    get_criterion,
    register_criterion,
    register_model_criterion,
)
from .scoring import require_calibration, score_layers, score_with_model


__all__ = [
    "DEFAULT_CRITERION",
    "Calibration",
    "Criterion",
    "SampledScores",
    "available_criteria",
    "breakdown_warning",
    "get_criterion",
    "register_criterion",
    "register_model_criterion",
    "require_calibration",
    "score_layers",
    "score_with_model",
]
