"""JSON-serialisable reports of scoring and pruning."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .serialization import JSONMixin
from .version import __version__


__all__ = ["REPORT_FILE", "PruningReport", "ScoreReport", "rank"]

REPORT_FILE = "gatenorm_report.json"


def rank(scores: Sequence[float | None]) -> list[int]:
    """Layer indices with a score, lowest score first (ties: lower index first): the removal order of every
    criterion."""
    return sorted((i for i, s in enumerate(scores) if s is not None), key=lambda i: (scores[i], i))


@dataclass
class ScoreReport(JSONMixin):
    """Per-layer scores of one criterion.

    Args:
        model_type: `config.model_type`.
        criterion: Criterion name.
        num_hidden_layers: Number of decoder layers.
        scores: Score per decoder layer; `None` for layers whose attention was already removed.
        pruned_layers: Layers without attention before scoring (from an earlier pruning).
        scoring_seconds: Wall time of the scoring.
        source: `"checkpoint"` (read lazily from files) or `"model"` (an in-memory model).
        data_free: Whether the criterion used no data (False: forward passes on calibration text).
        seed: The seed, for criteria with randomness (`random`); else `None`.
        calibration: For data-driven criteria, the calibration settings (`num_samples`, `length`, `num_tokens`,
            `batch_size`, `source`); else `None`.
        windows: The token windows a criterion that samples its own text (`cosine_self`) scored on, a
            `Calibration`, for the replacement fit of the same run (`GateNormPruner.prune` passes them on); in
            memory only, not in `to_dict()`. `None` for the other criteria.
    """

    model_type: str
    criterion: str
    num_hidden_layers: int
    scores: list[float | None]
    pruned_layers: list[int]
    scoring_seconds: float
    source: str = "checkpoint"
    data_free: bool = True
    seed: int | None = None
    calibration: dict | None = None
    gatenorm_version: str = __version__
    windows: Any = field(default=None, repr=False, compare=False)

    @property
    def ranking(self) -> list[int]:
        """Scored layers, lowest score (first to remove) first."""
        return rank(self.scores)

    def to_dict(self) -> dict:
        out = asdict(replace(self, windows=None))
        del out["windows"]
        out["ranking"] = self.ranking
        return out

    def format_table(self, removed: set[int] | frozenset[int] = frozenset(), protected=frozenset()) -> str:
        """A text table of the ranking, lowest first."""
        lines = [f"{'rank':>4}  {'layer':>5}  {'score':>14}  note", f"{'-' * 4}  {'-' * 5}  {'-' * 14}  ----"]
        for position, layer in enumerate(self.ranking, 1):
            note = "removed" if layer in removed else "protected" if layer in protected else ""
            lines.append(f"{position:>4}  {layer:>5}  {self.scores[layer]:>14.6g}  {note}".rstrip())
        for layer in self.pruned_layers:
            lines.append(f"{'-':>4}  {layer:>5}  {'-':>14}  attention already removed")
        return "\n".join(lines)


@dataclass
class PruningReport(JSONMixin):
    """What a pruning run removed and kept, and why.

    Args:
        model_type: `config.model_type`.
        criterion: Criterion this run ranked the layers by.
        config: The `GateNormConfig` as a dict.
        num_hidden_layers: Number of decoder layers.
        scores: Score per decoder layer (`None` where attention was already gone).
        ranking: Scored layers, lowest first.
        removed_layers: Layers whose attention this run removed.
        pruned_layers: All layers without attention afterwards (earlier prunings included).
        kept_attention_layers: Layers that keep their attention, in order; cache slot `j` belongs to the `j`-th.
        protected_layers: Layers kept by `protect_first` / `protect_last`.
        excluded_layers: Layers kept by `exclude_layers`.
        num_parameters_before: Parameters before pruning (tied weights counted once).
        num_parameters_after: Parameters after pruning.
        scoring_seconds: Wall time of the scoring.
        scores_source: Where the scores were read from (`"checkpoint"` or `"model"`).
        data_free: Whether the criterion used no data.
        calibration: Calibration settings of a data-driven criterion (see `ScoreReport.calibration`), else `None`.
        warnings: Measured-quality warnings (see `optimum_gatenorm.criteria.measurements.breakdown_warning`).
        replacement: How the removed sublayers were replaced (`ReplacementFit.to_dict()`: kind, per-layer ridge
            strength and held-out error, fit seconds, calibration windows, and the recovery measured on sequences the
            fit did not use); `None` for plain removal.
        layer_criteria: Every layer without attention afterwards -> the criterion that chose it, this run's and
            earlier runs' (the checkpoint's pruning record, `get_layer_criteria`); JSON keys are layer indices as
            strings. Empty in reports written before it existed.
        layer_replacements: Every layer without attention afterwards that holds a replacement -> its kind, this
            run's and earlier runs' (`get_replacements`), keyed likewise.
    """

    model_type: str
    criterion: str
    config: dict
    num_hidden_layers: int
    scores: list[float | None]
    ranking: list[int]
    removed_layers: list[int]
    pruned_layers: list[int]
    kept_attention_layers: list[int]
    protected_layers: list[int]
    excluded_layers: list[int]
    num_parameters_before: int
    num_parameters_after: int
    scoring_seconds: float
    scores_source: str = "checkpoint"
    data_free: bool = True
    calibration: dict | None = None
    warnings: list[str] = field(default_factory=list)
    gatenorm_version: str = __version__
    extra: dict = field(default_factory=dict)
    replacement: dict | None = None
    layer_criteria: dict[str, str] = field(default_factory=dict)
    layer_replacements: dict[str, str] = field(default_factory=dict)

    @property
    def num_parameters_removed(self) -> int:
        return self.num_parameters_before - self.num_parameters_after

    @property
    def earlier_layers(self) -> list[int]:
        """Layers whose attention an earlier pruning run removed (the input was already pruned)."""
        return [layer for layer in self.pruned_layers if layer not in self.removed_layers]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["num_parameters_removed"] = self.num_parameters_removed
        out["earlier_layers"] = self.earlier_layers
        return out

    def summary(self) -> str:
        before, after = self.num_parameters_before, self.num_parameters_after
        text = (
            f"Removed {len(self.removed_layers)} of {self.num_hidden_layers} attention sublayers "
            f"({self.criterion}): {self.removed_layers}; "
        )
        earlier = self.earlier_layers
        if earlier:
            chosen = sorted({self.layer_criteria.get(str(layer), "criterion not recorded") for layer in earlier})
            text += f"{len(earlier)} removed earlier ({', '.join(chosen)}): {earlier}; "
        text += (
            f"{len(self.kept_attention_layers)} keep attention. "
            f"Parameters {before:,} -> {after:,} (-{(before - after) / before:.2%})."
        )
        line = self.replacement_summary()
        return f"{text}\n{line}" if line else text

    def replacement_summary(self) -> str | None:
        """One line: what the replacement recovered on sequences its fit did not use (`None` without one)."""
        fit = self.replacement
        if not fit:
            return None
        how = "fitted end to end" if fit.get("fit") == "distill" else "fitted"
        text = (
            f"Replaced them with {fit['kind']} maps {how} in {fit['seconds']:.1f} s on {fit['calibration']['source']}"
        )
        recovery = fit.get("recovery")
        if not recovery:
            return text + "."
        without, with_ = recovery["kl_without"], recovery["kl_with"]
        share = f" ({1 - with_ / without:.0%} less)" if without > 0 else ""
        return (
            f"{text}; on {recovery['source']} (not used by the fit), mean KL divergence to the model before pruning "
            f"{with_:.4f} with the replacement, {without:.4f} removed plainly{share}."
        )
