"""`cosine_self`: the `cosine` criterion on text the model writes itself, so the user supplies no data.

The data-driven `cosine` (He et al. 2024, `optimum_gatenorm.criteria.baselines`) needs calibration text. Here the
model writes it: `SELF_SAMPLES` sequences of `SELF_LENGTH` tokens (fewer where the model's position table is
shorter), sampled at temperature 1 from the full distribution (no top-k, no top-p: the model's own distribution,
not its generation defaults), each starting from
the model's start token (`bos_token_id` of the config or generation config, else `eos_token_id`, the document
boundary). Sampling uses its own `torch.Generator` seeded with `seed` (`GateNormConfig.seed`), so the same model,
seed and device give the same text and the same scores, and the global RNG is untouched. The start token stays in
every window, as the model sees it when generating.

Then `cosine` runs on those windows: `s_l = 1 - mean_t cos(x_t, x_t + A_l(x)_t)`, lowest removed first.

Why this and not a weight-only criterion: the statistics of the residual stream (which directions it uses, how
large it is at each depth, where attention sinks are) decide how much an attention sublayer changes it, and the
weights reveal them only under an isotropy assumption that fails badly on models with per-head query/key norms
(Gemma 3; benchmarks/RESULTS.md, "Default criterion on two families"). Text sampled from the model has the
model's own statistics by construction.

The windows a scoring sampled come back in its report (`ScoreReport.windows`), so that the replacement fit of the
same pruning run (`optimum_gatenorm.pruning.replacement`) is handed the same tokens instead of sampling them twice.

Cost: `SELF_LENGTH` decoding steps of a batch of `SELF_SAMPLES` (with KV cache), then one forward pass over the
windows; measured in benchmarks/RESULTS.md. This is model compute, not data: nothing is read but the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..checkpoints.tensors import ModelWeights, layer_weights
from ..compat import cache_kwargs, returned_cache
from ..errors import InvalidCheckpointError, UnsupportedModelError
from ..params import ANY, param
from .baselines import attention_statistics
from .calibration import Calibration
from .registry import SampledScores, register_model_criterion


if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

__all__ = [
    "SELF_LENGTH",
    "SELF_SAMPLES",
    "attn_norm_self",
    "cosine_self",
    "self_calibration",
    "self_generated",
    "self_length",
    "start_token",
]

SELF_SAMPLES = 16
SELF_LENGTH = 256


def start_token(model: "PreTrainedModel") -> int:
    """The token every self-generated sequence starts from: BOS of the config or generation config, else EOS (the
    first that names an id inside the vocabulary).

    Raises:
        UnsupportedModelError: If the model names neither.
    """
    vocab = model.get_input_embeddings().num_embeddings
    for name in ("bos_token_id", "eos_token_id"):
        for config in (model.config, getattr(model, "generation_config", None)):
            value = getattr(config, name, None) if config is not None else None
            if isinstance(value, (list, tuple)):
                value = value[0] if value else None
            if isinstance(value, int) and 0 <= value < vocab:
                return value
    raise UnsupportedModelError(
        f"{model.config.model_type}: the config names no bos_token_id or eos_token_id inside the vocabulary of "
        f"{vocab} to start self-generated calibration text from; use a criterion with {param('calibration_text', ANY)} "
        "(e.g. cosine) or a weight-only one"
    )


def self_length(model: "PreTrainedModel", length: int = SELF_LENGTH) -> int:
    """`length`, capped to fit the model's position table (`max_position_embeddings` / `n_positions`) with the start
    token in front."""
    config = model.config
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return min(length, context - 1) if isinstance(context, int) and context > 1 else length


def self_generated(
    model: "PreTrainedModel",
    *,
    num_samples: int = SELF_SAMPLES,
    length: int = SELF_LENGTH,
    seed: int = 0,
    progress: bool = False,
    progress_label: str = "Self-generated calibration",
) -> "torch.Tensor":
    """`[num_samples, n + 1]` token ids: the start token, then `n = self_length(model, length)` tokens sampled by
    `model` at temperature 1 from its full distribution, all sequences in one batch with the KV cache (module
    docstring); `progress` shows a tqdm bar over the tokens, labelled `progress_label`."""
    import torch
    from tqdm.auto import tqdm

    device = model.get_input_embeddings().weight.device
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = torch.full((num_samples, 1), start_token(model), dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            step_input, cache = ids, None
            for _ in tqdm(
                range(self_length(model, length)),
                desc=progress_label,
                unit="token",
                disable=not progress,
            ):
                output = model(input_ids=step_input, use_cache=True, **cache_kwargs(model, cache))
                cache = returned_cache(output)
                probs = torch.softmax(output.logits[:, -1, :].float(), dim=-1)
                step_input = torch.multinomial(probs, 1, generator=generator)
                ids = torch.cat([ids, step_input], dim=1)
    finally:
        model.train(was_training)
    return ids.cpu()


@register_model_criterion(
    "cosine_self",
    description="cosine on 16 x 256 tokens the model samples itself from its start token (no user data)",
    needs_data=False,
    uses_seed=True,
)
def cosine_self(model, layers, *, calibration, seed, progress):
    """`cosine` on self-generated windows (module docstring); the same seed gives the same scores."""
    statistics, windows = _self_statistics(model, layers, seed, progress)
    return SampledScores([1.0 - value for value in statistics["cosine"]], windows)


@register_model_criterion(
    "attn_norm_self",
    description="attn_norm on 16 x 256 tokens the model samples itself from its start token (no user data)",
    needs_data=False,
    uses_seed=True,
)
def attn_norm_self(model, layers, *, calibration, seed, progress):
    """`attn_norm` (`mean ||A|| / ||X||`) on self-generated windows (module docstring)."""
    statistics, windows = _self_statistics(model, layers, seed, progress)
    return SampledScores(statistics["norm_ratio"], windows)


def check_finite(model: "PreTrainedModel", layers: list[int]) -> None:
    """Refuses NaN/Inf weights before sampling from them, naming the layer and tensor as the weight-level criteria
    do (`layer_weights` checks each scored layer's attention); any other parameter (MLP, embedding) by name.

    Raises:
        InvalidCheckpointError: On the first non-finite weight.
    """
    import torch

    source, device = ModelWeights(model), model.get_input_embeddings().weight.device
    with torch.no_grad():
        for layer in layers:
            layer_weights(source, model.config, layer, with_norm=True, with_ov=True, device=device)
        for name, parameter in model.named_parameters():
            if not torch.isfinite(parameter).all():
                raise InvalidCheckpointError(f"{name} holds NaN or Inf values; the checkpoint is corrupt")


def self_calibration(model: "PreTrainedModel", seed: int = 0, *, progress: bool = False) -> Calibration:
    """The `SELF_SAMPLES` x `SELF_LENGTH` windows `cosine_self` scores on with `seed`, sampled now: the same model,
    seed and device give the same windows (a scoring's own are in its `ScoreReport.windows`)."""
    windows = self_generated(model, seed=seed, progress=progress)
    source = f"{windows.shape[0]} x {windows.shape[1] - 1} tokens sampled by the model (seed {seed})"
    return Calibration(windows, source=source)


def _self_statistics(model, layers, seed, progress) -> tuple[dict[str, list[float]], Calibration]:
    check_finite(model, layers)
    calibration = self_calibration(model, seed, progress=progress)
    return attention_statistics(model, layers, calibration, progress=progress), calibration
