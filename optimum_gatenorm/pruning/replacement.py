"""Fitting a replacement for each removed attention sublayer, still with no user data by default.

A removed sublayer `l` added `A_l(h)` to the residual stream (with Gemma's sandwich norms: the attention followed by
its post-attention norm). Much of it is predictable from the token's own hidden state, so instead of dropping it a
replaced layer adds

- `mean`:   `b_l = mean_t A_l(h_t)`, a constant vector (no compute, no KV cache);
- `linear`: `W_l n_t` with `n_t = input_norm_l(h_t)`, the output of the norm that fed the attention, and `W_l` a
  bias-free `d x d` map (one `d x d` product per token, no KV cache, no attention): llama.cpp's "linear attention"
  layer of its `deci` architecture. The published anchor is NBL (arXiv 2505.21077, a closed-form linear map per
  attention sublayer, fitted on calibration text); mean ablation is its `W = 0` case.

Both are fitted on calibration windows: by default the text the default criterion `cosine_self` samples (the same
seed, the same 16 x 256 tokens, handed over in its `ScoreReport.windows` when it scored the run; `criteria.selfcal`),
or the user's `--calibration-text` windows when given.

`linear` is ridge least squares in closed form, `W = (X^T X + lambda I)^-1 X^T Y` with `X^T X` and `X^T Y`
accumulated in float64 over every calibration token (`X`: the `n_t`, `Y`: the targets). The strength is
`lambda = alpha * trace(X^T X) / d`, `alpha` chosen among `RIDGE_ALPHAS` by the error on the last quarter of the
windows (4 of 16) after fitting on the rest; then `W` is refitted on all windows with that `alpha`.

The fit is sequential, in layer order: the inputs `n_t` of layer `l` come from the model with the replacements of
the earlier removed layers already in place (their attention outputs substituted by hooks), while the target is
what the sublayer added in the model as given (before this pruning) at that point. So each map also absorbs the
drift its predecessors leave. The computation is model compute on the calibration windows, as for `cosine_self`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..adapters import get_adapter
from ..checkpoints.structure import REPLACEMENT_KINDS, AttentionReplacement, FittedReplacement, is_attention_pruned
from ..errors import InvalidConfigError


if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from ..criteria.calibration import Calibration

__all__ = [
    "RECOVERY_SAMPLES",
    "REPLACEMENTS",
    "RIDGE_ALPHAS",
    "FittedReplacement",
    "ReplacementFit",
    "check_replacement",
    "fit_replacements",
    "layer_replaceability",
    "replaced_attention",
    "replacement_recovery",
]

logger = logging.getLogger(__name__)

REPLACEMENTS = ("none", *REPLACEMENT_KINDS)
# Relative ridge strengths tried (lambda = alpha * mean eigenvalue of X^T X), smallest first.
RIDGE_ALPHAS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
# Used when there are too few windows to hold any out (a single calibration window).
FALLBACK_ALPHA = 1e-3
# Self-sampled sequences (seed + 1, never used by the fit) on which `replacement_recovery` measures the KL divergence.
RECOVERY_SAMPLES = 2


def check_replacement(value) -> str:
    """`value` if it names a replacement (`REPLACEMENTS`), else `InvalidConfigError` listing them."""
    if value not in REPLACEMENTS:
        raise InvalidConfigError(f"replacement must be one of {', '.join(REPLACEMENTS)}, got {value!r}")
    return value


@dataclass
class ReplacementFit:
    """Replacements fitted for a set of removed layers, and how.

    Args:
        kind: `"mean"` or `"linear"`.
        layers: Removed layer -> its `FittedReplacement`.
        seconds: Wall time of the fit.
        calibration: The windows fitted on (`Calibration.to_dict()`), and `held_out` windows.
        recovery: What the replacement recovers on sequences the fit did not use (`replacement_recovery`), if
            measured.
        fit: How the parameters were obtained (`pruning.fits.FITS`): `"least-squares"`, `"weights"`, `"distill"`.
        extra: What that fit recorded (`distill`: steps, held-out KL at the start and at the kept step).
    """

    kind: str
    layers: dict[int, FittedReplacement]
    seconds: float
    calibration: dict
    recovery: dict | None = None
    fit: str = "least-squares"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """For the pruning report: no tensors."""
        return {
            "kind": self.kind,
            "layers": {
                str(layer): {"alpha": fitted.alpha, "held_out_error": fitted.held_out_error}
                for layer, fitted in sorted(self.layers.items())
            },
            "seconds": self.seconds,
            "calibration": self.calibration,
            "recovery": self.recovery,
            "fit": self.fit,
            **({"distill": self.extra} if self.fit == "distill" else {}),
        }


class _Stop(Exception):
    """Raised once the deepest layer a pass needs has been seen: later layers are not run."""


def _update_module(layer, adapter):
    """The module whose output the layer adds to the residual stream: the attention, or its output norm."""
    if adapter.attention_output_norm:
        return getattr(layer, adapter.attention_output_norm)
    return getattr(layer, adapter.attention)


def _first(output):
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def _substituted(model: "PreTrainedModel", substitutes: "dict[int, AttentionReplacement | None]"):
    """Runs `model` with the update of each layer in `substitutes` replaced by that module's output on the layer's
    input (`None`: by zeros, i.e. plain removal). The attention still runs (its output is discarded)."""
    import torch

    adapter = get_adapter(model.config)
    decoder_layers = model.get_submodule(adapter.layers)
    inputs: dict[int, torch.Tensor] = {}
    handles = []

    def capture(layer):
        def hook(module, args, kwargs):
            inputs[layer] = args[0] if args else kwargs["hidden_states"]

        return hook

    def substitute(layer, replacement):
        def hook(module, args, output):
            original = _first(output)
            hidden = inputs.pop(layer)
            new = torch.zeros_like(original) if replacement is None else replacement(hidden).expand_as(original)
            new = new.to(original.dtype)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    try:
        for layer, replacement in substitutes.items():
            decoder_layer = decoder_layers[layer]
            handles.append(decoder_layer.register_forward_pre_hook(capture(layer), with_kwargs=True))
            handles.append(
                _update_module(decoder_layer, adapter).register_forward_hook(substitute(layer, replacement))
            )
        yield
    finally:
        for handle in handles:
            handle.remove()
        inputs.clear()


def _split(calibration: "Calibration") -> tuple[list["torch.Tensor"], list["torch.Tensor"]]:
    """Training and held-out batches: the last quarter of the windows (at least one, none of a single window)."""
    ids = calibration.input_ids
    held = ids.shape[0] // 4 if ids.shape[0] >= 4 else (1 if ids.shape[0] > 1 else 0)
    train, val = ids[: ids.shape[0] - held], ids[ids.shape[0] - held :]
    size = calibration.batch_size
    return list(train.split(size)), list(val.split(size)) if held else []


def _targets(model, layers: list[int], batches, device) -> dict[int, list["torch.Tensor"]]:
    """What each of `layers` adds to the residual stream, per batch, in the model as given (float32, on the CPU)."""

    adapter = get_adapter(model.config)
    decoder_layers = model.get_submodule(adapter.layers)
    base = model.get_submodule(adapter.base_model_prefix)
    found: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    deepest = max(layers)

    def record(layer):
        def hook(module, args, output):
            found[layer].append(_first(output).float().cpu())
            if layer == deepest:
                raise _Stop

        return hook

    handles = [_update_module(decoder_layers[layer], adapter).register_forward_hook(record(layer)) for layer in layers]
    try:
        for batch in batches:
            try:
                base(input_ids=batch.to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return found


def _normed_inputs(model, layer: int, batches, substitutes, device) -> list["torch.Tensor"]:
    """`input_norm(h)` of `layer`, per batch, with `substitutes` in place for the earlier layers (float64, flat)."""
    adapter = get_adapter(model.config)
    decoder_layer = model.get_submodule(adapter.layers)[layer]
    norm = getattr(decoder_layer, adapter.input_norm)
    base = model.get_submodule(adapter.base_model_prefix)
    found = []

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        found.append(norm(hidden).double().reshape(-1, hidden.shape[-1]))
        raise _Stop

    handle = decoder_layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with _substituted(model, substitutes):
            for batch in batches:
                try:
                    base(input_ids=batch.to(device), use_cache=False)
                except _Stop:
                    pass
    finally:
        handle.remove()
    return found


def _ridge(xtx: "torch.Tensor", xty: "torch.Tensor", alpha: float) -> "torch.Tensor":
    import torch

    d = xtx.shape[0]
    lam = alpha * float(torch.trace(xtx)) / d
    return torch.linalg.solve(xtx + lam * torch.eye(d, dtype=xtx.dtype, device=xtx.device), xty)


def _error(w, xtx, xty, yty: float) -> float:
    """`||Y - X W||^2` from the accumulated products."""
    return yty - 2.0 * float((w * xty).sum()) + float((w * (xtx @ w)).sum())


def _fit_linear(train: list, val: list) -> tuple["torch.Tensor", float, float | None]:
    """`W` (`[d_in, d_out]`, float64), the chosen alpha, and the held-out error share, from `(X, Y)` batch pairs."""

    def products(pairs):
        xtx = xty = None
        yty = 0.0
        for x, y in pairs:
            y = y.to(x.device, x.dtype)
            xtx = x.T @ x if xtx is None else xtx + x.T @ x
            xty = x.T @ y if xty is None else xty + x.T @ y
            yty += float((y * y).sum())
        return xtx, xty, yty

    xtx_t, xty_t, _ = products(train)
    if not val:
        return _ridge(xtx_t, xty_t, FALLBACK_ALPHA), FALLBACK_ALPHA, None
    xtx_v, xty_v, yty_v = products(val)
    errors = {alpha: _error(_ridge(xtx_t, xty_t, alpha), xtx_v, xty_v, yty_v) for alpha in RIDGE_ALPHAS}
    alpha = min(errors, key=lambda a: (errors[a], a))
    w = _ridge(xtx_t + xtx_v, xty_t + xty_v, alpha)
    return w, alpha, errors[alpha] / yty_v if yty_v > 0 else None


def _fit_mean(train: list, val: list) -> tuple["torch.Tensor", float | None]:
    """The mean update (float64) over all windows, and the held-out error share of the training windows' mean."""

    def total(ys):
        s = sum(y.double().reshape(-1, y.shape[-1]).sum(0) for y in ys)
        return s, sum(y.numel() // y.shape[-1] for y in ys)

    s_t, n_t = total(train)
    if not val:
        return s_t / n_t, None
    s_v, n_v = total(val)
    mean_t = s_t / n_t
    error = sum(float(((y.double().reshape(-1, y.shape[-1]) - mean_t) ** 2).sum()) for y in val)
    energy = sum(float((y.double() ** 2).sum()) for y in val)
    return (s_t + s_v) / (n_t + n_v), error / energy if energy > 0 else None


def _module(model, layer: int, fitted: FittedReplacement) -> AttentionReplacement:
    """A live `AttentionReplacement` for `layer` (still unpruned) in the model's dtype, for the substitution hooks."""
    import torch

    adapter = get_adapter(model.config)
    norm = getattr(model.get_submodule(adapter.layers)[layer], adapter.input_norm)
    reference = next(norm.parameters())
    module = AttentionReplacement(
        fitted.kind,
        norm=norm if fitted.kind == "linear" else None,
        reference=reference,
        hidden_size=model.config.hidden_size,
        parallel=adapter.parallel_residual(model.config),
    )
    with torch.no_grad():
        for name, tensor in fitted.tensors.items():
            module.get_parameter(name).copy_(tensor)
    return module


def fit_replacements(
    model: "PreTrainedModel",
    layers: Sequence[int],
    kind: str,
    calibration: "Calibration",
    *,
    progress: bool = False,
) -> ReplacementFit:
    """Fits a `kind` replacement for each attention sublayer of `layers` (module docstring), without changing `model`.

    Args:
        model: The model before these layers are removed (it may already lack others); eval mode is used for the
            passes and the mode restored after.
        layers: Decoder layers to fit, each still with its attention.
        kind: `"mean"` or `"linear"`.
        calibration: The windows to fit on (self-sampled or the user's; `criteria.selfcal.self_calibration`).
        progress: Show a progress bar over the layers.

    Returns:
        The fitted replacements, for `checkpoints.modeling.prune_model(..., replacements=fit.layers)`.
    """
    import torch
    from tqdm.auto import tqdm

    if kind not in REPLACEMENT_KINDS:
        raise InvalidConfigError(f"replacement kind must be one of {', '.join(REPLACEMENT_KINDS)}, got {kind!r}")
    layers = sorted(set(layers))
    adapter = get_adapter(model.config)
    decoder_layers = model.get_submodule(adapter.layers)
    assert all(not is_attention_pruned(decoder_layers[i]) for i in layers), "fit before removing the layers"
    calibration.check_vocab(model.get_input_embeddings().num_embeddings)
    device = model.get_input_embeddings().weight.device
    train, val = _split(calibration)
    start = time.perf_counter()
    fitted: dict[int, FittedReplacement] = {}
    was_training = model.training
    model.eval()
    # Shown before the first pass (the targets of every layer, as long as a layer's own), not after it.
    bar = tqdm(layers, desc=f"Fitting {kind} replacements", unit="layer", disable=not progress)
    try:
        with torch.no_grad():
            targets = _targets(model, layers, train + val, device) if layers else {}
            substitutes: dict[int, AttentionReplacement] = {}
            for layer in bar:
                ys = targets.pop(layer)
                ys_train, ys_val = ys[: len(train)], ys[len(train) :]
                if kind == "mean":
                    mean, error = _fit_mean(ys_train, ys_val)
                    fitted[layer] = FittedReplacement(kind, {"bias": mean.float()}, held_out_error=error)
                else:
                    xs = _normed_inputs(model, layer, train + val, substitutes, device)
                    flat = [y.reshape(-1, y.shape[-1]) for y in ys]
                    pairs = list(zip(xs, flat, strict=True))
                    w, alpha, error = _fit_linear(pairs[: len(train)], pairs[len(train) :])
                    fitted[layer] = FittedReplacement(
                        kind, {"proj.weight": w.T.float().cpu().contiguous()}, alpha=alpha, held_out_error=error
                    )
                substitutes[layer] = _module(model, layer, fitted[layer])
    finally:
        bar.close()
        model.train(was_training)
    seconds = time.perf_counter() - start
    settings = {**calibration.to_dict(), "held_out": sum(batch.shape[0] for batch in val)}
    logger.info("Fitted %s replacements for layers %s in %.1f s", kind, layers, seconds)
    return ReplacementFit(kind=kind, layers=fitted, seconds=seconds, calibration=settings)


@contextmanager
def replaced_attention(model: "PreTrainedModel", fit: ReplacementFit):
    """Within the block, each fitted layer of `fit` adds its replacement's output instead of its attention update
    (the attention still runs, its output discarded): for a forward pass without KV cache, numerically what the
    layer pruned with this replacement computes, without touching the weights (`evaluation.compare`)."""
    with _substituted(model, {layer: _module(model, layer, fitted) for layer, fitted in fit.layers.items()}):
        yield


def replacement_recovery(
    model: "PreTrainedModel",
    fit: ReplacementFit,
    windows: "torch.Tensor",
    *,
    source: str = "token ids",
    progress: bool = False,
) -> dict:
    """Mean KL divergence of the next-token distributions from `model`'s (as given, before the removal) with the
    fitted layers removed plainly and with their replacements, on `windows` (`[n, length]` token ids the fit did
    not use); `progress` shows a tqdm bar over the windows (three forward passes each).

    Returns:
        `{"kl_without": ..., "kl_with": ..., "tokens": ..., "source": source}` (nats per position).
    """
    import torch
    from tqdm.auto import tqdm

    device = model.get_input_embeddings().weight.device
    sums = {"kl_without": 0.0, "kl_with": 0.0}
    positions = 0
    live = {layer: _module(model, layer, fitted) for layer, fitted in fit.layers.items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for window in tqdm(windows.split(1), desc="Held-out KL check", unit="sequence", disable=not progress):
                window = window.to(device)
                reference = torch.log_softmax(model(input_ids=window, use_cache=False).logits.float(), dim=-1)
                for name, substitutes in (("kl_without", dict.fromkeys(live)), ("kl_with", live)):
                    with _substituted(model, substitutes):
                        logits = model(input_ids=window, use_cache=False).logits.float()
                    log_probs = torch.log_softmax(logits, dim=-1)
                    kl = (reference.exp() * (reference - log_probs)).sum(-1)
                    sums[name] += float(kl.double().sum())
                positions += window.numel()
    finally:
        model.train(was_training)
    return {name: value / positions for name, value in sums.items()} | {"tokens": positions, "source": source}


def layer_replaceability(model: "PreTrainedModel", calibration: "Calibration") -> tuple[list[float], list[float]]:
    """How well a linear map could stand in for each attention sublayer of `model` (unpruned, on the CPU), judged on
    the held-out quarter of `calibration`'s windows (at least two windows).

    Returns:
        Per layer: the mean `1 - cos` between the residual stream after the sublayer and the stream with its ridge map
        (fitted on the training windows alone) in its place, on the held-out windows; and the map's held-out
        unexplained share of the sublayer's output energy, as `fit_replacements` chooses its ridge strength.
    """
    import torch

    train, val = _split(calibration)
    if not val:
        raise InvalidConfigError(f"layer_replaceability needs at least 2 calibration windows, got {len(train)}")
    layers, cpu = list(range(model.config.num_hidden_layers)), torch.device("cpu")
    replaced_cos, unexplained = [], []
    with torch.no_grad():
        targets = _targets(model, layers, train + val, cpu)
        streams = [model(batch, output_hidden_states=True).hidden_states for batch in val]  # [l]: input of layer l
        for layer in layers:
            xs = _normed_inputs(model, layer, train + val, {}, cpu)
            pairs = list(zip(xs, [y.reshape(-1, y.shape[-1]) for y in targets.pop(layer)], strict=True))
            _, alpha, error = _fit_linear(pairs[: len(train)], pairs[len(train) :])
            xtx = sum(x.T @ x for x, _ in pairs[: len(train)])
            xty = sum(x.T @ y.to(x.dtype) for x, y in pairs[: len(train)])
            w = _ridge(xtx, xty, alpha)  # the training windows only: the held-out ones judge it
            distances = []
            for (x, y), hidden in zip(pairs[len(train) :], streams, strict=True):
                stream = hidden[layer].reshape(-1, hidden[layer].shape[-1]).double()
                true, approx = stream + y.double(), stream + x @ w
                distances.append(1 - torch.nn.functional.cosine_similarity(true, approx, dim=-1))
            replaced_cos.append(float(torch.cat(distances).mean()))
            unexplained.append(float(error))
    return replaced_cos, unexplained
