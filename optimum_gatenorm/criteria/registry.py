"""The registry of criteria: every scoring rule, weight-level or model-level, registered by name.

Weight-level criteria (`register_criterion`) map one layer's Q/K weights to a score; model-level criteria
(`register_model_criterion`) score all layers at once from the loaded model and, if data-driven, from calibration
text. For every criterion the lowest score is removed first. This module holds the registry only; the criteria
register themselves from their own modules (`gate`, `circuits`, `baselines`), which `optimum_gatenorm.criteria`
imports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..errors import InvalidConfigError


__all__ = [
    "DEFAULT_CRITERION",
    "MODEL",
    "WEIGHTS",
    "Criterion",
    "SampledScores",
    "available_criteria",
    "get_criterion",
    "register_criterion",
    "register_model_criterion",
]

WEIGHTS = "weights"
MODEL = "model"

# Chosen by the two-family study (benchmarks/RESULTS.md, "Default criterion on two families"), over k <= L / 2.5 on
# Gemma-3-270M and SmolLM2-135M, three texts each: of the criteria that need no user data, the fewest points worse
# than the median random draw (2 of 36: SmolLM2 at k = 2, by 1-4%) and the most within 1.10x of `cosine`. It costs the model's own compute (30-70 s on 2 CPU cores for these models); the weight-only criteria
# (gate_trace, gate_norm, ...) stay available by name.
DEFAULT_CRITERION = "cosine_self"


class SampledScores(NamedTuple):
    """What a model-level criterion that samples its own text returns: its scores and the windows (a
    `Calibration`) it scored on."""

    scores: list
    windows: Any


@dataclass(frozen=True)
class Criterion:
    """A scoring rule; for every criterion, lower scores are removed first.

    Args:
        name: Registry name.
        fn: For a weight-level criterion, maps one layer's `AttentionWeights` to a score. For a model-level one,
            `fn(model, layers, *, calibration, seed, progress)` returns one score per index in `layers` (the
            layers that still have attention); see `register_model_criterion`.
        description: One line for `--help` and reports.
        uses_norm: Whether a weight-level `fn` needs the pre-attention norm gain.
        uses_ov: Whether a weight-level `fn` needs the value and output projections.
        stack: Whether a weight-level `fn` scores all layers at once from a `StackWeights` (because a layer's
            score depends on the layers before it) instead of one `AttentionWeights` at a time.
        min_gap: The selection rule used with this criterion unless `GateNormConfig.min_gap` says otherwise: removed
            sublayers at least this many layers apart (1: plain "k lowest").
        level: `"weights"` (reads Q/K weights one layer at a time, straight from a checkpoint) or `"model"`
            (needs the loaded model, e.g. for forward passes).
        needs_data: Whether `fn` needs calibration data (`Calibration`).
        needs_model: Whether a model-level `fn` reads the model (`False`: it gets `None` unless one is loaded).
        uses_seed: Whether the scores depend on the `seed` argument.
    """

    name: str
    fn: Callable
    description: str
    uses_norm: bool = False
    uses_ov: bool = False
    stack: bool = False
    min_gap: int = 1
    level: str = WEIGHTS
    needs_data: bool = False
    needs_model: bool = False
    uses_seed: bool = False

    @property
    def data_free(self) -> bool:
        """True when no calibration data is needed."""
        return not self.needs_data

    @property
    def model_level(self) -> bool:
        return self.level == MODEL


_CRITERIA: dict[str, Criterion] = {}


def _register(criterion: Criterion) -> None:
    if criterion.name in _CRITERIA:
        raise ValueError(f"A criterion named {criterion.name!r} is already registered")
    _CRITERIA[criterion.name] = criterion


def _registering(**fields):
    """A decorator that registers `Criterion(fn=decorated, **fields)` and returns the function unchanged."""

    def wrapper(fn: Callable):
        _register(Criterion(fn=fn, **fields))
        return fn

    return wrapper


def register_criterion(
    name: str,
    *,
    description: str,
    uses_norm: bool = False,
    uses_ov: bool = False,
    stack: bool = False,
    min_gap: int = 1,
):
    """Decorator registering a weight-level scoring function under `name`.

    The function is `fn(AttentionWeights) -> float`, or, with `stack=True`, `fn(StackWeights) -> list[float]`
    (one score per entry of `stack.layers`; see `optimum_gatenorm.criteria.circuits`). `uses_norm` / `uses_ov` say
    which tensors beyond Q and K the `AttentionWeights` must carry; `min_gap` is the criterion's default selection
    rule (see `GateNormConfig.min_gap`).

    Raises:
        ValueError: If `name` is already registered.
    """

    return _registering(
        name=name, description=description, uses_norm=uses_norm, uses_ov=uses_ov, stack=stack, min_gap=min_gap
    )


def register_model_criterion(
    name: str, *, description: str, needs_data: bool, needs_model: bool = True, uses_seed: bool = False
):
    """Decorator registering a model-level scoring function under `name`.

    The function is called as `fn(model, layers, *, calibration, seed, progress)`:

    - `model`: the loaded `PreTrainedModel` (in eval mode, on the scoring device), or `None` when `needs_model`
      is False and the model is not loaded;
    - `layers`: sorted indices of the decoder layers that still have attention (already pruned ones are left out);
    - `calibration`: a `Calibration` (never `None` when `needs_data`), else `None`;
    - `seed`: an integer for criteria with randomness;
    - `progress`: whether to show a progress bar;

    and returns one finite score per entry of `layers`, the lowest to be removed first; a criterion that samples
    the text it scores on returns `SampledScores(scores, windows)`, so that the windows reach the report
    (`ScoreReport.windows`) and, from there, the replacement fit of the same run.

    Raises:
        ValueError: If `name` is already registered.
    """

    return _registering(
        name=name,
        description=description,
        level=MODEL,
        needs_data=needs_data,
        needs_model=needs_model,
        uses_seed=uses_seed,
    )


def available_criteria() -> list[str]:
    """The registered criterion names, sorted."""
    return sorted(_CRITERIA)


def get_criterion(name: str) -> Criterion:
    """Returns the criterion `name`.

    Raises:
        InvalidConfigError: If there is none (a `ValueError`), listing the valid names.
    """
    try:
        return _CRITERIA[name]
    except (KeyError, TypeError):  # TypeError: an unhashable name
        raise InvalidConfigError(
            f"unknown criterion {name!r}; choose one of: {', '.join(available_criteria())}"
        ) from None
