"""Weight-only criteria beyond Gate-Norm: the value-output circuit and the sublayer's relative contribution.

Gate-Norm reads only the query-key "gate" `W_Q W_K^T`, which decides *how* tokens mix. What an attention sublayer
*writes* into the residual stream is decided by its value-output ("OV") circuit, and whether that write matters
depends on how large the residual stream already is at that depth. The criteria here estimate both from weights
alone (no data, no forward pass), under one modelling assumption: the normalised input of a sublayer,
`x = gamma * x_hat` with `x_hat = norm(h) / gain`, has isotropic coordinates of unit variance (RMSNorm and
LayerNorm make the mean square of `x_hat` exactly 1; isotropy is the assumption). Biases and LayerNorm shifts
are ignored. For every criterion the lowest score is removed first.

- `ov_norm`: head `h` adds `O_h V_{g(h)} (sum_j a_ij x_j)` to token `i`. For one attended token (`a` one-hot) and
  isotropic `x`, `E ||O_h V_g diag(gamma) x_hat||^2 = ||O_h V_g diag(gamma)||_F^2`; heads attend to different
  tokens, so their writes add in square: `s = sqrt(sum_h ||O_h V_{g(h)} diag(gamma)||_F^2)`, the expected norm of
  the update for a unit-RMS input. Attention averaging over several tokens shrinks it by a factor the weights do
  not reveal.
- `gate_ov`: `gate_norm * ov_norm`. A sublayer matters only if it both mixes selectively (a strong gate) and writes
  something large (a strong OV circuit); the product is low when either is weak.
- `ov_relative`: `ov_norm_l / R_l`, the update relative to the residual stream it is added to. The stream at the
  input of layer `l` is the token embedding plus every earlier sublayer's update; treating those as uncorrelated,
  `R_l^2 = e^2 + sum_{j<l} (A_j^2 + M_j^2)`, with `e` the RMS row norm of the embedding matrix, `A_j = ov_norm_j`
  (0 for attention already removed) and `M_j` the expected output norm of MLP `j` for an isotropic unit-variance
  input, computed per neuron by Gauss-Hermite quadrature (`mlp_output_norm`). The data-driven `cosine` baseline
  measures the same quantity (`1 - cos(X, X + A)` grows with `||A|| / ||X||`) on real text.

Sandwich norms (Gemma 2 and 3) put an RMSNorm with gain `g` on a sublayer's output `a` before the residual add, so
the update is `g * a / rms(a)`: its size no longer scales with the weights that produce `a`, only its direction
does. Under the same modelling assumption, with `C = E[a a^T]` the output covariance,
`E ||g * a / rms(a)||^2 ~ sum_i g_i^2 E[a_i^2] / E[rms(a)^2] = D * sum_i g_i^2 C_ii / tr(C)` (`D` = hidden size):
the output norm gain weighted by where the sublayer writes. `ov_norm` and the MLP output norms of `ov_relative`
use this where the adapter names an output norm (`attention_output_norm`, `mlp_output_norm`); `C_ii` is
`sum_h ||(O_h V_{g(h)} diag(gamma))_i||^2` for attention and the per-coordinate second moment of the MLP output.
The embedding enters the residual stream times `sqrt(hidden)` where the adapter says so (`numerics.embedding_scale`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..adapters import get_adapter
from ..checkpoints.tensors import AttentionWeights, WeightSource, layer_weights
from ..errors import UnsupportedModelError
from .gate import gate_norm
from .registry import register_criterion


if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig

__all__ = [
    "StackWeights",
    "gate_ov",
    "mlp_output_norm",
    "normalized_output_norm_squared",
    "ov_norm",
    "ov_norm_squared",
    "ov_relative",
]

QUADRATURE_NODES = 64


def normalized_output_norm_squared(second_moments: "torch.Tensor", gain: "torch.Tensor") -> float:
    """`D * sum_i g_i^2 m_i / sum_i m_i`: expected squared norm of `g * a / rms(a)` for an output `a` with
    per-coordinate second moments `m_i = E[a_i^2]` (module docstring); 0 for an output that is always zero."""
    total = float(second_moments.sum())
    if total <= 0:
        return 0.0
    return second_moments.numel() * float((gain.square() * second_moments).sum()) / total


def ov_norm_squared(weights: AttentionWeights) -> float:
    """`sum_h ||O_h V_{g(h)} diag(gamma)||_F^2` through `head_dim x head_dim` Gram matrices.

    `||O V G||_F^2 = trace((V G^2 V^T)(O^T O))`, so no `hidden x hidden` product is formed. Without a norm gain
    (`weights.norm is None`) `gamma = 1`. With a norm on the attention output (`weights.out_norm`, gain `g`) it is
    `D * sum_i g_i^2 C_ii / tr(C)` with `C_ii = sum_h ||(O_h V_{g(h)} diag(gamma))_i||^2` and `tr(C)` the sum
    above (module docstring).
    """
    import torch

    if weights.v is None or weights.o is None:
        raise ValueError(f"layer {weights.layer}: the value and output projections were not read")
    v = weights.v if weights.norm is None else weights.v * weights.norm
    v_gram = torch.einsum("gdn,gen->gde", v, v).repeat_interleave(weights.group_size, dim=0)  # [heads, d, d]
    if weights.out_norm is not None:
        diagonal = torch.einsum("hnd,hde,hne->n", weights.o, v_gram, weights.o).clamp_min(0)  # C_ii
        return normalized_output_norm_squared(diagonal, weights.out_norm)
    o_gram = torch.einsum("hnd,hne->hde", weights.o, weights.o)  # [heads, d, d]
    return float((v_gram * o_gram).sum().clamp_min(0))


@register_criterion(
    "ov_norm",
    description="sqrt(sum_h ||O_h V_h diag(g)||_F^2): what the sublayer can write to the residual stream",
    uses_norm=True,
    uses_ov=True,
)
def ov_norm(weights: AttentionWeights) -> float:
    """Value-output norm `sqrt(sum_h ||O_h V_{g(h)} diag(gamma)||_F^2)` (derivation in the module docstring)."""
    return math.sqrt(ov_norm_squared(weights))


@register_criterion(
    "gate_ov",
    description="gate_norm * ov_norm: the query-key gate and the value-output circuit combined",
    uses_norm=True,
    uses_ov=True,
)
def gate_ov(weights: AttentionWeights) -> float:
    """`||W_Q W_K^T||_F * sqrt(sum_h ||O_h V_{g(h)} diag(gamma)||_F^2)`: weak if either circuit is weak."""
    return gate_norm(weights) * ov_norm(weights)


def _activation(config: "PretrainedConfig", attribute: str):
    from transformers.activations import ACT2FN

    name = getattr(config, attribute, None)
    try:
        return ACT2FN[name]
    except KeyError:
        raise UnsupportedModelError(
            f"{config.model_type}: activation {name!r} (config.{attribute}) is unknown to transformers' ACT2FN"
        ) from None


def mlp_output_norm(
    gate: "torch.Tensor | None",
    up: "torch.Tensor",
    down: "torch.Tensor",
    gain: "torch.Tensor",
    activation,
    *,
    nodes: int = QUADRATURE_NODES,
    out_gain: "torch.Tensor | None" = None,
) -> float:
    """Expected norm of `down(act(gate x) * up x)` (or `down(act(up x))` when `gate` is `None`).

    The input is `x = gain * z` with `z ~ N(0, I)`. Neuron `i` sees `a_i = G_i . x ~ N(0, s_a^2)` and
    `b_i = U_i . x ~ N(0, s_b^2)` with correlation `rho`; writing `b = s_b (rho z_1 + sqrt(1 - rho^2) z_2)` with
    `a = s_a z_1` leaves one-dimensional Gaussian integrals in `z_1`:
    `E[h] = s_b rho E[act(s_a z_1) z_1]`, `E[h^2] = s_b^2 E[act(s_a z_1)^2 (rho^2 z_1^2 + 1 - rho^2)]`,
    computed by Gauss-Hermite quadrature. Neurons are treated as uncorrelated around their means:
    `E ||D h||^2 = ||D E[h]||^2 + sum_i ||D_i||^2 Var(h_i)`.

    Args:
        gate: `[inner, hidden]` gate projection, or `None` for a plain MLP.
        up: `[inner, hidden]` up projection.
        down: `[hidden, inner]` down projection.
        gain: `[hidden]` gain of the norm in front of the MLP.
        activation: The elementwise activation (a callable on tensors).
        nodes: Quadrature nodes.
        out_gain: `[hidden]` gain of an RMSNorm on the MLP output (Gemma's `post_feedforward_layernorm`), or
            `None`. With it the result is the expected norm of `out_gain * y / rms(y)`, `y` the MLP output:
            `sqrt(D * sum_i g_i^2 E[y_i^2] / sum_i E[y_i^2])` (module docstring).
    """
    import numpy
    import torch

    points, weights = numpy.polynomial.hermite_e.hermegauss(nodes)
    z = torch.as_tensor(points, dtype=up.dtype, device=up.device)
    w = torch.as_tensor(weights / math.sqrt(2 * math.pi), dtype=up.dtype, device=up.device)
    u = up * gain
    if gate is None:
        phi = activation(u.norm(dim=1)[:, None] * z)  # [inner, nodes]
        mean, second = phi @ w, phi.square() @ w
    else:
        g = gate * gain
        s_a, s_b = g.norm(dim=1), u.norm(dim=1)
        rho = ((g * u).sum(dim=1) / (s_a * s_b).clamp_min(torch.finfo(up.dtype).tiny)).clamp(-1, 1)
        phi = activation(s_a[:, None] * z)
        mean = (phi * z) @ w * s_b * rho
        second = (phi.square() * (rho[:, None].square() * z.square() + (1 - rho.square())[:, None])) @ w * s_b.square()
    variance = (second - mean.square()).clamp_min(0)
    moments = (down @ mean).square() + down.square() @ variance  # E[y_i^2] per output coordinate
    if out_gain is not None:
        return math.sqrt(normalized_output_norm_squared(moments, out_gain))
    return float(moments.sum().sqrt())


class StackWeights:
    """Lazy, cached access to the weights of the whole decoder stack, for criteria that need more than one layer.

    Args:
        source: Where tensors come from (a checkpoint read lazily, or an in-memory model).
        config: The model config.
        layers: Sorted indices of the layers whose attention is present (the ones to score).
        device: Where to compute.
        progress: Show a progress bar while reading layers.
    """

    def __init__(
        self,
        source: "WeightSource",
        config: "PretrainedConfig",
        layers: list[int],
        *,
        device: "str | torch.device" = "cpu",
        progress: bool = False,
    ):
        self.source = source
        self.config = config
        self.layers = list(layers)
        self.device = device
        self.progress = progress
        self.adapter = get_adapter(config)
        self._attention_norms: dict[int, float] = {}

    def attention(self, layer: int) -> AttentionWeights:
        """Layer `layer`'s Q, K, V, output projection and pre-attention norm gain, upcast to float32."""
        return layer_weights(self.source, self.config, layer, with_norm=True, with_ov=True, device=self.device)

    def attention_output_norm(self, layer: int) -> float:
        """`ov_norm` of `layer`, 0 if its attention has been removed."""
        if layer not in self.layers:
            return 0.0
        if layer not in self._attention_norms:
            self._attention_norms[layer] = ov_norm(self.attention(layer))
        return self._attention_norms[layer]

    def _tensor(self, name: str) -> "torch.Tensor":
        import torch

        return self.source.get(name, self.adapter.base_model_prefix).to(self.device, torch.float32)

    def _require(self, what: str):
        if getattr(self.adapter, what) is None:
            raise UnsupportedModelError(
                f"{self.config.model_type}: the architecture adapter does not say where the {what} is, which "
                "residual-scale criteria need"
            )

    def mlp_output_norm(self, layer: int) -> float:
        """Expected output norm of layer `layer`'s MLP for an isotropic unit-variance input (`mlp_output_norm`),
        after its output norm where the architecture has one (sandwich norms)."""
        self._require("mlp_layout")
        layout = self.adapter.mlp_layout
        prefix = f"{self.adapter.layer_prefix(layer)}.{self.adapter.mlp}."
        tensors = {name[len(prefix) :]: self._tensor(name) for name in self.adapter.mlp_tensor_names(layer)}
        gate, up, down = layout.extract(tensors)
        gain = self.adapter.norm_gain(self._tensor(self.adapter.post_norm_tensor_name(layer)))
        out_gain = None
        if self.adapter.mlp_output_norm:
            name = f"{self.adapter.layer_prefix(layer)}.{self.adapter.mlp_output_norm}.weight"
            out_gain = self.adapter.norm_gain(self._tensor(name))
        return mlp_output_norm(gate, up, down, gain, _activation(self.config, layout.activation), out_gain=out_gain)

    def embedding_norm(self) -> float:
        """Root-mean-square row norm of the token embedding as the residual stream receives it (scaled by
        sqrt(hidden) where the architecture scales its embedding, e.g. Gemma)."""
        self._require("embedding")
        embedding = self._tensor(f"{self.adapter.embedding}.weight")
        norm = float(embedding.square().sum(dim=1).mean().sqrt())
        if self.adapter.numerics.embedding_scale == "sqrt_hidden":
            norm *= math.sqrt(self.config.hidden_size)
        return norm

    def residual_norms(self) -> list[float]:
        """Estimated norm `R_l` of the residual stream entering each decoder layer `l` (see the module docstring)."""
        from tqdm.auto import tqdm

        squared = self.embedding_norm() ** 2
        norms = []
        total = self.config.num_hidden_layers
        for layer in tqdm(range(total), desc="Residual scale", unit="layer", disable=not self.progress):
            norms.append(math.sqrt(squared))
            squared += self.attention_output_norm(layer) ** 2 + self.mlp_output_norm(layer) ** 2
        return norms


@register_criterion(
    "ov_relative",
    description="ov_norm / estimated residual-stream norm at that depth (weights only)",
    uses_norm=True,
    uses_ov=True,  # informational for a stack criterion: StackWeights reads what it needs
    stack=True,
)
def ov_relative(stack: StackWeights) -> list[float]:
    """`ov_norm_l / R_l` with `R_l^2 = e^2 + sum_{j<l} (ov_norm_j^2 + M_j^2)` (derivation in the module docstring)."""
    residual = stack.residual_norms()
    return [stack.attention_output_norm(layer) / residual[layer] for layer in stack.layers]
