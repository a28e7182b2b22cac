"""The Gate-Norm family: criteria that read the query-key "gate" of each attention sublayer, and nothing else.

Gate-Norm (Lin et al., "Data-Free Pruning of Self-Attention Layers in LLMs", arXiv:2512.20636) ranks the
attention sublayer of decoder layer `l` by its query-key coupling

    s_l = || W_Q W_K^T ||_F,

where `W_Q` and `W_K` (hidden x heads*head_dim) map the residual stream to queries and keys: the product is the
"gate" matrix of the bilinear form `x_i^T W_Q W_K^T x_j` that decides how tokens mix. A sublayer with a weak
gate mixes little, so the sublayers with the lowest scores are removed first. Nothing but Q and K weights is
read: no data, no forward pass.

Measured on SmolLM2-135M (benchmarks/RESULTS.md), the paper's criterion removes contiguous deep blocks and is
worse than a random choice from k = 4 on; `gate_trace`, minus the *trace* of the same gate (with the norm gain
folded in): how much each head prefers tokens like the query itself, which are redundant to attend to, held up there
and was the default until it failed on Gemma-3-270M (the default is now `cosine_self`,
`optimum_gatenorm.criteria.selfcal`). `gate_norm` stays available by name, exactly as the paper defines it.

Architectures with per-head query/key RMSNorms (Qwen3, Gemma 3) normalise every query and key before the dot
product, so `W_Q` and `W_K` alone do not determine the gate and their scale means nothing. Every criterion here
scores `AttentionWeights.gate()` instead of the raw projections: `W_Q^h diag(g_q * g_k) W_K^h^T` divided by the
expected RMS of that head's queries and keys (derivation in `AttentionWeights.gate`); without such norms it is the
raw gate, unchanged. Norm gains stored as `w` and applied as `1 + w` (Gemma) are read through the adapter's
`norm_gain`, so `gamma`, `g_q` and `g_k` are always the factors the model multiplies by. Gemma scales logits by
`query_pre_attn_scalar^-1/2` instead of `head_dim^-1/2` (and Gemma 2 soft-caps them with a monotone `tanh`): a
constant factor for every layer, so rankings are unchanged; `gate_trace` keeps its documented `1/sqrt(head_dim)`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..checkpoints.tensors import AttentionWeights
from .registry import register_criterion


if TYPE_CHECKING:
    import torch

__all__ = ["frobenius_of_product", "gate_norm", "gate_norm_folded", "gate_norm_head", "gate_trace"]


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


@register_criterion("gate_norm", description="||W_Q W_K^T||_F, the paper's Gate-Norm")
def gate_norm(weights: AttentionWeights) -> float:
    """Gate-Norm, arXiv:2512.20636: `s = ||W_Q W_K^T||_F` with `W_Q W_K^T = sum_h W_Q^h (W_K^{g(h)})^T`."""
    weights = weights.gate()
    kv, d, hidden = weights.k.shape
    return frobenius_of_product(weights.grouped_q().reshape(kv * d, hidden), weights.k.reshape(kv * d, hidden))


@register_criterion("gate_norm_head", description="sum over query heads h of ||W_Q^h (W_K^g(h))^T||_F")
def gate_norm_head(weights: AttentionWeights) -> float:
    """Per-head Gate-Norm: `s = sum_h ||W_Q^h (W_K^{g(h)})^T||_F`, via `head_dim x head_dim` Gram matrices."""
    import torch

    weights = weights.gate()
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
    description="-sum_h tr(diag(g) W_Q^h W_K^h^T diag(g)) / sqrt(d): self-matching layers go first; selects "
    "with min_gap 2",
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
    lowest" on SmolLM2, benchmarks/RESULTS.md). Only Q, K and the norm gain are read, like Gate-Norm, which is the
    Frobenius norm of the same gate (without the gain): Gate-Norm measures how strongly the gate couples tokens,
    its trace how much of that coupling is self-matching. Grouped heads share keys, so the sum runs over key groups
    with their query heads summed: `tr(G A^T B G) = sum(A * B * gamma^2)`.
    """
    if weights.norm is None:
        raise ValueError(f"layer {weights.layer}: gate_trace needs the pre-attention norm gain")
    gate = weights.gate()
    head_dim = gate.k.shape[1]
    trace = (gate.grouped_q() * gate.k * weights.norm.square()).sum()
    return -float(trace) / math.sqrt(head_dim)
