"""Speed-up planning: how many attention sublayers to remove for a target speed-up, and what bounds it.

Two predictions of the speed-up of removing k attention sublayers, for prefill and for decode:

* **Measured** (`AttentionShares`, from `measuring.measure_attention_shares`): timed ablation of whole sublayers on the
  target backend. The unpruned model (n attention sublayers) and the model with n - 1 of them removed are timed,
  interleaved, at each (batch, context); then

      t_attn = (T(k=0) - T(k=n-1)) / (n - 1)     the measured time of one attention sublayer
      share  = n * t_attn / T(k=0)               attention's share of the measured time
      ideal(k) = T0 / (T0 - k * t_attn) = 1 / (1 - k * share / n)

  `ideal(k)` is the speed-up if every removed sublayer's measured time vanished and nothing else changed, so a
  measured speed-up divided by it (efficiency) is at most 100% up to noise. All attention sublayers of a model
  have the same shape, so which n - 1 are removed does not matter, and one ablation serves every k.
* **Analytical** (`optimum_gatenorm.speed.cost_model`): the FLOPs ratio for prefill (compute-bound) and the bytes ratio
  for decode (memory-bound). Hardware-independent, but it counts matmul work and weight/KV bytes only, so on a
  backend where each sublayer carries overheads (kernel dispatch, softmax, KV-cache copies) it is not a bound.

A removed sublayer that gets a replacement (`optimum_gatenorm.pruning.replacement`) is not free: a `linear` one
costs one D x D product per token. Both predictions count it. The analytical one adds it to the pruned model's cost
(`ModelCost.replacements`). The measured one keeps only `1 - r` of each removed sublayer's time, where `r` is the
replacement's cost as a share of one attention sublayer's under the phase's bound (FLOPs for prefill, bytes for
decode), from the cost model: the ablation times removal, not the replacement. A `mean` replacement is one vector
add, counted as free.

`plan_num_layers` returns the smallest k whose prediction reaches a target; `resolve_target` is what
`optimum-cli gatenorm prune --target-speedup` calls. Everything here is arithmetic on a configuration and, where
given, measured shares: it builds, prunes and times nothing (`measuring` does).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..adapters import get_adapter
from ..checkpoints.record import get_pruned_layers, get_replacements
from ..criteria import DEFAULT_CRITERION, breakdown_warning, get_criterion
from ..errors import InvalidConfigError
from ..pruning.configuration import GateNormConfig
from ..pruning.replacement import REPLACEMENTS
from ..validation import check_choice, check_int
from .cost_model import ModelCost, ideal_speedup, replacement_share, sliding_window_layers
from .shares import PHASES, AttentionShares, ShareCell, load_shares


if TYPE_CHECKING:
    from collections.abc import Iterable

    from transformers import PretrainedConfig


__all__ = [
    "PHASES",
    "AttentionShares",
    "SpeedupTarget",
    "ShareCell",
    "load_shares",
    "plan_num_layers",
    "plan_config",
    "predict_speedup",
    "replacement_cost_share",
    "resolve_target",
]

logger = logging.getLogger(__name__)

PLAN_PHASES = (*PHASES, "both")


def _attention_count(config: PretrainedConfig) -> tuple[int, list[int]]:

    pruned = list(get_pruned_layers(config))
    return config.num_hidden_layers - len(pruned), pruned


def _candidate(config: PretrainedConfig, k: int, replacement: str) -> ModelCost:
    """The model of `config` with k more attention sublayers removed, each replaced by `replacement`: the cheapest
    ones, so that a plan holds whichever k the criterion picks (sliding-window layers first, whose cost stops
    growing at the window; all others cost the same)."""
    n, pruned = _attention_count(config)
    _, sliding = sliding_window_layers(config)
    kept = [i for i in range(config.num_hidden_layers) if i not in pruned]
    removed = sorted(kept, key=lambda i: i not in sliding)[:k]
    replacements = get_replacements(config)
    if replacement != "none":
        replacements.update(dict.fromkeys(removed, replacement))
    return ModelCost.from_config(config, pruned_layers=sorted(pruned + removed), replacements=replacements)


def _bound(phase: str) -> str:
    return "compute_bound" if phase == "prefill" else "memory_bound"


def _analytical(k: int, config: PretrainedConfig, phase: str, batch: int, context: int, replacement: str) -> float:
    bounds = ideal_speedup(ModelCost.from_config(config), _candidate(config, k, replacement), phase, batch, context)
    return bounds[_bound(phase)]


def replacement_cost_share(config: PretrainedConfig, replacement: str, phase: str, batch: int, context: int) -> float:
    """The cost of one `replacement` as a share of the attention sublayer it replaces, by the cost model: FLOPs for
    prefill, bytes for decode (0.0 for `"none"`; a `"mean"` vector costs a few bytes)."""
    check_choice("replacement", replacement, REPLACEMENTS)
    if replacement == "none":
        return 0.0
    return replacement_share(ModelCost.from_config(config), _candidate(config, 1, replacement), phase, batch, context)


def predict_speedup(
    k: int,
    shares: AttentionShares | None,
    config: PretrainedConfig,
    phase: str,
    batch: int,
    context: int,
    replacement: str = "none",
) -> float:
    """Predicted speed-up of removing `k` more attention sublayers from the model of `config`.

    From `shares` (the measured bound) when given, else from the analytical cost model (prefill: FLOPs ratio,
    decode: bytes ratio, at `context` positions). 1.0 at k = 0, non-decreasing in k. Each removed sublayer's
    `replacement` is counted as the module doc says.

    Args:
        k: Sublayers removed, 0 to n - 1.
        shares: Measured shares of this model on the target backend, or `None`.
        config: The model's config (pruned or not).
        phase: `"prefill"`, `"decode"` or `"both"` (the smaller of the two).
        batch: Batch size.
        context: Prompt length (prefill) or context length (decode), in tokens.
        replacement: What replaces each removed sublayer: `"none"`, `"mean"` or `"linear"`.

    Raises:
        InvalidConfigError: Bad arguments, k out of range, or shares measured on another model.
    """
    check_choice("phase", phase, PLAN_PHASES)
    check_int("k", k, 0)
    check_int("batch", batch, 1)
    check_int("context", context, 1)
    check_choice("replacement", replacement, REPLACEMENTS)
    n, _ = _attention_count(config)
    if k > n - 1:
        raise InvalidConfigError(f"k must be at most {n - 1} (the model has {n} attention sublayers), got {k}")
    if phase == "both":
        return min(predict_speedup(k, shares, config, p, batch, context, replacement) for p in PHASES)
    if k == 0:
        return 1.0
    if shares is not None:
        shares.check_model(config)
        kept_share = replacement_cost_share(config, replacement, phase, batch, context)
        return shares.speedup(k, phase, batch, context, kept_share)
    return _analytical(k, config, phase, batch, context, replacement)


def _check_target(target: Any) -> float:
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target) or target <= 1:
        raise InvalidConfigError(f"target speed-up must be a number > 1 (e.g. 1.2 for 20% faster), got {target!r}")
    return float(target)


def _source(
    shares: AttentionShares | None,
    phase: str,
    batch: int,
    context: int,
    replacement: str = "none",
    config: PretrainedConfig | None = None,
) -> str:
    counted = "" if replacement == "none" else f", {replacement} replacements counted"
    if shares is None:
        window, sliding = sliding_window_layers(config) if config is not None else (None, ())
        if sliding and window < context:
            counted += f", sliding-window layers (window {window}) counted first as the cheapest to remove"
        return f"analytical cost model (prefill: FLOPs ratio, decode: bytes ratio{counted})"
    phases = PHASES if phase == "both" else (phase,)
    measured = "; ".join(f"{p} {shares.share(p, batch, context)[1]}" for p in phases)
    if replacement == "none":
        return measured
    return f"{measured}; {replacement} replacements' cost from the cost model"


def plan_num_layers(
    target: float,
    config: PretrainedConfig,
    *,
    phase: str = "both",
    batch: int = 1,
    context: int = 1024,
    shares: AttentionShares | None = None,
    max_k: int | None = None,
    replacement: str = "none",
) -> int:
    """The smallest k whose predicted speed-up (`predict_speedup`) reaches `target`.

    Args:
        target: The speed-up to reach, > 1.
        config: The model's config.
        phase: `"prefill"`, `"decode"` or `"both"` (both must reach it).
        batch: Batch size.
        context: Prompt / context length in tokens.
        shares: Measured shares of this model on the target backend; the analytical model when `None`.
        max_k: The most sublayers that may go (default n - 1; lower it for protected or excluded layers).
        replacement: What replaces each removed sublayer (`"none"`, `"mean"`, `"linear"`): its cost counts.

    Raises:
        InvalidConfigError: If no k up to `max_k` reaches `target` (one line, naming the best reachable
            speed-up), or a bad argument.
    """
    target = _check_target(target)
    check_choice("phase", phase, PLAN_PHASES)
    n, _ = _attention_count(config)
    limit = n - 1 if max_k is None else min(check_int("max_k", max_k, 0), n - 1)
    for k in range(1, limit + 1):
        if predict_speedup(k, shares, config, phase, batch, context, replacement) >= target:
            return k
    best = math.floor(predict_speedup(limit, shares, config, phase, batch, context, replacement) * 1000) / 1000
    what = "speed-up" if phase == "both" else f"{phase} speed-up"
    source = _source(shares, phase, batch, context, replacement, config)
    raise InvalidConfigError(
        f"no k reaches a {target:g}x {what} at batch {batch}, context {context}: the best is {best:.3f}x at "
        f"k={limit} of {n} attention sublayers ({source}); ask for at most that"
    )


def resolve_target(
    model_config: PretrainedConfig,
    target: float,
    *,
    phase: str = "both",
    batch: int = 1,
    context: int = 1024,
    shares_file: str | Path | AttentionShares | None = None,
    criterion: str | None = None,
    min_gap: int | None = None,
    protect_first: int = 1,
    protect_last: int = 0,
    exclude_layers: Iterable[int] = (),
    replacement: str = "none",
) -> tuple[int, dict]:
    """What `prune --target-speedup` needs: the k to remove and what is predicted for it.

    The most sublayers that may go is n - 1 less the protected and excluded ones (as `GateNormConfig` counts
    them).

    Args:
        model_config: The model's config (read before loading any weight).
        target: Speed-up to reach, > 1.
        phase: `"prefill"`, `"decode"` or `"both"`.
        batch: Batch size.
        context: Prompt / context length in tokens.
        shares_file: A JSON written by `AttentionShares.save` (or the object); the analytical model when `None`.
        criterion: The criterion that will choose the layers (for the measured-quality warning; default: the
            default criterion).
        min_gap: Its spacing rule (default: the criterion's).
        protect_first, protect_last, exclude_layers: As in `GateNormConfig`.
        replacement: What will replace each removed sublayer, as in `GateNormConfig` (its cost counts).

    Returns:
        `(k, predicted)`: `predicted` holds `target`, `phase`, `batch`, `context`, `replacement`, `num_layers` (k),
        `num_attention_layers`, `prefill` and `decode` (predicted speed-ups at k), `source`, `warning` (the
        measured-quality warning for k, or `None`) and `summary` (one line to print).

    Raises:
        InvalidConfigError: Unreachable target (one line, with the best reachable speed-up), a shares file
            measured on another model, or bad arguments.
        FileNotFoundError: If `shares_file` does not exist.
    """

    shares = load_shares(shares_file, model_config) if shares_file is not None else None
    criterion = criterion or DEFAULT_CRITERION
    request = GateNormConfig(
        num_layers=0,
        criterion=criterion,
        protect_first=protect_first,
        protect_last=protect_last,
        exclude_layers=tuple(exclude_layers),
        min_gap=min_gap,
    )
    total = model_config.num_hidden_layers
    n, pruned = _attention_count(model_config)
    blocked = set(request.protected_layers(total)) | set(request.exclude_layers) | set(pruned)
    max_k = min(n - 1, sum(1 for i in range(total) if i not in blocked))
    k = plan_num_layers(
        target,
        model_config,
        phase=phase,
        batch=batch,
        context=context,
        shares=shares,
        max_k=max_k,
        replacement=replacement,
    )
    predicted = {p: predict_speedup(k, shares, model_config, p, batch, context, replacement) for p in PHASES}
    resolved_gap = min_gap if min_gap is not None else get_criterion(criterion).min_gap
    measured_on = get_adapter(model_config).quality_reference
    warning = breakdown_warning(criterion, resolved_gap, k, total, measured_on=measured_on)
    source = _source(shares, phase, batch, context, replacement, model_config)
    summary = (
        f"target {target:g}x ({phase}) at batch {batch}, context {context}: removing {k} of {n} attention sublayers, "
        f"predicted prefill {predicted['prefill']:.3f}x, decode {predicted['decode']:.3f}x ({source})"
    )
    return k, {
        "target": float(target),
        "phase": phase,
        "batch": batch,
        "context": context,
        "replacement": replacement,
        "num_layers": k,
        "num_attention_layers": n,
        "prefill": predicted["prefill"],
        "decode": predicted["decode"],
        "source": source,
        "warning": warning,
        "summary": summary,
    }


@dataclass(frozen=True)
class SpeedupTarget:
    """A speed-up to prune to: `prune_and_save(target_speedup=...)`, `optimum-cli gatenorm prune --target-speedup`.

    Args:
        speedup: The speed-up to reach, a finite number > 1 (e.g. 1.2).
        phase: `"prefill"`, `"decode"` or `"both"` (both must reach it).
        batch: Batch size.
        context: Prompt / context length in tokens.
        shares: Attention shares measured on the target backend (a JSON path written by
            `measure_attention_shares(...).save`, or the object); the analytical cost model when `None`.

    Raises:
        InvalidConfigError: On a bad value, naming the field.
    """

    speedup: float
    phase: str = "both"
    batch: int = 1
    context: int = 1024
    shares: "str | Path | AttentionShares | None" = None

    def __post_init__(self):
        object.__setattr__(self, "speedup", _check_target(self.speedup))
        check_choice("phase", self.phase, PLAN_PHASES)
        check_int("batch", self.batch, 1)
        check_int("context", self.context, 1)


def plan_config(
    model_config: PretrainedConfig, config: GateNormConfig, target: SpeedupTarget
) -> tuple[GateNormConfig, dict]:
    """`config` with `num_layers` set to the fewest sublayers that reach `target` (`resolve_target`), counting
    its protected and excluded layers, its criterion's spacing rule and its replacement's cost.

    Returns:
        `(planned config, predicted)`: `predicted` as `resolve_target` returns it.

    Raises:
        InvalidConfigError: If `config` already gives `num_layers` or `ratio`, or the target is unreachable.
        FileNotFoundError: If the shares file does not exist.
    """
    if config.has_amount:
        raise InvalidConfigError(
            "give a target speed-up or num_layers / ratio, not both (leave both unset in the GateNormConfig)"
        )
    k, predicted = resolve_target(
        model_config,
        target.speedup,
        phase=target.phase,
        batch=target.batch,
        context=target.context,
        shares_file=target.shares,
        criterion=config.criterion,
        min_gap=config.min_gap,
        protect_first=config.protect_first,
        protect_last=config.protect_last,
        exclude_layers=config.exclude_layers,
        replacement=config.replacement,
    )
    return replace(config, num_layers=k), predicted
