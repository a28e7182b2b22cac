"""Data-free scoring of attention sublayers, and the registry of criteria.

Gate-Norm (Lin et al., "Data-Free Pruning of Self-Attention Layers in LLMs", arXiv:2512.20636) ranks the
attention sublayer of decoder layer `l` by its query-key coupling

    s_l = || W_Q W_K^T ||_F,

where `W_Q` and `W_K` (hidden x heads*head_dim) map the residual stream to queries and keys: the product is the
"gate" matrix of the bilinear form `x_i^T W_Q W_K^T x_j` that decides how tokens mix. A sublayer with a weak
gate mixes little, so the sublayers with the lowest scores are removed first. Nothing but Q and K weights is
read: no data, no forward pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import InvalidCheckpointError, InvalidConfigError


if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig

    from .checkpoint import WeightSource
    from .report import ScoreReport

__all__ = [
    "AttentionWeights",
    "Criterion",
    "available_criteria",
    "get_criterion",
    "register_criterion",
    "score_layers",
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
    """

    layer: int
    q: "torch.Tensor"
    k: "torch.Tensor"
    norm: "torch.Tensor | None" = None

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
        return AttentionWeights(self.layer, self.q * self.norm, self.k * self.norm, self.norm)


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


@dataclass(frozen=True)
class Criterion:
    """A weight-only scoring rule; lower scores are removed first.

    Args:
        name: Registry name.
        fn: Maps one layer's `AttentionWeights` to a score.
        description: One line for `--help` and reports.
        uses_norm: Whether `fn` needs the pre-attention norm gain.
    """

    name: str
    fn: Callable[[AttentionWeights], float]
    description: str
    uses_norm: bool = False


_CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str, *, description: str, uses_norm: bool = False):
    """Decorator registering a scoring function under `name`.

    Raises:
        ValueError: If `name` is already registered.
    """

    def wrapper(fn: Callable[[AttentionWeights], float]):
        if name in _CRITERIA:
            raise ValueError(f"A criterion named {name!r} is already registered")
        _CRITERIA[name] = Criterion(name=name, fn=fn, description=description, uses_norm=uses_norm)
        return fn

    return wrapper


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


@register_criterion("gate_norm", description="||W_Q W_K^T||_F, the paper's Gate-Norm (default)")
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


def layer_weights(
    source: "WeightSource",
    config: "PretrainedConfig",
    layer: int,
    *,
    with_norm: bool,
    device: "str | torch.device" = "cpu",
) -> AttentionWeights:
    """Reads and upcasts one layer's Q, K (and norm gain) from `source`.

    Raises:
        InvalidCheckpointError: If a tensor is missing or holds NaN/Inf.
    """
    import torch

    from .adapters import HeadDims, get_adapter

    adapter = get_adapter(config)
    dims = HeadDims.from_config(config)
    prefix = adapter.attention_prefix(layer) + "."
    tensors = {}
    for name in adapter.qk_tensor_names(layer):
        tensors[name[len(prefix) :]] = source.get(name, adapter.base_model_prefix).to(device, torch.float32)
    try:
        q, k = adapter.qk.extract(tensors, dims)
    except RuntimeError as error:  # reshape of a tensor of the wrong size
        raise InvalidCheckpointError(
            f"layer {layer}: Q/K weights do not match the config's head sizes: {error}"
        ) from None
    norm = None
    if with_norm:
        norm = source.get(adapter.norm_tensor_name(layer), adapter.base_model_prefix).to(device, torch.float32)
    for what, tensor in (("query", q), ("key", k), ("norm gain", norm)):
        if tensor is not None and not torch.isfinite(tensor).all():
            raise InvalidCheckpointError(
                f"layer {layer}: the {what} weights hold NaN or Inf values; the checkpoint is corrupt"
            )
    return AttentionWeights(layer, q, k, norm)


def score_layers(
    source: "WeightSource",
    config: "PretrainedConfig",
    criterion: str = "gate_norm",
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
    from .report import ScoreReport

    try:
        chosen = get_criterion(criterion)
    except ValueError as error:
        raise InvalidConfigError(str(error)) from None
    total = config.num_hidden_layers
    pruned = set(get_pruned_layers(config))
    scores: list[float | None] = [None] * total
    start = time.perf_counter()
    with torch.no_grad():
        layers = [i for i in range(total) if i not in pruned]
        for layer in tqdm(layers, desc=f"Scoring ({criterion})", unit="layer", disable=not progress):
            weights = layer_weights(source, config, layer, with_norm=chosen.uses_norm, device=device)
            scores[layer] = chosen.fn(weights)
    seconds = time.perf_counter() - start
    logger.info("Scored %d attention sublayers with %s in %.3f s", len(layers), criterion, seconds)
    return ScoreReport(
        model_type=config.model_type,
        criterion=criterion,
        num_hidden_layers=total,
        scores=scores,
        pruned_layers=sorted(pruned),
        scoring_seconds=seconds,
        source=source_kind,
    )


def rank(scores: Sequence[float | None]) -> list[int]:
    """Layer indices with a score, lowest score first (ties: lower index first)."""
    return sorted((i for i, s in enumerate(scores) if s is not None), key=lambda i: (scores[i], i))
