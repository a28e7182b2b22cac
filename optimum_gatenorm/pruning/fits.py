"""How a replacement's parameters are obtained (`FITS`): least squares (the default) or end to end.

`least-squares` is `replacement.fit_replacements`: each map fitted alone, in layer order, to what its sublayer added.

`distill` starts from the least-squares maps and adjusts every replacement parameter together, with Adam
(`DISTILL_LR`, batches of `DISTILL_BATCH` sequences), to minimise the KL divergence from the model's own next-token
distribution before the removal (the teacher: its `DISTILL_TOP_K` most likely tokens per position and the rest as
one bucket, computed once) on self-sampled sequences (`prune` samples `DISTILL_SAMPLES` of them, which the
least-squares start never saw; or the user's calibration windows). The last quarter of them is held out: the
held-out KL is measured at every tenth of the steps, the parameters with the lowest one are kept (the least-squares
start included, so it is never worse there), and the fit stops after `DISTILL_PATIENCE` measurements without a new
best. The student is the model with the removed layers' updates substituted (`replacement._substituted`), so the
fit needs no copy of the model; the rest of the model is frozen. The cost is a forward and a backward pass per step
(measured in docs/replacement.md).

`weight_replacements` builds a `linear` map with no forward pass, for models too large to run: what the attention
computes when every head attends only to the current token, `W = sum_h W_O[h] W_V[g(h)]` (NVIDIA Puzzletron's
initialisation of a linear attention replacement, `child_init.py` in NVIDIA/Model-Optimizer). Value and output
biases are dropped (the map is bias-free); with Gemma's sandwich norm, the post-attention RMSNorm of `y = M n` is
folded with its expected scale for an isotropic unit-RMS input, `W = diag(g_out) M sqrt(d) / ||M diag(g_in)||_F`
(`g_in`: the input norm's gain). Measured, it is far worse than removing the sublayers plainly (docs/replacement.md:
on SmolLM2-135M its mean KL divergence to the unpruned model is 3-6x plain removal's on three texts), so it is not
one of `FITS`; the replacement study keeps it as a variant.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

from ..adapters import get_adapter
from ..adapters.base import HeadDims
from ..checkpoints.structure import FittedReplacement
from ..checkpoints.tensors import ModelWeights, layer_weights
from ..errors import InvalidConfigError
from ..validation import is_int
from .replacement import ReplacementFit, _module, _split, _substituted


if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from ..criteria.calibration import Calibration

__all__ = [
    "DISTILL_BATCH",
    "DISTILL_LR",
    "DISTILL_SAMPLES",
    "DISTILL_STEPS",
    "DISTILL_TOP_K",
    "FITS",
    "check_fit",
    "distill_replacements",
    "distill_samples",
    "fit_replacements_by",
    "weight_replacements",
]

logger = logging.getLogger(__name__)

FITS = ("least-squares", "distill")
DISTILL_STEPS = 100
DISTILL_SAMPLES = 64
DISTILL_TOP_K = 64
DISTILL_LR = 1e-3
DISTILL_BATCH = 4
# Evaluations of the held-out KL without a new best before the fit stops early.
DISTILL_PATIENCE = 3


def check_fit(fit, replacement: str, steps=DISTILL_STEPS) -> str:
    """`fit` if it names one of `FITS` and suits `replacement`, else `InvalidConfigError` naming the fix."""
    if fit not in FITS:
        raise InvalidConfigError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    if fit != "least-squares" and replacement == "none":
        raise InvalidConfigError(f"fit {fit!r} fits a replacement; give replacement 'linear' (or 'mean'), not 'none'")
    if not is_int(steps) or steps < 1:
        raise InvalidConfigError(f"distill steps must be an integer >= 1, got {steps!r}")
    return fit


def weight_replacements(model: "PreTrainedModel", layers) -> ReplacementFit:
    """A `linear` replacement for each of `layers` from the value and output projections alone (module docstring):
    no forward pass. Not offered by `prune`: measured far worse than plain removal on SmolLM2-135M."""
    import torch

    start = time.perf_counter()
    adapter = get_adapter(model.config)
    dims = HeadDims.from_config(model.config)
    group = dims.num_heads // dims.num_kv_heads
    source = ModelWeights(model)
    fitted = {}
    with torch.no_grad():
        for layer in sorted(set(layers)):
            weights = layer_weights(source, model.config, layer, with_norm=True, with_ov=True)
            heads = torch.arange(dims.num_heads) // group
            m = torch.einsum("hdk,hkc->dc", weights.o.double(), weights.v[heads].double())  # [hidden, hidden]
            if adapter.attention_output_norm:
                scale = math.sqrt(dims.hidden_size) / float((m * weights.norm.double()).norm())
                m = weights.out_norm.double()[:, None] * m * scale
            fitted[layer] = FittedReplacement("linear", {"proj.weight": m.float().cpu().contiguous()})
    seconds = time.perf_counter() - start
    calibration = {"source": "the value and output projections alone (no forward pass)"}
    return ReplacementFit(kind="linear", layers=fitted, seconds=seconds, calibration=calibration, fit="weights")


def distill_samples(
    model: "PreTrainedModel", num_samples: int = DISTILL_SAMPLES, seed: int = 0, *, progress: bool = False
) -> "Calibration":
    """The sequences `distill` fits on when no calibration text is given: `num_samples` of `SELF_LENGTH` tokens
    sampled by the model (`criteria.selfcal.self_generated`) with `seed`."""
    from ..criteria.calibration import Calibration
    from ..criteria.selfcal import self_generated

    ids = self_generated(
        model, num_samples=num_samples, seed=seed, progress=progress, progress_label="Sampling text to distill on"
    )
    return Calibration(ids, source=f"{ids.shape[0]} x {ids.shape[1] - 1} tokens sampled by the model (seed {seed})")


def fit_replacements_by(
    model: "PreTrainedModel",
    layers,
    kind: str,
    fit: str,
    windows: "Calibration",
    *,
    distill_windows: "Calibration | None" = None,
    steps: int = DISTILL_STEPS,
    seed: int = 0,
    progress: bool = False,
) -> ReplacementFit:
    """A `kind` replacement for each of `layers`, its parameters obtained by `fit` (one of `FITS`): least squares on
    `windows`, then for `"distill"` end to end on `distill_windows` (default: `windows`)."""
    from .replacement import fit_replacements

    check_fit(fit, kind, steps)
    result = fit_replacements(model, layers, kind, windows, progress=progress)
    if fit == "distill":
        on = distill_windows if distill_windows is not None else windows
        result = distill_replacements(model, result, on, steps=steps, seed=seed, progress=progress)
    return result


def _teacher(model, batches, top_k: int) -> list[tuple["torch.Tensor", "torch.Tensor"]]:
    """Per batch, the model's `top_k` next-token log-probabilities and their token ids."""
    import torch

    out = []
    for batch in batches:
        log_probs = torch.log_softmax(model(input_ids=batch, use_cache=False).logits.float(), dim=-1)
        values, indices = log_probs.topk(min(top_k, log_probs.shape[-1]), dim=-1)
        out.append((values, indices))
    return out


def _kl(logits: "torch.Tensor", teacher: tuple["torch.Tensor", "torch.Tensor"]) -> "torch.Tensor":
    """Mean KL divergence from the teacher's distribution, coarsened to its top-k tokens and one bucket for the rest."""
    values, indices = teacher
    log_q = logits.float().log_softmax(dim=-1).gather(-1, indices)
    p = values.exp()
    rest_p = (1.0 - p.sum(-1)).clamp_min(1e-12)
    rest_q = (1.0 - log_q.exp().sum(-1)).clamp_min(1e-12)
    kl = (p * (values - log_q)).sum(-1) + rest_p * (rest_p.log() - rest_q.log())
    return kl.mean()


def _batches(calibration: "Calibration", device) -> tuple[list, list]:
    """Training and held-out windows (`replacement._split`), regrouped into batches of `DISTILL_BATCH`."""
    import torch

    train, val = _split(calibration)
    join = [torch.cat(part).to(device) if part else None for part in (train, val)]
    return [list(part.split(DISTILL_BATCH)) if part is not None else [] for part in join]


def _train(model, live, params, data, teachers, *, steps, lr, seed, progress) -> dict:
    """Adam on the train batches with early stopping on the held-out ones; the best parameters under `"state"`."""
    import torch
    from tqdm.auto import tqdm

    (train, val), (teacher_train, teacher_val) = data, teachers

    def held_out() -> float:
        with torch.no_grad(), _substituted(model, live):
            kls = [
                float(_kl(model(input_ids=batch, use_cache=False).logits, teacher))
                for batch, teacher in zip(val, teacher_val, strict=True)
            ]
        return sum(kls) / len(kls)

    def snapshot() -> dict:
        return {name: p.detach().clone() for name, p in params.items()}

    best = first = held_out()
    state, best_step, misses, step = snapshot(), 0, 0, 0
    every = max(1, steps // 10)
    optimizer = torch.optim.Adam(params.values(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    bar = tqdm(range(1, steps + 1), desc="Distilling replacements", unit="step", disable=not progress)
    for step in bar:
        if not order:
            order = torch.randperm(len(train), generator=generator).tolist()
        i = order.pop()
        with _substituted(model, live):
            loss = _kl(model(input_ids=train[i], use_cache=False).logits, teacher_train[i])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % every and step != steps:
            continue
        kl = held_out()
        bar.set_postfix(held_out_kl=f"{kl:.4f}")
        if kl < best:
            best, best_step, misses, state = kl, step, 0, snapshot()
        else:
            misses += 1
            if misses >= DISTILL_PATIENCE:
                break
    bar.close()
    return {"steps": step, "kept_step": best_step, "held_out_kl_start": first, "held_out_kl": best, "state": state}


def distill_replacements(
    model: "PreTrainedModel",
    fit: ReplacementFit,
    calibration: "Calibration",
    *,
    steps: int = DISTILL_STEPS,
    lr: float = DISTILL_LR,
    seed: int = 0,
    progress: bool = False,
) -> ReplacementFit:
    """The `distill` fit (module docstring), starting from `fit`; `model` is the teacher, still unpruned there.

    Args:
        model: The model before the layers of `fit` are removed.
        fit: The starting maps (`fit_replacements`).
        calibration: Windows to fit on (the last quarter held out; at least 2 windows).
        steps: Adam steps, one batch of `DISTILL_BATCH` windows each; fewer when the held-out KL stops falling.
        lr: Adam's learning rate.
        seed: Seeds the order of the batches.
        progress: Show a progress bar over the steps.

    Returns:
        A new `ReplacementFit` (`fit="distill"`), with `extra` recording the steps run, the held-out KL at the start
        and at the kept step, and the windows.
    """
    import torch

    check_fit("distill", fit.kind, steps)
    if calibration.num_samples < 2:
        raise InvalidConfigError(
            f"fit 'distill' needs at least 2 windows (one held out), got {calibration.num_samples}"
        )
    start = time.perf_counter()
    device = model.get_input_embeddings().weight.device
    train, val = _batches(calibration, device)
    live = {layer: _module(model, layer, fitted) for layer, fitted in fit.layers.items()}
    params = {  # the replacement's own parameters; its input norm is the model's, frozen
        f"{layer}.{name}": p
        for layer, module in live.items()
        for name, p in module.named_parameters()
        if not name.startswith("norm.")
    }
    frozen = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    try:
        for p in frozen:
            p.requires_grad_(False)
        with torch.no_grad():
            teachers = _teacher(model, train, DISTILL_TOP_K), _teacher(model, val, DISTILL_TOP_K)
        run = _train(model, live, params, (train, val), teachers, steps=steps, lr=lr, seed=seed, progress=progress)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
    best_state = run.pop("state")
    layers = {}
    for layer, fitted in fit.layers.items():
        tensors = {name: best_state[f"{layer}.{name}"].float().cpu().contiguous() for name in fitted.tensors}
        layers[layer] = FittedReplacement(fit.kind, tensors, alpha=fitted.alpha, held_out_error=fitted.held_out_error)
    seconds = time.perf_counter() - start
    extra = {**run, "windows": calibration.source, "top_k": DISTILL_TOP_K, "lr": lr, "seconds": seconds}
    logger.info(
        "Distilled %s replacements: held-out KL %.4f -> %.4f in %.1f s",
        fit.kind,
        run["held_out_kl_start"],
        run["held_out_kl"],
        seconds,
    )
    return ReplacementFit(
        kind=fit.kind,
        layers=layers,
        seconds=fit.seconds + seconds,
        calibration=fit.calibration,
        fit="distill",
        extra=extra,
    )
