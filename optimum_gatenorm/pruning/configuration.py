"""`GateNormConfig`: what to prune and how to choose it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..criteria import DEFAULT_CRITERION, get_criterion
from ..errors import InvalidConfigError
from ..validation import is_int
from ..version import __version__
from .fits import DISTILL_SAMPLES, DISTILL_STEPS, check_fit
from .replacement import check_replacement


__all__ = ["GateNormConfig"]


@dataclass
class GateNormConfig:
    """How many attention sublayers to remove, and which are candidates.

    Args:
        num_layers: Number of attention sublayers to remove. Give this or `ratio` (or neither, when
            `prune_and_save(target_speedup=...)` plans the number).
        ratio: Fraction of all attention sublayers to remove, in `[0, 1)`, rounded to the nearest count
            (halves round up).
        criterion: Name of the scoring criterion (see `available_criteria()`; default `cosine_self`, chosen by the
            two-family criterion study in benchmarks/RESULTS.md); the lowest scores go first.
        protect_first: Never remove the first this-many attention sublayers (layer 0 is usually critical).
        protect_last: Never remove the last this-many attention sublayers.
        exclude_layers: Layer indices that are never removed.
        min_gap: Keep removed sublayers at least this many layers apart (counting sublayers removed earlier), so no
            contiguous block goes: walking the ranking lowest first, a candidate closer than `min_gap` to one
            already chosen is skipped; if fewer than k fit, the rest are taken lowest-first and the pruning
            report warns. 1 is plain "k lowest"; `None` (the default) uses the criterion's own rule
            (`Criterion.min_gap`: 2 for `gate_trace`, 1 for the others).
        seed: Seed of criteria with randomness (the `random` baseline, and the text `cosine_self` samples); ignored
            by the others. A replacement is fitted on the text `cosine_self` samples with this seed.
        replacement: What a removed attention sublayer is replaced by (`optimum_gatenorm.pruning.replacement`):
            `"linear"` (the default: a bias-free d x d map of the layer's normalised input), `"mean"` (a constant
            vector per layer) or `"none"` (removed plainly, the earlier behaviour), fitted on the self-sampled text of
            `cosine_self` (or the calibration text given to the pruner). `linear` was chosen by the replacement
            study (benchmarks/RESULTS.md, docs/replacement.md): on SmolLM2-135M it beat `mean` and `none` in
            perplexity, KL divergence and top-1 agreement at every measured point. Nemotron-NAS exports need
            `"none"`.
        fit: How a replacement's parameters are obtained (`pruning.fits`): `"least-squares"` (the default: each
            map alone, in closed form) or `"distill"` (least squares, then every map together, end to end, against
            the unpruned model's next-token distribution on text it samples itself; opt-in, see
            docs/replacement.md).
        distill_steps: With `fit="distill"`: at most this many Adam steps (fewer when the held-out KL stops
            falling).
        distill_samples: With `fit="distill"`: sequences the model samples (seed `seed`, 256 tokens each) to distill
            on, their last quarter held out; with calibration text given to the pruner, its windows are used
            instead.
    """

    num_layers: int | None = None
    ratio: float | None = None
    criterion: str = DEFAULT_CRITERION
    protect_first: int = 1
    protect_last: int = 0
    exclude_layers: tuple[int, ...] = field(default_factory=tuple)
    min_gap: int | None = None
    seed: int = 0
    replacement: str = "linear"
    fit: str = "least-squares"
    distill_steps: int = DISTILL_STEPS
    distill_samples: int = DISTILL_SAMPLES

    def __post_init__(self):
        if self.num_layers is not None and self.ratio is not None:
            raise InvalidConfigError(
                f"give one of num_layers or ratio, not both (got num_layers={self.num_layers!r}, ratio={self.ratio!r})"
            )
        if self.num_layers is not None and (not is_int(self.num_layers) or self.num_layers < 0):
            raise InvalidConfigError(f"num_layers must be an integer >= 0, got {self.num_layers!r}")
        if self.ratio is not None:
            if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0 <= self.ratio < 1:
                raise InvalidConfigError(f"ratio must be a number in [0, 1), got {self.ratio!r}")
            self.ratio = float(self.ratio)
        for name in ("protect_first", "protect_last"):
            value = getattr(self, name)
            if not is_int(value) or value < 0:
                raise InvalidConfigError(f"{name} must be an integer >= 0, got {value!r}")
        if isinstance(self.exclude_layers, (str, bytes)) or not all(is_int(i) for i in self.exclude_layers):
            raise InvalidConfigError(f"exclude_layers must be a list of layer indices, got {self.exclude_layers!r}")
        bad = [i for i in self.exclude_layers if i < 0]
        if bad:
            raise InvalidConfigError(f"exclude_layers must be >= 0, got {bad}")
        self.exclude_layers = tuple(sorted(set(self.exclude_layers)))
        if self.min_gap is not None and (not is_int(self.min_gap) or self.min_gap < 1):
            raise InvalidConfigError(
                f"min_gap must be an integer >= 1 (or None for the criterion's), got {self.min_gap!r}"
            )
        if not is_int(self.seed):
            raise InvalidConfigError(f"seed must be an integer, got {self.seed!r}")
        check_replacement(self.replacement)
        check_fit(self.fit, self.replacement, self.distill_steps)
        if not is_int(self.distill_samples) or self.distill_samples < 2:
            raise InvalidConfigError(
                f"distill_samples must be an integer >= 2 (one quarter is held out), got {self.distill_samples!r}"
            )

        get_criterion(self.criterion)

    def resolve_num_layers(self, total: int) -> int:
        """The number of sublayers to remove from a model with `total` attention sublayers.

        Raises:
            InvalidConfigError: If the config gives neither `num_layers` nor `ratio`.
        """
        if self.num_layers is not None:
            return self.num_layers
        if self.ratio is None:
            raise InvalidConfigError(
                "give num_layers or ratio (or a target speed-up to plan it: prune_and_save(target_speedup=...))"
            )
        return math.floor(self.ratio * total + 0.5)

    @property
    def has_amount(self) -> bool:
        """Whether `num_layers` or `ratio` says how many sublayers go."""
        return self.num_layers is not None or self.ratio is not None

    @property
    def resolved_min_gap(self) -> int:
        """`min_gap`, or the criterion's own rule when it is `None`."""
        return self.min_gap if self.min_gap is not None else get_criterion(self.criterion).min_gap

    def protected_layers(self, total: int) -> list[int]:
        """Indices that `protect_first` / `protect_last` keep, for a model with `total` decoder layers."""
        first = range(min(self.protect_first, total))
        last = range(max(total - self.protect_last, 0), total)
        return sorted(set(first) | set(last))

    def to_dict(self) -> dict:
        out = asdict(self)
        out["exclude_layers"] = list(self.exclude_layers)
        out["min_gap"] = self.resolved_min_gap
        out["gatenorm_version"] = __version__
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "GateNormConfig":
        data = {k: v for k, v in data.items() if k != "gatenorm_version"}
        if "exclude_layers" in data:
            data["exclude_layers"] = tuple(data["exclude_layers"])
        return cls(**data)
