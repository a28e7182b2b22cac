"""Scoring a model with a registered criterion: the drivers behind `GateNormPruner.score` and the CLI.

`score_layers` runs a weight-level criterion on tensors read one layer at a time (from a checkpoint, lazily, or
from an in-memory model); `score_with_model` runs a model-level criterion (forward passes on calibration text, or
none at all). Both skip the layers the config records as pruned, refuse non-finite scores, and return a
`ScoreReport`. For every criterion the lowest score is removed first (`optimum_gatenorm.report.rank`).
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

from ..checkpoints.record import get_pruned_layers
from ..checkpoints.tensors import WeightSource, layer_weights
from ..errors import InvalidCheckpointError, InvalidConfigError
from ..params import ANY, param
from ..report import ScoreReport
from ..validation import check_int
from .calibration import Calibration
from .circuits import StackWeights
from .registry import DEFAULT_CRITERION, Criterion, SampledScores, get_criterion


if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel

__all__ = ["require_calibration", "score_layers", "score_with_model"]

logger = logging.getLogger(__name__)


def score_layers(
    source: "WeightSource",
    config: "PretrainedConfig",
    criterion: str = DEFAULT_CRITERION,
    *,
    device: "str | torch.device" = "cpu",
    progress: bool = False,
    source_kind: str = "checkpoint",
) -> ScoreReport:
    """Scores every attention sublayer that `config` says is present.

    Args:
        source: Where the tensors come from (a checkpoint read lazily, or an in-memory model).
        config: The model config; layers it records as pruned are skipped.
        criterion: A registered criterion name.
        device: Where to compute (e.g. `"cuda"` for very large layers).
        progress: Show a progress bar.
        source_kind: Recorded in the report (`"checkpoint"` or `"model"`).
    """
    import torch
    from tqdm.auto import tqdm

    chosen = get_criterion(criterion)
    if chosen.model_level:
        raise InvalidConfigError(
            f"criterion {criterion!r} needs the loaded model; use GateNormPruner.score or score_with_model"
        )
    total = config.num_hidden_layers
    pruned = set(get_pruned_layers(config))
    start = time.perf_counter()
    with torch.no_grad():
        layers = [i for i in range(total) if i not in pruned]
        if chosen.stack:
            values = chosen.fn(StackWeights(source, config, layers, device=device, progress=progress))
        else:
            values = []
            for layer in tqdm(layers, desc=f"Scoring ({criterion})", unit="layer", disable=not progress):
                weights = layer_weights(
                    source, config, layer, with_norm=chosen.uses_norm, with_ov=chosen.uses_ov, device=device
                )
                values.append(chosen.fn(weights))
    scores = _scores_by_layer(criterion, total, layers, values, cause="the weights hold NaN/Inf or overflow")
    return _report(config, chosen, scores, pruned, time.perf_counter() - start, source_kind)


def _scores_by_layer(criterion: str, total: int, layers: list[int], values, *, cause: str) -> list[float | None]:
    """`values` (one per entry of `layers`) spread over all `total` layers, `None` elsewhere.

    Raises:
        ValueError: If the criterion returned the wrong number of scores (a bug in the criterion).
        InvalidCheckpointError: If a score is NaN or infinite.
    """
    values = [float(value) for value in values]
    if len(values) != len(layers):
        raise ValueError(f"criterion {criterion!r} returned {len(values)} scores for {len(layers)} layers")
    scores: list[float | None] = [None] * total
    for layer, value in zip(layers, values, strict=True):
        if not math.isfinite(value):
            raise InvalidCheckpointError(
                f"layer {layer}: criterion {criterion!r} gave a non-finite score ({value}); {cause}"
            )
        scores[layer] = value
    return scores


def _report(config, chosen: Criterion, scores, pruned, seconds: float, source_kind: str, **extra) -> ScoreReport:
    logger.info("Scored %d attention sublayers with %s in %.3f s", len(scores) - len(pruned), chosen.name, seconds)
    return ScoreReport(
        model_type=config.model_type,
        criterion=chosen.name,
        num_hidden_layers=config.num_hidden_layers,
        scores=scores,
        pruned_layers=sorted(pruned),
        scoring_seconds=seconds,
        source=source_kind,
        data_free=chosen.data_free,
        **extra,
    )


def require_calibration(chosen: Criterion, calibration: "Calibration | None") -> None:
    """Raises `InvalidConfigError` if `chosen` is data-driven and `calibration` is `None`."""
    if chosen.needs_data and calibration is None:
        raise InvalidConfigError(
            f"criterion {chosen.name!r} is data-driven and needs calibration text: pass "
            f"{param('calibration_text', ANY)} (text files; or calibration=Calibration.from_files(paths, tokenizer) "
            "where a function takes a Calibration)"
        )


def score_with_model(
    model: "PreTrainedModel | None",
    config: "PretrainedConfig",
    criterion: str,
    *,
    calibration: "Calibration | None" = None,
    seed: int = 0,
    device: "str | torch.device | None" = None,
    progress: bool = False,
    source_kind: str = "model",
) -> ScoreReport:
    """Scores every attention sublayer that `config` says is present with a model-level criterion.

    Args:
        model: The loaded model (`None` only for criteria with `needs_model=False`, e.g. `random`, `last`).
        config: The model config; layers it records as pruned are skipped and get the score `None`.
        criterion: A registered model-level criterion name.
        calibration: Token windows; required by data-driven criteria (`cosine`, `attn_norm`), ignored otherwise.
        seed: Seed of criteria with randomness (`random`).
        device: Moves `model` there (in place) before the forward passes; `None` keeps it where it is.
        progress: Show a progress bar over the forward passes.
        source_kind: Recorded in the report.

    Raises:
        InvalidConfigError: Unknown or weight-level criterion, missing calibration data, bad seed, token ids
            outside the vocabulary.
        InvalidCheckpointError: If the criterion yields a non-finite score (NaN/Inf weights).
    """
    chosen = get_criterion(criterion)
    if not chosen.model_level:
        raise InvalidConfigError(f"criterion {criterion!r} is weight-level; use score_layers")
    check_int("seed", seed)
    require_calibration(chosen, calibration)
    if not chosen.needs_data:
        calibration = None
    if chosen.needs_model and model is None:
        raise InvalidConfigError(f"criterion {criterion!r} needs the loaded model")
    if model is not None and device is not None:
        model.to(device)
    if calibration is not None and model is not None:
        calibration.check_vocab(model.get_input_embeddings().num_embeddings)
    total = config.num_hidden_layers
    pruned = set(get_pruned_layers(config))
    layers = [i for i in range(total) if i not in pruned]
    start = time.perf_counter()
    values = chosen.fn(model, layers, calibration=calibration, seed=seed, progress=progress)
    seconds = time.perf_counter() - start
    values, windows = values if isinstance(values, SampledScores) else (values, None)
    scores = _scores_by_layer(criterion, total, layers, values, cause="the weights or activations hold NaN or Inf")
    return _report(
        config,
        chosen,
        scores,
        pruned,
        seconds,
        source_kind,
        seed=seed if chosen.uses_seed else None,
        calibration=calibration.to_dict() if calibration is not None else None,
        windows=windows,
    )
