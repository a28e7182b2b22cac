"""`compare`: perplexity after removing k attention sublayers, for several criteria, on one loaded model.

The model is loaded once. Each point of the sweep *masks* the chosen sublayers in memory, with forward hooks that
zero the attention update (`h + 0 + mlp(norm(h + 0))` is exactly what a pruned layer computes), so no point
reloads or copies the model. The `random` criterion is run over several seeds and reported as a band.

Every point also records how far it moved the model's next-token distributions from the unpruned model's: mean and
99th-percentile KL(unpruned || pruned) and top-1 agreement (`optimum_gatenorm.evaluation.divergence`). The sweep
runs window by window: each window's unpruned logits are computed once and compared with every distinct masked
set's logits of that window, so one window's logits of two variants are alive at a time, never the whole text's.

With `CompareConfig.retrieval`, every distinct removed set (and the unpruned model) also runs the long-context
retrieval suite (`optimum_gatenorm.evaluation.retrieval`) with the same masks or fitted replacements, so each point
records the right cases per task and length beside its perplexity.
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..adapters import get_adapter
from ..checkpoints.modeling import load_tokenizer
from ..checkpoints.structure import is_attention_pruned
from ..criteria import get_criterion, require_calibration
from ..errors import InvalidConfigError
from ..outputs import atomic_save_figure, check_output_path, require_pyplot
from ..pruning.configuration import GateNormConfig
from ..pruning.fits import DISTILL_STEPS, check_fit
from ..pruning.pruner import GateNormPruner, check_request, select_layers
from ..pruning.replacement import check_replacement
from ..serialization import JSONMixin
from ..text import bos_prefix, read_text, read_text_for_tokens
from ..validation import check_int, check_int_list
from ..version import __version__
from .perplexity import check_window_fits, check_window_in_config, check_windowing, forward_logits, score_windows
from .retrieval import RetrievalConfig, retrieval_accuracy, retrieval_cases


if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_COMPARE_CRITERIA",
    "CompareConfig",
    "ComparePoint",
    "CompareResult",
    "check_compare_request",
    "compare",
    "compare_criteria",
    "mask_attention",
    "spearman",
]

logger = logging.getLogger(__name__)

RANDOM = "random"


@contextlib.contextmanager
def mask_attention(model: "PreTrainedModel", layers: Iterable[int]) -> Iterator[None]:
    """Within the block, the attention sublayers of `layers` add nothing to the residual stream.

    Numerically identical to removing them (for a forward pass without KV cache), without touching the weights.
    """
    import torch

    adapter = get_adapter(model.config)
    decoder_layers = model.get_submodule(adapter.layers)

    def zero_update(module, args, output):
        if isinstance(output, tuple):
            return (torch.zeros_like(output[0]), *output[1:])
        return torch.zeros_like(output)

    handles = []
    try:
        for index in sorted(set(layers)):
            if not is_attention_pruned(decoder_layers[index]):
                attention = getattr(decoder_layers[index], adapter.attention)
                handles.append(attention.register_forward_hook(zero_update))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1  # ties share their average rank
        start = end + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of two score vectors (average ranks for ties); NaN if one is constant."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"need two score vectors of the same length >= 2, got {len(a)} and {len(b)}")
    ra, rb = _ranks(a), _ranks(b)
    mean_a, mean_b = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - mean_a) * (y - mean_b) for x, y in zip(ra, rb, strict=True))
    var_a = sum((x - mean_a) ** 2 for x in ra)
    var_b = sum((y - mean_b) ** 2 for y in rb)
    if var_a == 0 or var_b == 0:
        return math.nan
    return cov / math.sqrt(var_a * var_b)


@dataclass
class ComparePoint:
    """Perplexity with the `num_layers` lowest-scored attention sublayers of `criterion` removed.

    `kl_mean`, `kl_p99` (nats) and `top1_agreement` compare its next-token distributions with the unpruned
    model's on the same tokens (0, 0 and 1 at k = 0). `retrieval` (with `CompareConfig.retrieval`) maps
    `"task@length"` to `[right, total]` cases over the depths.
    """

    criterion: str
    num_layers: int
    removed_layers: list[int]
    perplexity: float
    seed: int | None = None
    kl_mean: float | None = None
    kl_p99: float | None = None
    top1_agreement: float | None = None
    retrieval: dict[str, list[int]] | None = None


@dataclass
class CompareResult(JSONMixin):
    """Everything `compare` measured; `to_json()` is the `--output` file.

    `retrieval` (with `CompareConfig.retrieval`) holds each evaluated set's whole `RetrievalResult` (every case, its
    key and continuation), keyed by the removed layers joined with commas (`""` for the unpruned model).
    """

    model: str
    text: str
    num_tokens: int
    baseline_perplexity: float
    num_layers: list[int]
    criteria: dict[str, dict]
    points: list[ComparePoint]
    spearman: dict[str, dict[str, float | None]]
    settings: dict = field(default_factory=dict)
    retrieval: dict[str, dict] = field(default_factory=dict)
    gatenorm_version: str = __version__

    def curve(self, criterion: str, metric: str = "perplexity") -> dict[int, list[float]]:
        """k -> values of `metric` (a `ComparePoint` field: one per seed for `random`); missing values are left out."""
        out: dict[int, list[float]] = {}
        for point in self.points:
            value = getattr(point, metric)
            if point.criterion == criterion and value is not None:
                out.setdefault(point.num_layers, []).append(value)
        return dict(sorted(out.items()))

    def band(self, criterion: str, metric: str = "perplexity") -> dict[int, tuple[float, float, float]]:
        """k -> (min, median, max) over the curve's values (seeds for `random`); the table and plot both use it."""
        return {k: (min(v), statistics.median(v), max(v)) for k, v in self.curve(criterion, metric).items()}

    def _metric_lines(self, metric: str, title: str, digits: int) -> list[str]:
        names = list(self.criteria)
        lines = [title, f"{'k':>3}  " + "  ".join(f"{name:>22}" for name in names)]
        band_digits = max(1, digits - 1)
        for k in self.num_layers:
            cells = []
            for name in names:
                values = sorted(self.curve(name, metric).get(k, []))
                if not values:
                    cells.append(f"{'-':>22}")
                elif len(values) == 1:
                    cells.append(f"{values[0]:>22.{digits}f}")
                else:
                    median = statistics.median(values)
                    text = f"{median:.{band_digits}f} ({values[0]:.{band_digits}f}-{values[-1]:.{band_digits}f})"
                    cells.append(f"{text:>22}")
            lines.append(f"{k:>3}  " + "  ".join(cells))
        return lines

    def format_table(self) -> str:
        """Perplexity per criterion and k, then (where recorded) KL mean, KL p99 and top-1 agreement alike."""
        lines = self._metric_lines(
            "perplexity", f"perplexity on {self.num_tokens} tokens (unpruned: {self.baseline_perplexity:.2f})", 2
        )
        if any(point.kl_mean is not None for point in self.points):
            for metric, title, digits in (
                ("kl_mean", "mean KL(unpruned || pruned) of the next-token distributions, nats", 4),
                ("kl_p99", "99th percentile of KL(unpruned || pruned), nats", 4),
                ("top1_agreement", "top-1 agreement with the unpruned model (share of tokens)", 4),
            ):
                lines += ["", *self._metric_lines(metric, title, digits)]
        if any(point.retrieval for point in self.points):
            lines += ["", *self._retrieval_lines()]
        timing = ", ".join(f"{name} {info['scoring_seconds']:.3g} s" for name, info in self.criteria.items())
        lines.append(f"scoring time: {timing}")
        return "\n".join(lines)

    def _retrieval_lines(self) -> list[str]:
        """Right cases per task@length, one block per criterion (for `random`, its first seed)."""
        columns = list(dict.fromkeys(cell for point in self.points for cell in (point.retrieval or {})))
        lines = ["long-context retrieval: right cases per task@length (over the depths)"]
        for name in self.criteria:
            lines.append(f"{name}: {'k':>3}  " + "  ".join(f"{column:>14}" for column in columns))
            for k in self.num_layers:
                point = next((p for p in self.points if p.criterion == name and p.num_layers == k), None)
                found = (point.retrieval or {}) if point else {}
                cells = [f"{'/'.join(map(str, found[c])) if c in found else '-':>14}" for c in columns]
                lines.append(f"{' ' * (len(name) + 2)}{k:>3}  " + "  ".join(cells))
        return lines

    def plot(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Writes a PNG: perplexity vs k (log scale), one line per criterion, random as median and min-max band.

        The file is written to a temporary name and renamed into place.
        """

        check_output_path(path, overwrite)

        plt = require_pyplot()
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
        for name in self.criteria:
            curve = self.curve(name)
            ks = list(curve)
            if name == RANDOM:
                band = self.band(name)
                lows, medians, highs = ([band[k][i] for k in ks] for i in range(3))
                ax.fill_between(ks, lows, highs, color="grey", alpha=0.25, label="random (min-max)")
                ax.plot(ks, medians, color="grey", linestyle="--", marker="o", label="random (median)")
            else:
                ax.plot(ks, [v[0] for v in curve.values()], marker="o", label=name)
        ax.axhline(self.baseline_perplexity, color="black", linewidth=0.8, linestyle=":", label="unpruned")
        ax.set_yscale("log")
        ax.set_xlabel("attention sublayers removed (k)")
        ax.set_ylabel("perplexity")
        ax.set_title(f"{Path(self.model).name}: {Path(self.text).name}, {self.num_tokens} tokens", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        return atomic_save_figure(fig, path, overwrite=overwrite)


def _parse_num_layers(values: Iterable[int]) -> list[int]:
    values = sorted(set(int(v) for v in values))
    if not values or values[0] < 0:
        raise InvalidConfigError(f"num_layers must be integers >= 0, got {values}")
    return values


def check_compare_request(
    num_layers: Iterable[int], model_config, *, protect_first: int = 1, protect_last: int = 0
) -> None:
    """Refuses, from the config alone, any k that the model cannot meet (before loading or evaluating anything).

    Raises:
        InvalidConfigError: If the largest k is more than the candidates allow.
    """

    ks = _parse_num_layers(num_layers)
    if ks[-1] > 0:
        config = GateNormConfig(num_layers=ks[-1], protect_first=protect_first, protect_last=protect_last, min_gap=1)
        check_request(config, model_config)


DEFAULT_COMPARE_CRITERIA = (
    "cosine_self",
    "gate_trace",
    "gate_norm",
    "gate_norm_head",
    "gate_norm_folded",
    "ov_norm",
    "gate_ov",
    "ov_relative",
    "random",
    "last",
)


@dataclass
class CompareConfig:
    """What `compare_criteria` sweeps, validated on construction.

    Args:
        criteria: Registered criterion names (duplicates dropped, order kept); `random` runs once per seed.
            Default: the data-free ones (add `cosine`, `attn_norm` with a calibration).
        num_layers: The k values of the sweep (k = 0 is the unpruned baseline).
        seeds: Seeds for `random`.
        protect_first: As in `GateNormConfig`.
        protect_last: As in `GateNormConfig`.
        min_gap: As in `GateNormConfig`, for every criterion (`None`: each criterion's own rule).
        window: Perplexity window (see `optimum_gatenorm.evaluation.perplexity.perplexity`).
        stride: Perplexity stride (`None`: non-overlapping windows).
        max_tokens: Cap on evaluated tokens.
        bos: Put the BOS token in front of every window (see `perplexity`); `None`: if the tokenizer adds one.
        replacement: What each removed sublayer is replaced by at every point, as in `GateNormConfig`: `"none"`
            (masked plainly), `"mean"` or `"linear"` (fitted once per distinct removed set, on the calibration
            given to `compare_criteria`, else on the windows `cosine_self` samples with seed 0, as `prune` does).
        fit: How each replacement is obtained, as in `GateNormConfig` (`"least-squares"` or `"distill"`; `distill`
            on the calibration given, else on `DISTILL_SAMPLES` sequences sampled once with seed 0).
        distill_steps: With `fit="distill"`, as in `GateNormConfig`.
        retrieval: Also run the long-context retrieval suite at every distinct removed set and the unpruned model
            (`None`: not).
    """

    criteria: Sequence[str] = DEFAULT_COMPARE_CRITERIA
    num_layers: Sequence[int] = (0, 2, 4, 8)
    seeds: Sequence[int] = (0, 1, 2, 3, 4)
    protect_first: int = 1
    protect_last: int = 0
    min_gap: int | None = None
    window: int = 512
    stride: int | None = None
    max_tokens: int | None = None
    bos: bool | None = None
    replacement: str = "none"
    fit: str = "least-squares"
    distill_steps: int = DISTILL_STEPS
    retrieval: RetrievalConfig | None = None

    def __post_init__(self):

        if isinstance(self.criteria, str):
            raise InvalidConfigError(f"criteria must be a list of names, got {self.criteria!r}")
        self.criteria = list(dict.fromkeys(self.criteria))
        if not self.criteria:
            raise InvalidConfigError("give at least one criterion")
        for name in self.criteria:
            get_criterion(name)
        self.num_layers = _parse_num_layers(self.num_layers)
        self.seeds = check_int_list("seeds", self.seeds, minimum=0)
        if RANDOM in self.criteria and not self.seeds:
            raise InvalidConfigError("the random criterion needs at least one seed")
        check_int("protect_first", self.protect_first, 0)
        check_int("protect_last", self.protect_last, 0)
        if self.min_gap is not None:
            check_int("min_gap", self.min_gap, 1)
        check_windowing(self.window, self.stride, self.max_tokens)
        check_replacement(self.replacement)
        if self.replacement != "none" or self.fit != "least-squares":
            check_fit(self.fit, self.replacement, self.distill_steps)
        if self.retrieval is not None and not isinstance(self.retrieval, RetrievalConfig):
            raise InvalidConfigError(f"retrieval must be a RetrievalConfig or None, got {self.retrieval!r}")


def compare_criteria(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    text: str,
    config: CompareConfig | None = None,
    *,
    calibration=None,
    model_name: str = "",
    text_name: str = "",
    progress: bool = False,
) -> CompareResult:
    """Perplexity of `model` on `text` with the k lowest-scored sublayers of each criterion removed, for each k.

    Args:
        model: A loaded causal LM (pruned or not; already pruned layers are not candidates).
        tokenizer: Its tokenizer.
        text: Evaluation text.
        config: The sweep (criteria, k values, seeds, protection, spacing, windowing); default `CompareConfig()`.
        calibration: Calibration data for data-driven criteria (see `GateNormPruner.score`).
        model_name: Recorded in the result.
        text_name: Recorded in the result.
        progress: Show progress bars.

    Raises:
        InvalidConfigError: A data-driven criterion without calibration, or a k larger than the candidates allow.
    """
    config = config if config is not None else CompareConfig()
    if not isinstance(config, CompareConfig):
        raise TypeError(f"config must be a CompareConfig, got {type(config).__name__}")
    criteria, ks, seeds, min_gap = config.criteria, config.num_layers, config.seeds, config.min_gap
    for name in criteria:
        require_calibration(get_criterion(name), calibration)  # fail before any forward pass
    check_compare_request(ks, model.config, protect_first=config.protect_first, protect_last=config.protect_last)
    model.eval()
    pruner = GateNormPruner(model)

    check_window_fits(model, config.window, len(bos_prefix(tokenizer, config.bos)))
    if config.retrieval is not None:
        config.retrieval.check_context(getattr(model.config, "max_position_embeddings", None))
        retrieval_cases(tokenizer, config.retrieval)  # a length too short for the prompt fails before scoring
    runs = [(name, seed) for name in criteria for seed in (seeds if name == RANDOM else [None])]
    scores_by_run, info, sampled = _score_runs(pruner, runs, config, calibration)
    selections = []
    for name, seed in runs:
        for k in ks:
            request = GateNormConfig(
                num_layers=k,
                criterion=name,
                protect_first=config.protect_first,
                protect_last=config.protect_last,
                min_gap=min_gap,
            )
            removed, _, _ = select_layers(scores_by_run[(name, seed)], request)
            selections.append((name, seed, k, removed))

    # Criteria often agree on a set (and every k = 0 is the baseline): the evaluation is deterministic, so each
    # distinct set is evaluated once.
    sets = list(dict.fromkeys(tuple(sorted(set(removed))) for *_, removed in selections if removed))
    fits = _fit_sets(model, sets, config, calibration if calibration is not None else sampled, progress)
    measured, baseline, bos = _measure_sets(model, tokenizer, text, sets, fits, config, progress)
    retrieval = _retrieval_sets(model, tokenizer, sets, fits, config.retrieval, measured, progress)
    points = [
        ComparePoint(name, k, removed, seed=seed, **measured[tuple(sorted(set(removed)))])
        for name, seed, k, removed in selections
    ]
    return CompareResult(
        model=model_name or str(getattr(model, "name_or_path", "")),
        text=text_name,
        num_tokens=baseline.count,
        baseline_perplexity=baseline.perplexity,
        num_layers=ks,
        criteria=info,
        points=points,
        spearman=_correlations(info, criteria),
        settings={
            "window": config.window,
            "stride": config.stride,
            "max_tokens": config.max_tokens,
            "protect_first": config.protect_first,
            "protect_last": config.protect_last,
            "min_gap": min_gap,
            "seeds": list(seeds),
            "bos": bos,  # as resolved: True where a BOS token went in front of every window
            "replacement": config.replacement,
            "fit": config.fit,
            "replacement_fits": _fit_settings(fits),
            "retrieval": None if config.retrieval is None else asdict(config.retrieval),
        },
        retrieval=retrieval,
    )


def compare(
    model: str | Path,
    text: str | Path,
    config: CompareConfig | None = None,
    *,
    calibration_text: "Sequence[str | Path] | None" = None,
    calibration_samples: int = 16,
    calibration_length: int = 256,
    allow_pickle: bool = False,
    progress: bool = False,
) -> CompareResult:
    """`compare_criteria` on a checkpoint and a text file: what `optimum-cli gatenorm compare` runs.

    Every request the checkpoint's config can refuse (a k too large, a window past the positions, a missing
    tokenizer, a data-driven criterion without `calibration_text`) is refused before the model loads.

    Args:
        model: A local checkpoint directory, a `.gguf` file or a built-in alias, resolved once.
        text: A UTF-8 text file to evaluate on (read only as far as `config.max_tokens` needs).
        config: The sweep; default `CompareConfig()`.
        calibration_text: Text files for the data-driven criteria and the replacement fits (`None`: the
            replacement is fitted on the text `cosine_self` samples, as `prune` does).
        calibration_samples: Calibration windows.
        calibration_length: Tokens per calibration window.
        allow_pickle: Accept `pytorch_model.bin` weights (`torch.load(weights_only=True)`).
        progress: Show progress bars.

    Raises:
        InvalidConfigError: A request the model cannot meet, a data-driven criterion without calibration text.
        ModelNotFoundError, InvalidCheckpointError, UnsupportedModelError: The model or text cannot be used.
    """
    config = config if config is not None else CompareConfig()
    if not isinstance(config, CompareConfig):
        raise TypeError(f"config must be a CompareConfig, got {type(config).__name__}")
    read_text(text, max_bytes=1 << 16)  # a missing, binary or empty text fails first
    pruner = GateNormPruner.from_pretrained(model, allow_pickle=allow_pickle)
    check_compare_request(
        config.num_layers, pruner.config, protect_first=config.protect_first, protect_last=config.protect_last
    )
    check_window_in_config(pruner.checkpoint_path, config.window)
    if config.retrieval is not None:
        config.retrieval.check_context(getattr(pruner.config, "max_position_embeddings", None))
    tokenizer = load_tokenizer(pruner.checkpoint_path)  # before the model: a missing tokenizer fails fast
    evaluated = read_text_for_tokens(text, tokenizer, config.max_tokens)  # only what max_tokens needs
    calibration = None
    if calibration_text:
        calibration = pruner.calibration_from_files(
            calibration_text, num_samples=calibration_samples, length=calibration_length
        )
    for name in config.criteria:
        require_calibration(get_criterion(name), calibration)
    return compare_criteria(
        pruner.model,
        tokenizer,
        evaluated,
        config,
        calibration=calibration,
        model_name=str(model),
        text_name=str(text),
        progress=progress,
    )


def _score_runs(pruner, runs: list, config: CompareConfig, calibration) -> tuple[dict, dict[str, dict], object]:
    """Scores of every (criterion, seed) run, per criterion what the result records (scores, ranking, time), and
    the windows a self-sampling criterion scored on with seed 0 (`None` if none did), for the replacement fit."""
    scores_by_run, info, sampled = {}, {}, None
    for name, seed in runs:
        kwargs = {"seed": seed} if seed is not None else {}
        report = pruner.score(name, calibration=calibration, **kwargs)
        if report.windows is not None and report.seed == 0:
            sampled = report.windows
        scores_by_run[(name, seed)] = report.scores
        entry = info.setdefault(name, {"scores": report.scores, "ranking": report.ranking, "scoring_seconds": 0.0})
        entry["scoring_seconds"] += report.scoring_seconds
        entry["data_free"] = getattr(report, "data_free", None)
        entry["min_gap"] = config.min_gap if config.min_gap is not None else get_criterion(name).min_gap
    if RANDOM in info:
        info[RANDOM]["scoring_seconds"] /= len(config.seeds)
        info[RANDOM]["seeds"] = list(config.seeds)
    return scores_by_run, info, sampled


def _measure_sets(model, tokenizer, text: str, sets: list, fits: dict, config: CompareConfig, progress: bool):
    """Perplexity, KL divergence and top-1 agreement of every removed set, in one pass over the windows in which each
    window's unpruned logits (the baseline, and the reference of the divergence) are computed once."""
    unpruned = forward_logits(model)

    def masked(layers: tuple[int, ...]):
        def run(input_ids):
            with _removed(model, layers, fits.get(layers)):
                return unpruned(input_ids)

        return run

    scores = score_windows(
        [masked(layers) for layers in sets],
        tokenizer,
        text,
        reference=unpruned,
        window=config.window,
        stride=config.stride,
        max_tokens=config.max_tokens,
        bos=config.bos,
        progress=progress,
        progress_label=f"compare ({len(sets)} sets)",
        device=getattr(model, "device", None),
    )
    measured = {(): {"perplexity": scores.reference.perplexity, "kl_mean": 0.0, "kl_p99": 0.0, "top1_agreement": 1.0}}
    for layers, tally in zip(sets, scores.tallies, strict=True):
        divergence = tally.divergence()
        measured[layers] = {
            "perplexity": tally.perplexity,
            "kl_mean": divergence["kl_mean"],
            "kl_p99": divergence["kl_p99"],
            "top1_agreement": divergence["top1_agreement"],
        }
    return measured, scores.reference, scores.bos


def _retrieval_sets(model, tokenizer, sets, fits, retrieval, measured: dict, progress: bool) -> dict[str, dict]:
    """The retrieval suite on the unpruned model and every removed set: fills `measured[set]["retrieval"]` with
    `{"task@length": [right, total]}` and returns each run's whole result, keyed by the joined layers."""
    if retrieval is None:
        return {}
    runs = {}
    for layers in [(), *sets]:
        with _removed(model, layers, fits.get(layers)) if layers else contextlib.nullcontext():
            found = retrieval_accuracy(model, tokenizer, retrieval, progress=progress)
        cells: dict[str, list[int]] = {}
        for row in found.rows:
            cell = cells.setdefault(f"{row['task']}@{row['length']}", [0, 0])
            cell[0] += row["correct"]
            cell[1] += row["total"]
        measured[layers]["retrieval"] = cells
        runs[",".join(map(str, layers))] = found.to_dict()
    return runs


def _correlations(info: dict[str, dict], criteria) -> dict[str, dict[str, float | None]]:
    """Spearman rank correlation between each pair of criteria's scores, over the layers every one scored."""
    present = [i for i, s in enumerate(info[criteria[0]]["scores"]) if s is not None]
    correlation: dict[str, dict[str, float | None]] = {}
    for a in criteria:
        correlation[a] = {}
        for b in criteria:
            value = spearman([info[a]["scores"][i] for i in present], [info[b]["scores"][i] for i in present])
            correlation[a][b] = None if math.isnan(value) else value
    return correlation


def _removed(model, layers: tuple[int, ...], fit):
    """`mask_attention`, or the fitted replacements in place of the layers' attention updates."""
    from ..pruning.replacement import replaced_attention

    return mask_attention(model, layers) if fit is None else replaced_attention(model, fit)


def _fit_settings(fits: dict) -> dict:
    """Per removed set (joined layers), how its replacement was fitted, for the result's settings."""
    return {
        ",".join(map(str, layers)): {
            "seconds": fit.seconds,
            "calibration": fit.calibration["source"],
            **({"distill": fit.extra} if fit.fit == "distill" else {}),
        }
        for layers, fit in fits.items()
    }


def _fit_sets(model, sets, config: CompareConfig, calibration, progress: bool) -> dict:
    """One `config.replacement` fit per distinct removed set (none for `"none"`), obtained by `config.fit` on
    `calibration` (the user's, or the windows a self-sampling criterion scored on), else windows sampled now."""
    kind = config.replacement
    if kind == "none" or not sets:
        return {}
    from ..criteria.selfcal import self_calibration
    from ..pruning.fits import distill_samples, fit_replacements_by

    windows = calibration if calibration is not None else self_calibration(model, 0, progress=progress)
    distill_windows = None
    if config.fit == "distill" and calibration is None:  # as `prune` does, once for every set
        distill_windows = distill_samples(model, progress=progress)
    return {
        layers: fit_replacements_by(
            model,
            layers,
            kind,
            config.fit,
            windows,
            distill_windows=distill_windows,
            steps=config.distill_steps,
            progress=progress,
        )
        for layers in sets
    }
