"""Baseline criteria for comparing with Gate-Norm: `cosine`, `attn_norm`, `random`, `last`.

They live in the same registry as Gate-Norm (see `optimum_gatenorm.criteria.registry`), so the pruner, the reports and
the CLI accept them like any other criterion, and, as for every criterion, the lowest score is removed first.

`cosine` and `attn_norm` are data-driven: they run the model on calibration text (one forward pass per batch,
no gradients, eval mode) and read, for each decoder layer `l` that still has attention,

    X_l  = the residual stream entering the layer,
    A_l  = Attn_l(LN_l(X_l)), the attention sublayer's contribution to the residual stream,

through forward hooks placed where the architecture adapter says the layers and attention modules are. The
attention module's output `[0]` is what the layer adds to the residual stream (GPT-NeoX's post-attention dropout
and Phi-3's residual dropout are identities in eval mode). With sandwich norms (Gemma) the layer adds
`A_l = post_attention_layernorm(Attn_l(LN_l(X_l)))` instead: the hook then sits on that norm (the adapter's
`attention_output_norm`), whose output is exactly the update. Statistics are averaged over every calibration token
(the windows are full, so there is no padding) in float32, accumulated in float64.
"""

from __future__ import annotations

import random as _random
from typing import TYPE_CHECKING

from ..adapters import get_adapter
from .calibration import Calibration
from .registry import register_model_criterion


if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["attention_statistics", "attn_norm", "cosine", "last", "random"]


class _StopForward(Exception):
    """Raised by the hook of the deepest scored layer: later layers are not needed."""


def attention_statistics(
    model: "PreTrainedModel", layers: list[int], calibration: "Calibration", *, progress: bool = False
) -> dict[str, list[float]]:
    """Token-averaged `cos(X, X + A)` and `||A|| / ||X||` of the attention sublayers of `layers`.

    Args:
        model: A supported causal LM; it is put in eval mode for the passes and restored afterwards.
        layers: Decoder layers to measure; each must still have its attention module.
        calibration: The token windows, run `calibration.batch_size` at a time.
        progress: Show a progress bar over the forward passes.

    Returns:
        `{"cosine": [...], "norm_ratio": [...]}`, one value per entry of `layers`.
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    adapter = get_adapter(model.config)
    decoder_layers = model.get_submodule(adapter.layers)
    base = model.get_submodule(adapter.base_model_prefix)
    device = model.get_input_embeddings().weight.device
    cos_sum = {layer: 0.0 for layer in layers}
    ratio_sum = {layer: 0.0 for layer in layers}
    tokens = 0
    inputs: dict[int, torch.Tensor] = {}
    deepest = max(layers) if layers else None

    def capture_input(layer):
        def hook(module, args, kwargs):
            inputs[layer] = args[0] if args else kwargs["hidden_states"]

        return hook

    def measure(layer):
        def hook(module, args, output):
            update = (output[0] if isinstance(output, tuple) else output).float()
            x = inputs.pop(layer).float()
            cos = F.cosine_similarity(x, x + update, dim=-1, eps=1e-12)
            ratio = update.norm(dim=-1) / x.norm(dim=-1).clamp_min(torch.finfo(torch.float32).tiny)
            cos_sum[layer] += float(cos.double().sum())
            ratio_sum[layer] += float(ratio.double().sum())
            if layer == deepest:
                raise _StopForward

        return hook

    handles = []
    was_training = model.training
    try:
        for layer in layers:
            decoder_layer = decoder_layers[layer]
            attention = getattr(decoder_layer, adapter.attention, None)
            assert attention is not None, f"layer {layer} has no attention module to score"
            # The module whose output the layer adds to the residual stream: the attention, or its output norm.
            update = (
                getattr(decoder_layer, adapter.attention_output_norm) if adapter.attention_output_norm else attention
            )
            handles.append(decoder_layer.register_forward_pre_hook(capture_input(layer), with_kwargs=True))
            handles.append(update.register_forward_hook(measure(layer)))
        model.eval()
        with torch.no_grad():
            for batch in tqdm(calibration.batches(), desc="Calibration passes", unit="batch", disable=not progress):
                try:
                    base(input_ids=batch.to(device), use_cache=False)
                except _StopForward:
                    pass
                tokens += batch.numel()
    finally:
        for handle in handles:
            handle.remove()
        inputs.clear()
        model.train(was_training)
    return {
        "cosine": [cos_sum[layer] / tokens for layer in layers],
        "norm_ratio": [ratio_sum[layer] / tokens for layer in layers],
    }


@register_model_criterion(
    "cosine",
    description="1 - mean cos(X, X + Attn(LN(X))) on calibration text (He et al. 2024; data-driven)",
    needs_data=True,
)
def cosine(model, layers, *, calibration, seed, progress):
    """`s_l = 1 - mean_t cos(x_t, x_t + Attn_l(LN_l(x))_t)`: how much the sublayer turns the residual stream.

    He et al., "What Matters in Transformers? Not All Attention Is Needed" (arXiv:2406.15786), drop the
    attention sublayers whose output is most similar to their input. Score = one minus that mean cosine
    similarity over all calibration tokens, so the MOST similar (least changing) sublayer has the LOWEST score
    and is removed first. Data-driven: needs calibration text and forward passes.
    """
    stats = attention_statistics(model, layers, calibration, progress=progress)
    return [1.0 - value for value in stats["cosine"]]


@register_model_criterion(
    "attn_norm",
    description="mean ||Attn(LN(X))|| / ||X|| on calibration text (data-driven)",
    needs_data=True,
)
def attn_norm(model, layers, *, calibration, seed, progress):
    """`s_l = mean_t ||Attn_l(LN_l(x))_t|| / ||x_t||`: the relative size of the sublayer's update.

    The sublayer that adds the smallest update relative to the residual stream has the LOWEST score and is
    removed first. Data-driven: needs calibration text and forward passes.
    """
    return attention_statistics(model, layers, calibration, progress=progress)["norm_ratio"]


@register_model_criterion(
    "random",
    description="uniform random scores from --seed (a control baseline)",
    needs_data=False,
    needs_model=False,
    uses_seed=True,
)
def random(model, layers, *, calibration, seed, progress):
    """`s_l ~ U[0, 1)`, drawn in layer order from `random.Random(seed)`: a random ranking, the LOWEST removed first.

    The same seed and the same set of remaining layers give the same scores. Data-free; reads no weights.
    """
    rng = _random.Random(seed)
    return [rng.random() for _ in layers]


@register_model_criterion(
    "last",
    description="layer depth reversed: the deepest attention sublayers go first",
    needs_data=False,
    needs_model=False,
)
def last(model, layers, *, calibration, seed, progress):
    """`s_l = max(layers) - l`: the DEEPEST remaining sublayer has the LOWEST score (0) and is removed first.

    Data-free; reads no weights.
    """
    deepest = max(layers, default=0)
    return [float(deepest - layer) for layer in layers]
