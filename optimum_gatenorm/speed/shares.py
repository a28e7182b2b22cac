"""The attention-shares format: attention's measured share of prefill and decode time, per (batch, context).

Data only (with its checks and formulas, and `load_shares`, which reads it), so that the benchmark (`throughput`) and
the planner (`planning`) can both name it without importing each other. `measuring.measure_attention_shares` writes
it; `prune --shares` and `benchmark --shares` read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..checkpoints.record import get_pruned_layers
from ..errors import InvalidConfigError, ModelNotFoundError
from ..serialization import JSONMixin
from ..validation import check_choice, check_int, first_line
from ..version import __version__


if TYPE_CHECKING:
    from transformers import PretrainedConfig

__all__ = ["BACKENDS", "DEFINITION", "PHASES", "PROVIDERS", "AttentionShares", "ShareCell", "load_shares"]

PHASES = ("prefill", "decode")
BACKENDS = ("onnxruntime", "pytorch")
PROVIDERS = ("cpu", "cuda")
DEFINITION = (
    "timed ablation: t_attn = (T(k=0) - T(k=n-1)) / (n-1) (clamped at 0; raw value kept), share = n t_attn / T0, "
    "ideal(k) = T0 / (T0 - k t_attn) = 1 / (1 - k share / n); T = median prefill time (time to first token) or "
    "median decode time per step"
)


@dataclass
class ShareCell:
    """The measured attention share of one phase at one (batch, context).

    Args:
        phase: `"prefill"` or `"decode"`.
        batch: Batch size.
        context: Prompt length in tokens (decode steps then see `context` to `context + new_tokens - 1`).
        T0_s: Median time of the unpruned model (prefill: time to first token; decode: per step).
        T_ablated_s: Median time with n - 1 attention sublayers removed.
        t_attn_raw_s: `(T0_s - T_ablated_s) / (n - 1)`, negative when noise exceeds the difference.
        t_attn_s: `t_attn_raw_s` clamped at 0.
        share: `n * t_attn_s / T0_s`, attention's share of the time.
        T0_range_s: Min and max of the unpruned model's runs.
        T_ablated_range_s: Min and max of the ablated model's runs.
    """

    phase: str
    batch: int
    context: int
    T0_s: float
    T_ablated_s: float
    t_attn_raw_s: float
    t_attn_s: float
    share: float
    T0_range_s: list[float] = field(default_factory=list)
    T_ablated_range_s: list[float] = field(default_factory=list)


@dataclass
class AttentionShares(JSONMixin):
    """Measured attention shares of one model on one backend (`measure_attention_shares`); JSON in and out.

    Args:
        model: The model measured (path or alias).
        model_type: Its `config.model_type`.
        num_hidden_layers: Its decoder layers.
        num_attention_layers: n, the attention sublayers of the measured baseline (fewer than `num_hidden_layers`
            if it was already pruned).
        backend: `"onnxruntime"` or `"pytorch"`.
        provider: `"cpu"` or `"cuda"`.
        new_tokens: Tokens generated per run (decode is timed over the steps after the first).
        warmup: Warm-up runs per model and shape.
        runs: Recorded runs per model and shape.
        cells: One `ShareCell` per phase and (batch, context).
        machine: What `run_benchmark` records about the machine.
        definition: The formulas, in words.
    """

    model: str
    model_type: str
    num_hidden_layers: int
    num_attention_layers: int
    backend: str
    provider: str
    new_tokens: int
    warmup: int
    runs: int
    cells: list[ShareCell]
    machine: dict = field(default_factory=dict)
    definition: str = DEFINITION
    gatenorm_version: str = __version__

    def __post_init__(self):
        check_int("num_hidden_layers", self.num_hidden_layers, 1)
        check_int("num_attention_layers", self.num_attention_layers, 2)
        check_choice("backend", self.backend, BACKENDS)
        check_choice("provider", self.provider, PROVIDERS)
        self.cells = [ShareCell(**c) if isinstance(c, dict) else c for c in self.cells]
        if not self.cells:
            raise InvalidConfigError("AttentionShares needs at least one measured cell, got none")
        for cell in self.cells:
            check_choice("cell phase", cell.phase, PHASES)
        missing = [p for p in PHASES if not any(c.phase == p for c in self.cells)]
        if missing:
            raise InvalidConfigError(f"AttentionShares has no cell for phase {missing[0]!r}; measure both phases")

    @property
    def max_k(self) -> int:
        """The most sublayers the measurement covers: n - 1 (the ablated model)."""
        return self.num_attention_layers - 1

    def share(self, phase: str, batch: int, context: int) -> tuple[float, str]:
        """Attention's share of `phase` at (`batch`, `context`), and where it comes from, in words.

        The cell measured at that batch and context when there is one; else, within the nearest measured batch,
        linear in log(context) between the two measured contexts around `context`, or the nearest measured
        context outside their range (said in the description).
        """
        check_choice("phase", phase, PHASES)
        check_int("batch", batch, 1)
        check_int("context", context, 1)
        cells = [c for c in self.cells if c.phase == phase]
        nearest_batch = min({c.batch for c in cells}, key=lambda b: (abs(math.log(b / batch)), b))
        row = sorted((c for c in cells if c.batch == nearest_batch), key=lambda c: c.context)
        where = f"measured on {self.backend} {self.provider}, batch {nearest_batch}"
        if nearest_batch != batch:
            where += f" (nearest measured to batch {batch})"
        below = [c for c in row if c.context <= context]
        above = [c for c in row if c.context >= context]
        if below and below[-1].context == context:
            return below[-1].share, f"{where}, context {context}"
        if below and above:
            lo, hi = below[-1], above[0]
            t = math.log(context / lo.context) / math.log(hi.context / lo.context)
            share = lo.share + t * (hi.share - lo.share)
            return share, f"{where}, interpolated between contexts {lo.context} and {hi.context}"
        cell = below[-1] if below else above[0]
        return cell.share, f"{where}, context {cell.context} (nearest measured to {context})"

    def speedup(self, k: int, phase: str, batch: int, context: int, kept_share: float = 0.0) -> float:
        """`ideal(k) = 1 / (1 - k * share * (1 - kept_share) / n)` for `phase` at (`batch`, `context`).

        Args:
            k: Sublayers removed.
            phase, batch, context: Where.
            kept_share: The share of a removed sublayer's time its replacement still costs (0 for plain removal).

        Raises:
            InvalidConfigError: If k is negative or above `max_k`.
        """
        check_int("k", k, 0)
        if k > self.max_k:
            raise InvalidConfigError(
                f"k={k} is beyond the measured ablation (at most {self.max_k} of {self.num_attention_layers})"
            )
        share, _ = self.share(phase, batch, context)
        remaining = 1.0 - k * share * (1.0 - kept_share) / self.num_attention_layers
        return 1.0 / remaining if remaining > 0 else math.inf

    def check_model(self, config: PretrainedConfig) -> None:
        """Refuses a model these shares were not measured on (other type, sizes or attention count).

        Raises:
            InvalidConfigError: With what differs.
        """

        theirs = {
            "model_type": config.model_type,
            "num_hidden_layers": config.num_hidden_layers,
            "num_attention_layers": config.num_hidden_layers - len(get_pruned_layers(config)),
        }
        for name, value in theirs.items():
            if getattr(self, name) != value:
                raise InvalidConfigError(
                    f"the attention shares were measured on a model with {name}={getattr(self, name)!r}, this one "
                    f"has {value!r}; measure this model (measure_attention_shares) or drop the shares file"
                )


def load_shares(shares: "str | Path | AttentionShares", model_config: "PretrainedConfig") -> AttentionShares:
    """Attention shares from a file written by `AttentionShares.save` (or as given), checked against the model.

    Raises:
        ModelNotFoundError: If the file does not exist.
        InvalidConfigError: If it is not a shares file, or was measured on another model.
    """
    if not isinstance(shares, AttentionShares):
        if not Path(shares).is_file():
            raise ModelNotFoundError(f"shares file {shares} not found; write one with measure_attention_shares")
        try:
            loaded = AttentionShares.from_json(shares)
        except (ValueError, TypeError, KeyError) as error:  # not JSON, or not this dataclass's fields
            raise InvalidConfigError(
                f"{shares} is not an attention-shares file (write one with measure_attention_shares(...)"
                f".save(path)): {first_line(error)}"
            ) from None
        shares = loaded
    shares.check_model(model_config)
    return shares
