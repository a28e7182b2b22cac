"""`GateNormPruner`: score, choose and remove attention sublayers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..adapters import get_adapter
from ..checkpoints.modeling import check_record_matches_weights, load_checkpoint, load_tokenizer, prune_model
from ..checkpoints.models import resolve_model
from ..checkpoints.record import get_layer_criteria, get_pruned_layers, get_replacements
from ..checkpoints.tensors import Checkpoint, ModelWeights, inspect_checkpoint
from ..criteria import DEFAULT_CRITERION, get_criterion, require_calibration, score_layers, score_with_model
from ..criteria.calibration import Calibration
from ..criteria.measurements import breakdown_warning, retrieval_warning
from ..errors import InvalidConfigError
from ..params import param
from ..progress import phase, summary_logger
from ..report import PruningReport, ScoreReport, rank
from .configuration import GateNormConfig
from .replacement import ReplacementFit


if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


__all__ = ["GateNormPruner", "check_request", "check_streamable", "select_layers", "spacing_warning"]

logger = logging.getLogger(__name__)


def select_layers(scores: list[float | None], config: GateNormConfig) -> tuple[list[int], list[int], list[int]]:
    """Chooses the layers to remove: the lowest-scored candidates, spaced by `config.resolved_min_gap`.

    Args:
        scores: Score per decoder layer, `None` where the attention is already gone.
        config: How many to remove and which are protected.

    Returns:
        `(removed, protected, excluded)`, each sorted.

    Raises:
        InvalidConfigError: If an excluded index is out of range or more layers are asked than can go.
    """
    total = len(scores)
    bad = [i for i in config.exclude_layers if i >= total]
    if bad:
        raise InvalidConfigError(f"exclude_layers {bad} out of range for a model with {total} layers (0..{total - 1})")
    present = [i for i, s in enumerate(scores) if s is not None]
    protected = config.protected_layers(total)
    excluded = list(config.exclude_layers)
    candidates = [i for i in rank(scores) if i not in protected and i not in excluded]
    k = config.resolve_num_layers(total)
    limit = min(len(candidates), len(present) - 1)
    if k > limit:
        raise InvalidConfigError(
            f"cannot remove {k} attention sublayers: {len(present)} remain and {len(candidates)} are candidates "
            f"(protect_first={config.protect_first}, protect_last={config.protect_last}, exclude_layers={excluded}); "
            f"at most {max(limit, 0)} can go, and at least one must stay"
        )
    gap = config.resolved_min_gap
    if gap == 1:
        return sorted(candidates[:k]), protected, excluded
    gone = [i for i, s in enumerate(scores) if s is None]
    chosen: list[int] = []
    for index in candidates:
        if len(chosen) == k:
            break
        if all(abs(index - other) >= gap for other in chosen + gone):
            chosen.append(index)
    # Too few fit the spacing: take the rest lowest-first (spacing_warning reports it).
    chosen += [i for i in candidates if i not in chosen][: k - len(chosen)]
    return sorted(chosen), protected, excluded


def check_request(config: GateNormConfig, model_config) -> int:
    """Checks a pruning request against a model's config alone (no weights read), before any work.

    Returns:
        The number of sublayers the request removes.

    Raises:
        InvalidConfigError: If the request removes nothing, or more layers than can go, or names layers that
            do not exist.
    """

    total = model_config.num_hidden_layers
    k = config.resolve_num_layers(total)
    if k == 0:
        amount = f"ratio={config.ratio}" if config.ratio is not None else "num_layers=0"
        raise InvalidConfigError(
            f"{amount} removes no attention sublayer of {total}, so there is nothing to prune; ask for at least one "
            "(for an unpruned ONNX baseline use `optimum-cli gatenorm export`)"
        )
    already = set(get_pruned_layers(model_config))
    select_layers([None if i in already else 0.0 for i in range(total)], config)
    gap = config.resolved_min_gap
    if gap > 1 and (k - 1) * gap + 1 > total:
        raise InvalidConfigError(
            f"cannot keep {k} removed sublayers min_gap={gap} layers apart in {total} layers (that needs "
            f"{(k - 1) * gap + 1}); use a smaller min_gap (1: plain k lowest) or remove fewer"
        )
    return k


def spacing_warning(removed: "Sequence[int]", scores: list[float | None], min_gap: int) -> str | None:
    """A one-line warning if some of `removed` are closer than `min_gap` to each other or to earlier removals."""
    gone = [i for i, s in enumerate(scores) if s is None and i not in removed]
    close = sorted(
        {(min(a, b), max(a, b)) for a in removed for b in list(removed) + gone if a != b and abs(a - b) < min_gap}
    )
    if not close:
        return None
    pairs = ", ".join(f"{a}-{b}" for a, b in close)
    return (
        f"not every removed sublayer could be kept min_gap={min_gap} layers apart (too few candidates): {pairs} "
        f"are closer; remove fewer, or pass {param('min_gap', 1)} for plain k-lowest"
    )


def check_streamable(config: GateNormConfig) -> None:
    """Refuses a request that needs the model built (`GateNormPruner.prune_streamed`), naming what streams.

    Raises:
        InvalidConfigError: For a criterion that runs the model, or a replacement.
    """
    reasons = []
    if get_criterion(config.criterion).model_level:
        reasons.append(f"{param('criterion', config.criterion)} runs the model")
    if config.replacement != "none":
        reasons.append(f"{param('replacement', config.replacement)} is fitted by running it")
    if reasons:
        raise InvalidConfigError(
            f"{' and '.join(reasons)}; a model pruned without loading it takes a data-free prune: pass "
            f"{param('criterion', 'gate_norm')} {param('replacement', 'none')}"
        )


def _report(config, scores, model_config, selection, parameters, fit) -> PruningReport:
    """The `PruningReport` of a prune: `selection` is `_select`'s `(removed, protected, excluded, warnings)`,
    `parameters` `(before, after)`, `model_config` the pruned model's (with its record)."""
    removed, protected, excluded, warnings = selection
    pruned = get_pruned_layers(model_config)
    total = model_config.num_hidden_layers
    return PruningReport(
        model_type=model_config.model_type,
        criterion=config.criterion,
        config=config.to_dict(),
        num_hidden_layers=total,
        scores=scores.scores,
        ranking=scores.ranking,
        removed_layers=removed,
        pruned_layers=pruned,
        kept_attention_layers=[i for i in range(total) if i not in pruned],
        protected_layers=protected,
        excluded_layers=excluded,
        num_parameters_before=parameters[0],
        num_parameters_after=parameters[1],
        scoring_seconds=scores.scoring_seconds,
        scores_source=scores.source,
        data_free=scores.data_free,
        calibration=scores.calibration,
        warnings=warnings,
        replacement=fit.to_dict() if fit is not None else None,
        layer_criteria={str(layer): name for layer, name in get_layer_criteria(model_config).items()},
        layer_replacements={str(layer): kind for layer, kind in get_replacements(model_config).items()},
    )


class GateNormPruner:
    """Scores attention sublayers (from weights alone by default) and removes the lowest-scored ones.

    Build it from an in-memory model (`GateNormPruner(model, tokenizer=None)`) or from a checkpoint
    (`GateNormPruner.from_pretrained(path)`); the latter scores weight-level criteria straight from the
    safetensors files, one layer at a time, and only loads the model when `prune` or a model-level criterion
    needs it. Data-driven baselines (`cosine`, `attn_norm`) need a `Calibration`, e.g. from
    `pruner.calibration_from_files(paths)`, which uses the checkpoint's tokenizer (or the one given).

    Example:
        >>> pruner = GateNormPruner.from_pretrained("smollm2-135m")
        >>> pruner.score().ranking[:4]
        >>> model, report = pruner.prune(GateNormConfig(num_layers=4))
        >>> model.save_pretrained("smollm2-pruned")
    """

    def __init__(self, model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase | None" = None):

        get_adapter(model.config)
        self._model = model
        self._tokenizer = tokenizer
        self._checkpoint: Checkpoint | None = None
        self._load_kwargs: dict = {}
        self._scored: tuple | None = None  # (criterion, seed, calibration, ScoreReport) of the last score()

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str | Path,
        *,
        dtype: "str | torch.dtype" = "auto",
        allow_pickle: bool = False,
    ) -> "GateNormPruner":
        """A pruner over a checkpoint, validated now but not loaded.

        Args:
            model_name_or_path: Local directory, `.gguf` file or built-in alias (`smollm2-135m`).
            dtype: dtype to load the model in when pruning (`"auto"`: the checkpoint's).
            allow_pickle: Accept `pytorch_model.bin` weights, loaded with `torch.load(weights_only=True)`.
        """

        self = cls.__new__(cls)
        self._scored = None
        self._model = None
        self._tokenizer = None
        self._checkpoint = inspect_checkpoint(resolve_model(model_name_or_path), allow_pickle=allow_pickle)
        check_record_matches_weights(self._checkpoint, get_pruned_layers(self._checkpoint.config))
        self._load_kwargs = {"dtype": dtype, "allow_pickle": allow_pickle}
        return self

    @property
    def checkpoint(self) -> Checkpoint | None:
        """The checkpoint, validated, or `None` for a pruner made from an in-memory model."""
        return self._checkpoint

    @property
    def checkpoint_path(self) -> Path | None:
        """The checkpoint directory, or `None` for a pruner made from an in-memory model."""
        return self._checkpoint.path if self._checkpoint is not None else None

    @property
    def config(self):
        return self._model.config if self._model is not None else self._checkpoint.config

    @property
    def model(self) -> "PreTrainedModel":
        """The model, loaded on first use when the pruner was made from a checkpoint."""
        return self._load_model(progress=False)

    def _load_model(self, progress: bool) -> "PreTrainedModel":
        if self._model is None:
            with phase(f"Loading {self._checkpoint.path}", progress, logger):
                self._model = load_checkpoint(self._checkpoint, dtype=self._load_kwargs["dtype"])  # inspected once
        return self._model

    @property
    def tokenizer(self) -> "PreTrainedTokenizerBase":
        """The tokenizer given to the constructor, or the checkpoint's (loaded on first use).

        Raises:
            InvalidConfigError: If there is none.
        """
        if self._tokenizer is None:
            if self._checkpoint is None:
                raise InvalidConfigError(
                    "no tokenizer: pass GateNormPruner(model, tokenizer=...) or a ready Calibration(input_ids)"
                )

            self._tokenizer = load_tokenizer(self._checkpoint.path)
        return self._tokenizer

    def calibration_from_files(
        self,
        paths: "str | Path | Sequence[str | Path]",
        *,
        num_samples: int = 16,
        length: int = 256,
        batch_size: int = 1,
    ) -> "Calibration":
        """Calibration windows from UTF-8 text files, tokenized with `self.tokenizer` (see `Calibration.from_text`).

        Raises:
            InvalidConfigError: If the text is too short, a setting is bad, or there is no tokenizer.
        """

        return Calibration.from_files(
            paths, self.tokenizer, num_samples=num_samples, length=length, batch_size=batch_size
        )

    def score(
        self,
        criterion: str = DEFAULT_CRITERION,
        *,
        calibration: "Calibration | None" = None,
        seed: int = 0,
        device: "str | torch.device | None" = None,
        progress: bool | None = None,
    ) -> ScoreReport:
        """Scores every attention sublayer with `criterion`; lowest first in `ScoreReport.ranking`.

        Weight-level criteria (Gate-Norm) read the checkpoint lazily when the model is not loaded, else the
        model's own weights; no data, no forward pass. Model-level criteria (the default `cosine_self`) build the
        model and run it. The last result is kept: asking again for the same criterion, seed and calibration (or
        `prune` with that criterion) does not score twice.

        Args:
            criterion: A registered criterion name (`available_criteria()`).
            calibration: Token windows for data-driven criteria (`cosine`, `attn_norm`); ignored by the others.
            seed: Seed for criteria with randomness (`random`, and the text `cosine_self` samples).
            device: Where to compute: for weight-level criteria the scoring device (default CPU); for
                model-level ones the model is moved there in place (default: where it is).
            progress: Show a tqdm progress bar; `None` (default): for the criteria that run the model, which take
                a while (about 30-60 s for a 135-270M model on 2 CPU cores), as the CLI does.

        Raises:
            InvalidConfigError: Unknown criterion, or a data-driven one without `calibration`.
        """
        chosen = get_criterion(criterion)
        key = (chosen.name, seed if chosen.uses_seed else None)
        if self._scored is not None and self._scored[:2] == key and self._scored[2] is calibration:
            return self._scored[3]
        if progress is None:
            progress = chosen.model_level
        report = self._score(chosen, calibration=calibration, seed=seed, device=device, progress=progress)
        self._scored = (*key, calibration, report)
        return report

    def _score(self, chosen, *, calibration, seed, device, progress) -> ScoreReport:
        criterion = chosen.name
        if chosen.model_level:
            require_calibration(chosen, calibration)  # before loading a large model for nothing
            model = self._load_model(progress) if chosen.needs_model else self._model
            return score_with_model(
                model,
                self.config,
                criterion,
                calibration=calibration,
                seed=seed,
                device=device,
                progress=progress,
                source_kind="model" if model is not None else "checkpoint",
            )
        device = "cpu" if device is None else device
        if self._model is None:
            with self._checkpoint.open_weights() as source:
                return score_layers(source, self.config, criterion, device=device, progress=progress)
        return score_layers(
            ModelWeights(self._model), self.config, criterion, device=device, progress=progress, source_kind="model"
        )

    def prune(
        self,
        config: GateNormConfig,
        *,
        scores: ScoreReport | None = None,
        calibration: "Calibration | None" = None,
        device: "str | torch.device | None" = None,
        progress: bool | None = None,
    ) -> tuple["PreTrainedModel", PruningReport]:
        """Removes the `config`-chosen attention sublayers, in place, and returns the model and a report.

        With `config.replacement` `"mean"` or `"linear"`, each removed sublayer is replaced by a map fitted on
        `calibration` when given, else on the windows `cosine_self` samples with `config.seed` (those of `scores`,
        `ScoreReport.windows`, when its criterion sampled them)
        (`pruning.replacement`), and the report records what it recovers on `RECOVERY_SAMPLES` sequences sampled
        with `config.seed + 1`, which the fit did not use.

        Args:
            config: What to remove; `config.criterion` ranks the layers, `config.seed` seeds `random`.
            scores: Scores already computed with `score(config.criterion)`; when omitted, the pruner's last
                `score()` of that criterion and seed is used, else they are computed here.
            calibration: Token windows for a data-driven `config.criterion`, and for fitting a replacement.
            device: Device for the scoring (see `score`).
            progress: Show progress on stderr: tqdm bars for the scoring (`None`: as `score` decides), the
                replacement fit (per layer) and its held-out KL check (per sequence), and a line for loading the
                model. `None` (default) shows all but a weight-level scoring (milliseconds); `False` none.

        Returns:
            The pruned model and its report; `report.summary()`, the summary `optimum-cli gatenorm prune` prints,
            is also logged (INFO, logger `optimum_gatenorm.summary`).

        Raises:
            InvalidConfigError: If the request cannot be met (too many layers, bad indices, no calibration).
        """

        scores = self._scores_for(config, scores, calibration=calibration, device=device, progress=progress)
        removed, protected, excluded, warnings = self._select(scores, config)
        slow_progress = progress is not False  # loading, fitting and checking run the model: shown unless False
        model = self._load_model(slow_progress)
        before = model.num_parameters()
        fit = None
        if config.replacement != "none":
            if calibration is None and scores.windows is not None and scores.pruned_layers == get_pruned_layers(model):
                calibration = scores.windows  # the tokens the scoring sampled with `config.seed`: not sampled twice
            fit = self._fit_replacement(model, removed, config, calibration, slow_progress)
        prune_model(model, removed, criterion=config.criterion, replacements=fit.layers if fit is not None else None)
        self._scored = None  # the model changed
        report = _report(
            config,
            scores,
            model.config,
            (removed, protected, excluded, warnings),
            (before, model.num_parameters()),
            fit,
        )
        model.gatenorm_report = report
        summary_logger.info("%s", report.summary())
        return model, report

    def prune_streamed(
        self,
        config: GateNormConfig,
        directory: str | Path,
        *,
        scores: ScoreReport | None = None,
        device: "str | torch.device | None" = None,
        progress: bool | None = None,
    ) -> PruningReport:
        """`prune` for a checkpoint larger than memory: writes the pruned checkpoint's weights and config into the
        existing directory `directory` straight from the checkpoint's files, one tensor at a time, without building
        the model (`checkpoints.streaming`): the checkpoint `prune` and `save_pruned` would write, in the memory of
        one layer's query and key weights. Only a data-free prune streams: a weight-level `config.criterion`
        (`gate_norm`, the default of the paper) and `config.replacement="none"`. The tokenizer, report and model
        card are the caller's (`prune_and_save` with `max_memory` writes them).

        Args:
            config: What to remove, as for `prune`.
            directory: An existing, empty directory.
            scores: As for `prune`.
            device: Where the scores are computed.
            progress: A bar of the bytes copied (and of the scoring with `True`); `False`: none.

        Raises:
            InvalidConfigError: For a pruner over an in-memory model, a criterion that runs the model, a
                replacement, or pickled weights.
        """
        from ..checkpoints.streaming import checkpoint_parameters, write_streamed

        if self._checkpoint is None or self._model is not None:
            raise InvalidConfigError(
                "prune_streamed reads a checkpoint's files: use GateNormPruner.from_pretrained(path), and prune an "
                "in-memory model with prune()"
            )
        check_streamable(config)
        scores = self._scores_for(config, scores, calibration=None, device=device, progress=progress)
        selection = self._select(scores, config)
        before = checkpoint_parameters(self._checkpoint)
        after = write_streamed(
            self._checkpoint, Path(directory), selection[0], criterion=config.criterion, progress=progress is not False
        )
        written = inspect_checkpoint(directory)
        report = _report(config, scores, written.config, selection, (before, after), None)
        summary_logger.info("%s", report.summary())
        return report

    def _scores_for(self, config, scores, *, calibration, device, progress) -> ScoreReport:
        """`scores` if they are of `config`'s criterion and seed, else scored now; a request the model cannot meet
        is refused first (scoring may load the model)."""
        if not isinstance(config, GateNormConfig):
            raise TypeError(f"config must be a GateNormConfig, got {type(config).__name__}")
        already = set(get_pruned_layers(self.config))
        select_layers([None if i in already else 0.0 for i in range(self.config.num_hidden_layers)], config)
        stale = scores is None or scores.criterion != config.criterion
        if not stale and get_criterion(config.criterion).uses_seed and scores.seed != config.seed:
            stale = True
        if stale:
            scores = self.score(
                config.criterion, calibration=calibration, seed=config.seed, device=device, progress=progress
            )
        return scores

    def _select(self, scores: ScoreReport, config: GateNormConfig):
        """`select_layers`, then the measured-quality warnings (logged). Returns `(removed, protected, excluded,
        warnings)`."""
        removed, protected, excluded = select_layers(scores.scores, config)
        reference = get_adapter(self.config).quality_reference
        total = len(scores.scores)
        warnings = [
            spacing_warning(removed, scores.scores, config.resolved_min_gap),
            breakdown_warning(config.criterion, config.resolved_min_gap, len(removed), total, measured_on=reference),
            retrieval_warning(config.criterion, len(removed), total, reference),
        ]
        warnings = [w for w in warnings if w]
        for warning in warnings:
            logger.warning("warning: %s", warning)
        return removed, protected, excluded, warnings

    @staticmethod
    def _fit_replacement(model, removed, config, calibration, progress) -> "ReplacementFit":
        """Fits `config.replacement` for `removed` as `config.fit` says, and measures what it recovers on sequences
        the fit did not use."""
        from ..criteria.selfcal import self_calibration, self_generated
        from .fits import distill_samples, fit_replacements_by
        from .replacement import RECOVERY_SAMPLES, replacement_recovery

        windows = calibration if calibration is not None else self_calibration(model, config.seed, progress=progress)
        distill_windows = None
        if config.fit == "distill" and calibration is None:
            distill_windows = distill_samples(model, config.distill_samples, config.seed, progress=progress)
        fit = fit_replacements_by(
            model,
            removed,
            config.replacement,
            config.fit,
            windows,
            distill_windows=distill_windows,
            steps=config.distill_steps,
            seed=config.seed,
            progress=progress,
        )
        seed = config.seed + 1
        check = self_generated(
            model, num_samples=RECOVERY_SAMPLES, seed=seed, progress=progress, progress_label="Sampling held-out text"
        )
        source = f"{check.shape[0]} x {check.shape[1] - 1} tokens sampled by the model (seed {seed})"
        fit.recovery = replacement_recovery(model, fit, check, source=source, progress=progress)
        return fit
