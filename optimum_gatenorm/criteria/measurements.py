"""What the criterion study measured, so that `prune` can warn before a k that was seen to break a criterion.

The numbers come from `benchmarks/criterion_study.py` (results in `benchmarks/criteria/`, summarised in
`benchmarks/RESULTS.md`): SmolLM2-135M-Instruct (30 layers), perplexity on 2,048 tokens each of *Pride and
Prejudice*, gensim's Lee news corpus and *Emma*, `protect_first=1`, k in {2, 4, ..., 12}. A data-free criterion
"breaks down" at the first k where its perplexity is above the median of 5 random draws on any of the three
texts. The data-driven baselines are the reference and have no entry. Other models may differ; the warning
scales k by the layer count and says where it was measured.
"""

from __future__ import annotations


__all__ = ["FIRST_K_WORSE_THAN_RANDOM", "MEASURED_MODEL", "breakdown_warning"]

MEASURED_MODEL = "SmolLM2-135M-Instruct"
MEASURED_LAYERS = 30
MEASURED_MAX_K = 12

# (criterion, min_gap) -> first k (of 30) worse than the median random draw on any text; None: not up to k = 12.
FIRST_K_WORSE_THAN_RANDOM: dict[tuple[str, int], int | None] = {
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
}


def breakdown_warning(criterion: str, min_gap: int, num_layers: int, total: int) -> str | None:
    """A one-line warning if removing `num_layers` of `total` sublayers is past the measured breakdown, else `None`.

    The measured k is scaled by `total / 30`; criteria or `min_gap` values that were not measured get no warning.
    """
    if num_layers == 0 or total <= 0 or (criterion, min_gap) not in FIRST_K_WORSE_THAN_RANDOM:
        return None
    first = FIRST_K_WORSE_THAN_RANDOM[(criterion, min_gap)]
    fraction = num_layers / total
    where = f"on {MEASURED_MODEL} ({MEASURED_LAYERS} layers; benchmarks/RESULTS.md)"
    gap = f" with min_gap={min_gap}" if min_gap != 1 else ""
    alternative = (
        "the default (gate_trace, min_gap 2, data-free) was not worse than random up to k=12 there, and the "
        "data-driven --criterion cosine --calibration-text FILE held up too"
    )
    if first is not None and fraction >= first / MEASURED_LAYERS:
        return (
            f"{criterion}{gap} was measured worse than a median random draw from k={first} removed sublayers "
            f"{where}; removing {num_layers} of {total} ({fraction:.0%}) is past that point; {alternative}"
        )
    if fraction > MEASURED_MAX_K / MEASURED_LAYERS:
        return (
            f"removing {num_layers} of {total} attention sublayers ({fraction:.0%}) is beyond what was measured "
            f"(k <= {MEASURED_MAX_K} of {MEASURED_LAYERS} {where}); check quality with `optimum-cli gatenorm eval`"
        )
    return None
