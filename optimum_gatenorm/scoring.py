"""Data-free scoring of attention sublayers, and the registry of criteria.

Gate-Norm (Lin et al., "Data-Free Pruning of Self-Attention Layers in LLMs", arXiv:2512.20636) ranks the
attention sublayer of decoder layer `l` by its query-key coupling

    s_l = || W_Q W_K^T ||_F,

where `W_Q` and `W_K` (hidden x heads*head_dim) map the residual stream to queries and keys: the product is the
"gate" matrix of the bilinear form `x_i^T W_Q W_K^T x_j` that decides how tokens mix. A sublayer with a weak
gate mixes little, so the sublayers with the lowest scores are removed first. Nothing but Q and K weights is
read: no data, no forward pass.

Measured on SmolLM2-135M (benchmarks/RESULTS.md), the paper's criterion removes contiguous deep blocks and is
worse than a random choice from k = 4 on; the default is therefore `gate_trace`, minus the *trace* of the same gate
(with the norm gain folded in): how much each head prefers tokens like the query itself, which are redundant to
attend to. `gate_norm` stays available by name, exactly as the paper defines it.

The registry also holds baselines (see `optimum_gatenorm.baselines`) so that every API accepts them:
weight-level criteria (`register_criterion`) map one layer's Q/K weights to a score; model-level criteria
(`register_model_criterion`) score all layers at once from the loaded model and, if data-driven, from
calibration text. For every criterion the lowest score is removed first.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import InvalidCheckpointError, InvalidConfigError


if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel

    from .calibration import Calibration
    from .checkpoint import WeightSource
    from .report import ScoreReport

__all__ = [
    "DEFAULT_CRITERION",
    "AttentionWeights",
    "Criterion",
    "available_criteria",
    "get_criterion",
    "register_criterion",
    "register_model_criterion",
    "score_layers",
    "score_with_model",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttentionWeights:
    """The query/key weights of one attention sublayer, upcast for scoring.

    Args:
        layer: Decoder layer index.
        q: `[num_heads, head_dim, hidden]`; `q[h] @ x` is head `h`'s query.
        k: `[num_kv_heads, head_dim, hidden]`; query head `h` attends with key head `h // (num_heads // num_kv_heads)`.
        norm: Gain `[hidden]` of the pre-attention norm, or `None` if the criterion does not use it.
        v: `[num_kv_heads, head_dim, hidden]` value weights, or `None` if the criterion does not use them.
        o: `[num_heads, hidden, head_dim]` output projection per query head, or `None` likewise.
    """

    layer: int
    q: "torch.Tensor"
    k: "torch.Tensor"
    norm: "torch.Tensor | None" = None
    v: "torch.Tensor | None" = None
    o: "torch.Tensor | None" = None

    @property
    def group_size(self) -> int:
        return self.q.shape[0] // self.k.shape[0]

    def grouped_q(self) -> "torch.Tensor":
        """`[num_kv_heads, head_dim, hidden]`: the query heads that share a key head, summed.

        `sum_h W_Q^h (W_K^{g(h)})^T = sum_g (sum_{h in g} W_Q^h) (W_K^g)^T`, so GQA/MQA need no repeated keys.
        """
        kv, d, hidden = self.k.shape
        return self.q.reshape(kv, self.group_size, d, hidden).sum(dim=1)

    def folded(self) -> "AttentionWeights":
        """The weights with the norm gain folded in: `W_Q -> diag(gamma) W_Q`, `W_K -> diag(gamma) W_K`."""
        if self.norm is None:
            raise ValueError(f"layer {self.layer}: no norm gain to fold")
        return AttentionWeights(self.layer, self.q * self.norm, self.k * self.norm, self.norm, self.v, self.o)


def frobenius_of_product(a: "torch.Tensor", b: "torch.Tensor") -> float:
    """`||a^T b||_F` for `a`, `b` of shape `[r, n]`, without the `n x n` product when `r < n`.

    `||a^T b||_F^2 = trace(b^T a a^T b) = sum((a a^T) * (b b^T))`: two `r x r` Gram matrices instead of one
    `n x n` product, which is what makes GQA layers (`r = kv_heads * head_dim`) cheap.
    """
    import torch

    if a.shape[0] < a.shape[1]:
        squared = ((a @ a.T) * (b @ b.T)).sum()
        return float(squared.clamp_min(0).sqrt())
    return float(torch.linalg.matrix_norm(a.T @ b, ord="fro"))


WEIGHTS = "weights"
MODEL = "model"

# Chosen by the criterion study (benchmarks/RESULTS.md, "Beyond Gate-Norm"): on SmolLM2-135M it is the only
# weight-only criterion at least as good as the median random draw at every measured k <= 12, on three texts.
DEFAULT_CRITERION = "gate_trace"


@dataclass(frozen=True)
class Criterion:
    """A scoring rule; for every criterion, lower scores are removed first.

    Args:
        name: Registry name.
        fn: For a weight-level criterion, maps one layer's `AttentionWeights` to a score. For a model-level one,
            `fn(model, layers, *, calibration, seed, progress)` returns one score per index in `layers` (the
            layers that still have attention); see `register_model_criterion`.
        description: One line for `--help` and reports.
        uses_norm: Whether a weight-level `fn` needs the pre-attention norm gain.
        uses_ov: Whether a weight-level `fn` needs the value and output projections.
        stack: Whether a weight-level `fn` scores all layers at once from a `StackWeights` (because a layer's
            score depends on the layers before it) instead of one `AttentionWeights` at a time.
        min_gap: The selection rule used with this criterion unless `GateNormConfig.min_gap` says otherwise: removed
            sublayers at least this many layers apart (1: plain "k lowest").
        level: `"weights"` (reads Q/K weights one layer at a time, straight from a checkpoint) or `"model"`
            (needs the loaded model, e.g. for forward passes).
        needs_data: Whether `fn` needs calibration data (`Calibration`).
        needs_model: Whether a model-level `fn` reads the model (`False`: it gets `None` unless one is loaded).
        uses_seed: Whether the scores depend on the `seed` argument.
    """

    name: str
    fn: Callable
    description: str
    uses_norm: bool = False
    uses_ov: bool = False
    stack: bool = False
    min_gap: int = 1
    level: str = WEIGHTS
    needs_data: bool = False
    needs_model: bool = False
    uses_seed: bool = False

    @property
    def data_free(self) -> bool:
        """True when no calibration data is needed."""
        return not self.needs_data

    @property
    def model_level(self) -> bool:
        return self.level == MODEL


_CRITERIA: dict[str, Criterion] = {}


def _register(criterion: Criterion) -> None:
    if criterion.name in _CRITERIA:
        raise ValueError(f"A criterion named {criterion.name!r} is already registered")
    _CRITERIA[criterion.name] = criterion


def _registering(**fields):
    """A decorator that registers `Criterion(fn=decorated, **fields)` and returns the function unchanged."""

    def wrapper(fn: Callable):
        _register(Criterion(fn=fn, **fields))
        return fn

    return wrapper


def register_criterion(
    name: str,
    *,
    description: str,
    uses_norm: bool = False,
    uses_ov: bool = False,
    stack: bool = False,
    min_gap: int = 1,
):
    """Decorator registering a weight-level scoring function under `name`.

    The function is `fn(AttentionWeights) -> float`, or, with `stack=True`,
    `fn(StackWeights) -> list[float]` (one score per entry of `stack.layers`; see `optimum_gatenorm.circuits`).
    `uses_norm` / `uses_ov` say which tensors beyond Q and K the `AttentionWeights` must carry; `min_gap` is the
    criterion's default selection rule (see `GateNormConfig.min_gap`).

    Raises:
        ValueError: If `name` is already registered.
    """

    return _registering(
        name=name, description=description, uses_norm=uses_norm, uses_ov=uses_ov, stack=stack, min_gap=min_gap
    )


def register_model_criterion(
    name: str, *, description: str, needs_data: bool, needs_model: bool = True, uses_seed: bool = False
):
    """Decorator registering a model-level scoring function under `name`.

    The function is called as `fn(model, layers, *, calibration, seed, progress)`:

    - `model`: the loaded `PreTrainedModel` (in eval mode, on the scoring device), or `None` when `needs_model`
      is False and the model is not loaded;
    - `layers`: sorted indices of the decoder layers that still have attention (already pruned ones are left out);
    - `calibration`: a `Calibration` (never `None` when `needs_data`), else `None`;
    - `seed`: an integer for criteria with randomness;
    - `progress`: whether to show a progress bar;

    and returns one finite score per entry of `layers`, the lowest to be removed first.

    Raises:
        ValueError: If `name` is already registered.
    """

    return _registering(
        name=name,
        description=description,
        level=MODEL,
        needs_data=needs_data,
        needs_model=needs_model,
        uses_seed=uses_seed,
    )


def available_criteria() -> list[str]:
    return sorted(_CRITERIA)


def get_criterion(name: str) -> Criterion:
    """Returns the criterion `name`.

    Raises:
        ValueError: If there is none, listing the valid names.
    """
    try:
        return _CRITERIA[name]
    except KeyError:
        raise ValueError(f"unknown criterion {name!r}; choose one of: {', '.join(available_criteria())}") from None


@register_criterion("gate_norm", description="||W_Q W_K^T||_F, the paper's Gate-Norm")
def gate_norm(weights: AttentionWeights) -> float:
    """Gate-Norm, arXiv:2512.20636: `s = ||W_Q W_K^T||_F` with `W_Q W_K^T = sum_h W_Q^h (W_K^{g(h)})^T`."""
    kv, d, hidden = weights.k.shape
    return frobenius_of_product(weights.grouped_q().reshape(kv * d, hidden), weights.k.reshape(kv * d, hidden))


@register_criterion("gate_norm_head", description="sum over query heads h of ||W_Q^h (W_K^g(h))^T||_F")
def gate_norm_head(weights: AttentionWeights) -> float:
    """Per-head Gate-Norm: `s = sum_h ||W_Q^h (W_K^{g(h)})^T||_F`, via `head_dim x head_dim` Gram matrices."""
    import torch

    q_gram = torch.einsum("hdn,hen->hde", weights.q, weights.q)  # [heads, d, d]
    k_gram = torch.einsum("gdn,gen->gde", weights.k, weights.k)  # [kv_heads, d, d]
    k_gram = k_gram.repeat_interleave(weights.group_size, dim=0)
    squared = (q_gram * k_gram).sum(dim=(1, 2)).clamp_min(0)
    return float(squared.sqrt().sum())


@register_criterion(
    "gate_norm_folded",
    description="||diag(g) W_Q W_K^T diag(g)||_F, Gate-Norm with the pre-attention norm gain g folded in",
    uses_norm=True,
)
def gate_norm_folded(weights: AttentionWeights) -> float:
    """Gate-Norm of the gate the normalised stream actually sees: `||diag(g) W_Q W_K^T diag(g)||_F`."""
    return gate_norm(weights.folded())


@register_criterion(
    "gate_trace",
    description="-sum_h tr(diag(g) W_Q^h W_K^h^T diag(g)) / sqrt(d): self-matching layers go first; min_gap 2 "
    "(default)",
    uses_norm=True,
    min_gap=2,
)
def gate_trace(weights: AttentionWeights) -> float:
    """Self-match score `s = -(1 / sqrt(d)) sum_h tr(M_h)`, `M_h = diag(gamma) W_Q^h (W_K^{g(h)})^T diag(gamma)`.

    Head `h` scores query token `i` against key token `j` with the logit `x_i^T M_h x_j / sqrt(d)`, where
    `x = norm(h) / gamma` is the normalised residual stream (RoPE inserts a rotation by `j - i`, which is the
    identity for `j = i`). For isotropic unit-variance `x`, the expected logit of a token with *itself* is
    `tr(M_h) / sqrt(d)` and that of two independent tokens is 0: the trace is the head's expected preference for
    the query token itself and tokens like it over unrelated ones. A strongly self-matching head mostly averages
    tokens that resemble the query, so its update re-writes what the token's own residual stream already holds;
    a head with zero or negative trace looks elsewhere and moves information between different tokens, which
    nothing else in the network does. The layers with the most self-matching heads (the largest trace, i.e. the
    lowest `s`) are removed first, by default no two adjacent (`min_gap=2`: measured better than plain "k
    lowest" on SmolLM2, benchmarks/RESULTS.md). Only Q, K and the norm gain are read, like Gate-Norm, which is the Frobenius
    norm of the same gate (without the gain): Gate-Norm measures how strongly the gate couples tokens, its trace
    how much of that coupling is self-matching. Grouped heads share keys, so the sum runs over key groups with
    their query heads summed: `tr(G A^T B G) = sum(A * B * gamma^2)`.
    """
    if weights.norm is None:
        raise ValueError(f"layer {weights.layer}: gate_trace needs the pre-attention norm gain")
    head_dim = weights.k.shape[1]
    trace = (weights.grouped_q() * weights.k * weights.norm.square()).sum()
    return -float(trace) / math.sqrt(head_dim)


def layer_weights(
    source: "WeightSource",
    config: "PretrainedConfig",
    layer: int,
    *,
    with_norm: bool,
    with_ov: bool = False,
    device: "str | torch.device" = "cpu",
) -> AttentionWeights:
    """Reads and upcasts one layer's Q, K (and norm gain, and V and output projection) from `source`.

    Raises:
        InvalidCheckpointError: If a tensor is missing or holds NaN/Inf.
    """
    import torch

    from .adapters import HeadDims, get_adapter

    adapter = get_adapter(config)
    dims = HeadDims.from_config(config)
    prefix = adapter.attention_prefix(layer) + "."
    names = adapter.qk_tensor_names(layer) + (adapter.ov_tensor_names(layer) if with_ov else ())
    tensors = {}
    for name in dict.fromkeys(names):
        tensors[name[len(prefix) :]] = source.get(name, adapter.base_model_prefix).to(device, torch.float32)
    v = o = None
    try:
        q, k = adapter.qk.extract(tensors, dims)
        if with_ov:
            v, o = adapter.qk.extract_ov(tensors, dims)
    except RuntimeError as error:  # reshape of a tensor of the wrong size
        raise InvalidCheckpointError(
            f"layer {layer}: attention weights do not match the config's head sizes: {error}"
        ) from None
    norm = None
    if with_norm:
        norm = source.get(adapter.norm_tensor_name(layer), adapter.base_model_prefix).to(device, torch.float32)
    for what, tensor in (("query", q), ("key", k), ("norm gain", norm), ("value", v), ("output projection", o)):
        if tensor is not None and not torch.isfinite(tensor).all():
            raise InvalidCheckpointError(
                f"layer {layer}: the {what} weights hold NaN or Inf values; the checkpoint is corrupt"
            )
    return AttentionWeights(layer, q, k, norm, v, o)


def score_layers(
    source: "WeightSource",
    config: "PretrainedConfig",
    criterion: str = DEFAULT_CRITERION,
    *,
    device: "str | torch.device" = "cpu",
    progress: bool = False,
    source_kind: str = "checkpoint",
) -> "ScoreReport":
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

    from .modeling import get_pruned_layers

    chosen = _get_checked(criterion)
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
            from .circuits import StackWeights

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


def _report(config, chosen: Criterion, scores, pruned, seconds: float, source_kind: str, **extra) -> "ScoreReport":
    from .report import ScoreReport

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


def _get_checked(criterion: str) -> Criterion:
    try:
        return get_criterion(criterion)
    except ValueError as error:
        raise InvalidConfigError(str(error)) from None


def require_calibration(chosen: Criterion, calibration: "Calibration | None") -> None:
    """Raises `InvalidConfigError` if `chosen` is data-driven and `calibration` is `None`."""
    if chosen.needs_data and calibration is None:
        raise InvalidConfigError(
            f"criterion {chosen.name!r} is data-driven and needs calibration text: pass --calibration-text FILE "
            "(in Python, calibration=Calibration.from_files(paths, tokenizer))"
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
) -> "ScoreReport":
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
    from .modeling import get_pruned_layers

    chosen = _get_checked(criterion)
    if not chosen.model_level:
        raise InvalidConfigError(f"criterion {criterion!r} is weight-level; use score_layers")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InvalidConfigError(f"seed must be an integer, got {seed!r}")
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
    )


def rank(scores: Sequence[float | None]) -> list[int]:
    """Layer indices with a score, lowest score first (ties: lower index first)."""
    return sorted((i for i, s in enumerate(scores) if s is not None), key=lambda i: (scores[i], i))


# The baselines and the circuit criteria register themselves on import; imported last, so the registry
# functions above exist.
from . import baselines, circuits  # noqa: E402, F401
