"""What the criterion study measured, per model family, so that `prune` can warn at a k seen to break a criterion.

The numbers come from `benchmarks/criterion_study.py` (records in `benchmarks/criteria/<model>/`, summarised in
`benchmarks/RESULTS.md`; `tests/criteria/test_circuits.py` checks these tables against the records), one `Measurement` per
built-in model. Each architecture adapter names the built-in model of its nearest measured family
(`ArchitectureAdapter.quality_reference`: SmolLM2-135M for the Llama layouts, Gemma-3-270M for the sandwich-norm
Gemmas) or none. A criterion "breaks down" at a measured k where its perplexity is above the median of the random
draws on any of the study's texts. The warning scales k by the layer count, looks at the largest measured k not
above it, and says where it was measured; `cosine` and `random` are the references and get no per-criterion entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from ..params import ANY, param


__all__ = ["FIRST_K_WORSE_THAN_RANDOM", "MEASUREMENTS", "Measurement", "breakdown_warning", "retrieval_warning"]

# The references: the data-driven criteria and the random control get no per-criterion limit.
REFERENCES = ("cosine", "attn_norm", "random")


@dataclass(frozen=True)
class Measurement:
    """Where the criteria fell behind random on one real model.

    Args:
        model: The model's name, for messages.
        layers: Its number of attention sublayers.
        ks: The k values measured (removed sublayers).
        setting: The texts and tokens, for messages.
        worse_at: `(criterion, min_gap)` -> the measured ks at which it was worse than the median random draw on
            at least one text (empty: never, up to `max(ks)`).
        advice: What held up there, for the warning's second half.
        retrieval_falls_at: The first k (of `retrieval_ks`) at which the default (`cosine_self`, `linear`
            replacement) fell more than one case below the unpruned model on the long-context retrieval suite
            (benchmarks/long_context/), `None` if never.
        retrieval_ks: The k values at which retrieval was measured.
    """

    model: str
    layers: int
    ks: tuple[int, ...]
    setting: str
    worse_at: Mapping[tuple[str, int], tuple[int, ...]] = field(hash=False)
    advice: str
    retrieval_falls_at: int | None = None
    retrieval_ks: tuple[int, ...] = ()

    @property
    def max_k(self) -> int:
        return max(self.ks)

    @cached_property
    def first_k_worse(self) -> dict[tuple[str, int], int | None]:
        """`(criterion, min_gap)` -> the first measured k worse than the median random draw, `None` if never."""
        return {key: min(ks) if ks else None for key, ks in self.worse_at.items()}


SMOLLM2 = Measurement(
    model="SmolLM2-135M-Instruct",
    layers=30,
    ks=(2, 4, 6, 8, 10, 12),
    setting=("2,048 tokens each of Pride and Prejudice, Lee news and Emma, k = 2-12; median of 7 random draws"),
    worse_at={
        ("cosine_self", 1): (2,),  # the default: 25.0 / 39.1 vs random 24.1 / 38.8 at k = 2; better from k = 4
        ("attn_norm_self", 1): (2,),
        ("gate_trace", 2): (),
        ("gate_trace", 1): (6,),  # Lee news only
        ("gate_norm", 1): (4, 6, 8, 10, 12),  # the paper's: 337 / 217 / 304 at k = 8 vs random 83 / 83 / 124
        ("gate_norm", 2): (2, 4, 6),
        ("gate_norm_head", 1): (4, 6, 8, 10, 12),
        ("gate_norm_folded", 1): (2, 4, 6, 8, 10, 12),
        ("ov_norm", 1): (2, 4, 6, 8, 10, 12),
        ("gate_ov", 1): (2, 4, 6, 8, 10, 12),
        ("ov_relative", 1): (2, 4, 6, 8, 10),
        ("ov_relative", 2): (2, 4, 6, 8),
        ("last", 1): (4, 6, 8, 10, 12),
        ("trace_write", 1): (2,),
    },
    advice=(
        "there the default cosine_self (no user data) was better than random from k=4 to k=12, and the data-driven "
        f"{param('criterion', 'cosine')} with {param('calibration_text', ANY)} held up at every k"
    ),
    # Pass key 6/6 -> 2/6 at 1,024 tokens and 4/6 -> 0/6 at 2,048 when k = 6 adds layers 7 and 22 (the sweep's
    # points); k = 5 (layer 22 added), measured apart, already 4/6 and 0/6: the warning starts past k = 4.
    retrieval_falls_at=6,
    retrieval_ks=(2, 4, 6, 8),
)

GEMMA3 = Measurement(
    model="Gemma-3-270M",
    layers=18,
    ks=(2, 3, 4, 5, 6, 7),
    setting="1,022 tokens each of Pride and Prejudice, Lee news and Emma with <bos>, k = 2-7; median of 7 random draws",
    worse_at={
        ("cosine_self", 1): (),  # the default: 27.5-43.6 at k = 2, 89.8-147.7 at k = 7; random 63-99 / 720-973
        ("attn_norm_self", 1): (),
        ("gate_trace", 2): (2, 3, 4, 5, 6, 7),  # ranks layer 5 (full attention) lowest: 25,563 at k = 2
        ("gate_trace", 1): (2, 3, 4, 5, 7),
        ("gate_norm", 1): (2, 3, 4),
        ("gate_norm", 2): (4,),
        ("gate_norm_head", 1): (2, 3, 4),
        ("gate_norm_folded", 1): (2, 3, 4),
        ("ov_norm", 1): (2, 3, 4, 5, 6, 7),
        ("gate_ov", 1): (2, 3, 4, 5, 7),
        ("ov_relative", 1): (),  # 1.3-2.7x cosine
        ("ov_relative", 2): (),
        ("last", 1): (),
        ("trace_write", 1): (5, 6, 7),  # removes layer 5 from k = 5
    },
    advice=(
        "there the default cosine_self (no user data) and the data-free ov_relative and last were not worse than "
        f"random up to k=7, and the data-driven {param('criterion', 'cosine')} with {param('calibration_text', ANY)} "
        "was best"
    ),
    # Pass key and multikey within one case of the unpruned model at 1,024-4,096 tokens at k = 2 and 4.
    retrieval_falls_at=None,
    retrieval_ks=(2, 4),
)

MEASUREMENTS: dict[str, Measurement] = {"smollm2-135m": SMOLLM2, "gemma3-270m": GEMMA3}


def retrieval_warning(criterion: str, num_layers: int, total: int, measured_on: str | None) -> str | None:
    """A one-line warning when removing `num_layers` of `total` sublayers with the default criterion goes past the
    largest k (scaled to the measured model's depth) at which long-context retrieval held on the nearest measured
    model, where it fell at a larger measured k."""
    measurement = MEASUREMENTS.get(measured_on) if measured_on else None
    if criterion != "cosine_self" or measurement is None or measurement.retrieval_falls_at is None or total <= 0:
        return None
    falls = measurement.retrieval_falls_at
    held = max((k for k in measurement.retrieval_ks if k < falls), default=0)
    scaled = num_layers * measurement.layers / total
    if scaled <= held + 1e-9:
        return None
    return (
        f"long-context retrieval (pass key, multi-key) held within one case of the unpruned model up to k={held} of "
        f"{measurement.layers} on {measurement.model} and fell at k={falls} (benchmarks/long_context/); removing "
        f"{num_layers} of {total} is past k={held}: check with `optimum-cli gatenorm eval --task passkey,multikey "
        "--lengths ...`"
    )


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

    `num_layers` is scaled to the measured model's depth (`num_layers * layers / total`); the warning fires when the
    largest measured k not above it was measured worse than random. The data-driven criteria and `random` are the
    references: they only get the "beyond what was measured" warning.
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
        if (criterion, min_gap) not in measurement.worse_at:
            return f"{criterion}{gap} was not measured {where}; {check}"
        worse = measurement.worse_at[(criterion, min_gap)]
        scaled = fraction * measurement.layers
        below = [k for k in measurement.ks if k <= scaled + 1e-9]
        if below and max(below) in worse:
            k = max(below)
            return (
                f"{criterion}{gap} was measured worse than a median random draw at k={k} removed sublayers {where}; "
                f"removing {num_layers} of {total} ({fraction:.0%}) is at that point; {measurement.advice}"
            )
    if fraction > measurement.max_k / measurement.layers:
        return (
            f"removing {num_layers} of {total} attention sublayers ({fraction:.0%}) is beyond what was measured "
            f"(k <= {measurement.max_k} of {measurement.layers} {where}); {check}"
        )
    return None
