"""What the criterion study measured, per model family, so that `prune` can warn before a k seen to break a criterion.

The numbers come from `benchmarks/criterion_study.py` (results in `benchmarks/criteria/`, summarised in
`benchmarks/RESULTS.md`), one `Measurement` per built-in model. Each architecture adapter names the built-in model
of its nearest measured family (`ArchitectureAdapter.quality_reference`: SmolLM2-135M for the Llama layouts,
Gemma-3-270M for the sandwich-norm Gemmas) or none. A data-free criterion "breaks down" at the first measured k
where its perplexity is above the median of the random draws on any of the study's texts. The data-driven
baselines are the reference and have no entry. The warning scales k by the layer count and says where it was
measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


__all__ = ["FIRST_K_WORSE_THAN_RANDOM", "MEASUREMENTS", "Measurement", "breakdown_warning"]

# The references: the data-driven criteria and the random control get no per-criterion limit.
REFERENCES = ("cosine", "attn_norm", "random")


@dataclass(frozen=True)
class Measurement:
    """Where the data-free criteria fell behind random on one real model.

    Args:
        model: The model's name, for messages.
        layers: Its number of attention sublayers.
        ks: The k values measured (removed sublayers).
        setting: The texts and tokens, for messages.
        first_k_worse: `(criterion, min_gap)` -> the first measured k worse than the median random draw on any
            text, or `None` if never up to `max(ks)`.
        advice: What held up there, for the warning's second half.
    """

    model: str
    layers: int
    ks: tuple[int, ...]
    setting: str
    first_k_worse: Mapping[tuple[str, int], int | None] = field(hash=False)
    advice: str

    @property
    def max_k(self) -> int:
        return max(self.ks)


SMOLLM2 = Measurement(
    model="SmolLM2-135M-Instruct",
    layers=30,
    ks=(2, 4, 6, 8, 10, 12),
    setting="2,048 tokens each of Pride and Prejudice, Lee news and Emma; median of 5 random draws",
    first_k_worse={
        ("gate_trace", 2): None,  # the default
        ("gate_trace", 1): 6,  # lee-news only (54.0 vs 48.3); better again from k = 8
        ("gate_norm", 1): 4,  # all three texts, and far worse from k = 8 (215-332 vs 82-119)
        ("gate_norm", 2): 2,
        ("gate_norm_head", 1): 4,
        ("gate_norm_folded", 1): 2,
        ("ov_norm", 1): 2,
        ("gate_ov", 1): 2,
        ("ov_relative", 1): 2,
        ("ov_relative", 2): 2,
        ("last", 1): 4,
        ("trace_write", 1): 2,  # Pride and Prejudice only (24.5 vs 23.3), measured later with --no-bos
    },
    advice=(
        "the default (gate_trace, min_gap 2, data-free) was not worse than random up to k=12 there, and the "
        "data-driven --criterion cosine --calibration-text FILE held up too"
    ),
)

GEMMA3 = Measurement(
    model="Gemma-3-270M",
    layers=18,
    ks=(2, 4, 6, 7),
    setting="1,022 tokens of Pride and Prejudice with <bos>, one text; median of 7 random draws",
    first_k_worse={
        ("gate_trace", 2): 2,  # ranks layer 5 (full attention) lowest: 25,563 at k = 2 (random median 63.0)
        ("gate_trace", 1): 2,
        ("gate_norm", 1): 2,
        ("gate_norm", 2): 4,
        ("gate_norm_head", 1): 2,
        ("gate_norm_folded", 1): 2,
        ("ov_norm", 1): 2,
        ("gate_ov", 1): 2,
        ("ov_relative", 1): None,  # 30.7 / 47.5 / 112 / 210 vs random 63 / 111 / 383 / 871
        ("ov_relative", 2): None,
        ("last", 1): None,
        ("trace_write", 1): 6,  # removes layer 5 from k = 6
    },
    advice=(
        "there the data-free --criterion ov_relative (and last) were not worse than random up to k=7, and the "
        "data-driven --criterion cosine --calibration-text FILE was best"
    ),
)

MEASUREMENTS: dict[str, Measurement] = {"smollm2-135m": SMOLLM2, "gemma3-270m": GEMMA3}

# The SmolLM2 table under its former name.
FIRST_K_WORSE_THAN_RANDOM = SMOLLM2.first_k_worse


def breakdown_warning(
    criterion: str, min_gap: int, num_layers: int, total: int, measured_on: str | None = "smollm2-135m"
) -> str | None:
    """A one-line warning if removing `num_layers` of `total` sublayers is past what was measured, else `None`.

    Args:
        criterion: The criterion's name.
        min_gap: The selection rule's gap.
        num_layers: Sublayers removed.
        total: Attention sublayers of the model.
        measured_on: The built-in model of the nearest measured family (`ArchitectureAdapter.quality_reference`),
            or `None` for an architecture whose family was never measured (a model without a `Measurement` counts
            as never measured too).

    The measured k is scaled by `total / layers`. The data-driven criteria and `random` are the references: they
    only get the "beyond what was measured" warning.
    """
    if num_layers == 0 or total <= 0:
        return None
    check = "check quality with `optimum-cli gatenorm eval` or `compare` before relying on it"
    if measured_on not in MEASUREMENTS:
        measured = ", ".join(m.model for m in MEASUREMENTS.values())
        return (
            f"no criterion was measured on this architecture's family (measured: {measured}; benchmarks/RESULTS.md): "
            f"removing {num_layers} of {total} attention sublayers with {criterion} is unmeasured; {check}"
        )
    measurement = MEASUREMENTS[measured_on]
    fraction = num_layers / total
    where = f"on {measurement.model} ({measurement.layers} layers, {measurement.setting}; benchmarks/RESULTS.md)"
    gap = f" with min_gap={min_gap}" if min_gap != 1 else ""
    if criterion not in REFERENCES:
        if (criterion, min_gap) not in measurement.first_k_worse:
            return f"{criterion}{gap} was not measured {where}; {check}"
        first = measurement.first_k_worse[(criterion, min_gap)]
        if first is not None and fraction >= first / measurement.layers:
            return (
                f"{criterion}{gap} was measured worse than a median random draw from k={first} removed sublayers "
                f"{where}; removing {num_layers} of {total} ({fraction:.0%}) is past that point; {measurement.advice}"
            )
    if fraction > measurement.max_k / measurement.layers:
        return (
            f"removing {num_layers} of {total} attention sublayers ({fraction:.0%}) is beyond what was measured "
            f"(k <= {measurement.max_k} of {measurement.layers} {where}); {check}"
        )
    return None
