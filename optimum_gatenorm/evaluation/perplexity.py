"""Perplexity of a causal LM (PyTorch, pruned or not, or an ONNX export on onnxruntime) on any text file.

Windowing scheme (the same for both backends):

1. The whole text is tokenized once with `add_special_tokens=False`: no BOS (or any other special token) is added,
   so the score does not depend on a tokenizer's BOS setting and is the same for PyTorch and ONNX. The token ids
   are then cut to the first `max_tokens`, if given. Call the result `ids`, of length `N`.
2. Windows start at `0, stride, 2 * stride, ...`; window `k` covers `ids[k * stride : k * stride + window]`
   (cut at `N`). The last window is the first one that reaches the end of the text. `stride=None` means
   `stride = window`: non-overlapping windows.
3. Every token is scored at most once, in the first window that holds it with some context before it: window `k`
   scores its tokens from position `max(start_k + 1, end_{k-1})` to its end, each predicted from the tokens of the
   same window before it. With `stride = window` each window therefore scores its tokens 2..n (the first token of
   every window has no context and is not scored: `N - number_of_windows` tokens in all). With `stride < window`,
   the first window scores its tokens 2..n and each later window scores only its last `stride` tokens (fewer in
   the final window), with at least `window - stride` tokens of context: `N - 1` tokens in all. This is the
   sliding-window scheme of the transformers perplexity guide.
4. Perplexity is `exp(mean NLL)` over the scored tokens, with the NLL summed in float64.

Each window runs as one batch-of-one forward pass with an all-ones attention mask and no KV cache.

With `bos=True` every window is run with the tokenizer's BOS token in front of it, as extra context only: the
same tokens are scored. Models trained to always see a BOS first (Gemma) need it; without it Gemma-3-270M's
perplexity is several times higher. The default, `bos=None`, does what the tokenizer does when it encodes text
(`optimum_gatenorm.text.bos_prefix`): BOS for Gemma and SmolLM2, whose tokenizers add it; none for a tokenizer
that adds none.

With a `reference` model, the same windows (same tokens, same BOS rule) also run through the reference, and each
scored position compares the two next-token distributions: mean and 99th-percentile KL(reference || model) and the
share of positions where both pick the same top token (`optimum_gatenorm.evaluation.divergence`). One window's
logits of each model are held at a time, never the whole text's.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checkpoints.modeling import load_tokenizer
from ..errors import InvalidConfigError
from ..params import param
from ..serialization import JSONMixin
from ..text import bos_prefix, read_text, read_text_for_tokens
from ..validation import check_int
from ..version import __version__
from .divergence import TokenTally, check_same_tokens, model_directory, open_reference_pair
from .loading import is_onnx_dir, load_causal_lm, ort_provider


if TYPE_CHECKING:
    import torch

__all__ = [
    "PerplexityResult",
    "check_window_in_config",
    "check_windowing",
    "evaluate_perplexity",
    "format_perplexity_table",
    "perplexity",
    "score_windows",
    "windows",
]

logger = logging.getLogger(__name__)

BACKENDS = ("pytorch", "onnxruntime")


@dataclass
class PerplexityResult(JSONMixin):
    """The perplexity of one model on one text.

    Args:
        perplexity: `exp(nll)`.
        nll: Mean negative log-likelihood per scored token, in nats.
        num_tokens: Tokens scored (see the module docstring for which).
        num_windows: Forward passes run.
        seconds: Wall-clock time of the forward passes and scoring (not of loading).
        window: Window length in tokens.
        stride: Start-to-start distance of windows (`window` for non-overlapping windows).
        max_tokens: The cap on text tokens, or `None`.
        text_tokens: Tokens of the text that were evaluated (after the `max_tokens` cap).
        backend: `"pytorch"` or `"onnxruntime"`.
        model: The model path, or `None` for an in-memory model.
        text_file: The text file, or `None` when the text was passed as a string.
        bos: Whether each window was run with the BOS token in front of it.
        reference: The reference model's path (`""` for an in-memory one), or `None` when none was compared.
        reference_backend: `"pytorch"` or `"onnxruntime"` for the reference.
        reference_perplexity: The reference's perplexity on the same windows.
        kl_mean: Mean over scored positions of KL(reference || model) of the next-token distributions, in nats.
        kl_p99: Its 99th percentile (linear interpolation between ranks).
        kl_max: Its largest value.
        top1_agreement: Share of scored positions where the model's most likely next token is the reference's.
        warning: Why the number is not meaningful (too few tokens, a single window), or `None`.
    """

    perplexity: float
    nll: float
    num_tokens: int
    num_windows: int
    seconds: float
    window: int
    stride: int
    max_tokens: int | None
    text_tokens: int
    backend: str
    model: str | None = None
    text_file: str | None = None
    bos: bool = False
    reference: str | None = None
    reference_backend: str | None = None
    reference_perplexity: float | None = None
    kl_mean: float | None = None
    kl_p99: float | None = None
    kl_max: float | None = None
    top1_agreement: float | None = None
    warning: str | None = None

    def __post_init__(self):
        assert self.backend in BACKENDS, self.backend
        assert self.reference_backend in (None, *BACKENDS), self.reference_backend

    def to_dict(self) -> dict[str, Any]:
        """The fields, plus the package version that computed them."""
        return {**asdict(self), "gatenorm_version": __version__}

    def to_json(self, indent: int | None = 2) -> str:
        # exp() of a huge NLL is inf, which json writes as the non-standard `Infinity`: write null instead.
        data = self.to_dict()
        for name in ("perplexity", "reference_perplexity"):
            if data[name] is not None and not math.isfinite(data[name]):
                data[name] = None
        return json.dumps(data, indent=indent)

    def to_table(self) -> str:
        """A short text table of this result (see `format_perplexity_table`)."""
        return format_perplexity_table([self])


def format_perplexity_table(results: Sequence[PerplexityResult], names: Sequence[str] | None = None) -> str:
    """A plain-text table with one row per result: name, backend, perplexity, NLL, tokens, windows, seconds.

    Results compared with a reference add the columns `kl_mean`, `kl_p99` (nats) and `top1` (agreement), and a
    line per reference with its perplexity on the same windows.

    Args:
        results: The results to show.
        names: Row labels (default: each result's model path, or `"model"`).
    """
    if names is not None and len(names) != len(results):
        raise InvalidConfigError(f"got {len(names)} names for {len(results)} results")
    labels = list(names) if names is not None else [r.model or "model" for r in results]
    compared = any(r.kl_mean is not None for r in results)
    header = ("model", "backend", "perplexity", "nll", "tokens", "windows", "seconds")
    if compared:
        header += ("kl_mean", "kl_p99", "top1")
    rows = []
    for label, r in zip(labels, results, strict=True):
        row = (
            label,
            r.backend,
            f"{r.perplexity:.4f}",
            f"{r.nll:.5f}",
            str(r.num_tokens),
            str(r.num_windows),
            f"{r.seconds:.2f}",
        )
        if compared:
            row += (
                ("-", "-", "-")
                if r.kl_mean is None
                else (f"{r.kl_mean:.5f}", f"{r.kl_p99:.5f}", f"{r.top1_agreement:.4f}")
            )
        rows.append(row)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells):
        # Left-align the text columns, right-align the numbers.
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    lines = [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]
    if results:
        settings = {(r.window, r.stride, r.max_tokens) for r in results}
        if len(settings) == 1:
            window, stride, max_tokens = settings.pop()
            cap = f", max_tokens={max_tokens}" if max_tokens is not None else ""
            lines.append(f"(window={window}, stride={stride}{cap})")
    references = {}
    for r in results:
        if r.kl_mean is not None:
            where = r.reference or "an in-memory model"
            references.setdefault((where, r.reference_backend, r.reference_perplexity), None)
    if references:
        lines.append("kl_mean, kl_p99: KL(reference || model) of the next-token distributions, in nats")
        lines.append("top1: share of scored tokens where both models' most likely next token is the same")
    for where, backend, value in references:
        lines.append(f"reference: {where} ({backend}), perplexity {value:.4f} on the same tokens")
    return "\n".join(lines)


def check_windowing(window: int, stride: int | None, max_tokens: int | None) -> int:
    """Validates the windowing options and returns the effective stride.

    Raises:
        InvalidConfigError: If `window < 2`, `stride < 1`, `stride > window` or `max_tokens < 2`.
    """
    check_int("window", window, 2)
    if stride is None:
        stride = window
    check_int("stride", stride, 1)
    if stride > window:
        raise InvalidConfigError(
            f"stride={stride} is larger than window={window}: tokens between windows would never be scored; "
            "use a stride <= window"
        )
    if max_tokens is not None:
        check_int("max_tokens", max_tokens, 2)
    return stride


def windows(num_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """The windows of the scheme in the module docstring, as `(start, end, first_scored)` token positions.

    Window `ids[start:end]` is run through the model and the tokens at positions `first_scored .. end - 1` are
    scored. Windows that would score nothing (a final window of a single token) are left out.
    """
    spans = []
    previous_end = 0
    start = 0
    while previous_end < num_tokens:
        end = min(start + window, num_tokens)
        first = max(start + 1, previous_end)
        if first < end:
            spans.append((start, end, first))
        previous_end = end
        start += stride
    return spans


def _max_positions(model) -> int | None:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _backend(model) -> str:
    try:
        from optimum.onnxruntime import ORTModel
    except ImportError:  # onnxruntime is an optional extra
        return "pytorch"
    return "onnxruntime" if isinstance(model, ORTModel) else "pytorch"


def forward_logits(model) -> "Callable[[torch.Tensor], torch.Tensor]":
    """`input_ids -> logits` of a batch-of-one window: all-ones attention mask, no KV cache (PyTorch or ORT)."""
    import torch

    device = getattr(model, "device", None)

    def run(input_ids: "torch.Tensor") -> "torch.Tensor":
        if device is not None:
            input_ids = input_ids.to(device)
        return model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False).logits

    return run


def check_window_fits(model, window: int, prefix_length: int) -> None:
    """Refuses a window (plus the BOS prefix) longer than the model's maximum positions."""
    limit = _max_positions(model)
    if limit is not None and window + prefix_length > limit:
        raise InvalidConfigError(
            f"window={window} is longer than the model's {limit} positions; use a window <= {limit}"
        )


@dataclass
class WindowScores:
    """What `score_windows` returns: one tally per run, the reference's, and the windowing as resolved."""

    tallies: list[TokenTally]
    reference: TokenTally | None
    num_windows: int
    text_tokens: int
    stride: int
    bos: bool
    seconds: float


def score_windows(
    runs: Sequence["Callable[[torch.Tensor], torch.Tensor]"],
    tokenizer,
    text: str,
    *,
    reference: "Callable[[torch.Tensor], torch.Tensor] | None" = None,
    window: int = 512,
    stride: int | None = None,
    max_tokens: int | None = None,
    bos: bool | None = None,
    progress: bool = False,
    progress_label: str = "perplexity",
    device=None,
) -> WindowScores:
    """The windows of the module docstring, each run through every `runs` function (and `reference`, once).

    The core of `perplexity` and of `compare`: every run is scored on the same tokens and, if a reference is
    given, compared with the reference's logits of the same window (computed once per window and shared by all
    runs). Only one window's logits are alive at a time.

    Args:
        runs: Functions `input_ids [1, T] -> logits [1, T, vocabulary]` (see `forward_logits`), e.g. one model, or
            one model under several masks.
        tokenizer: The tokenizer of every run.
        text: The text to score.
        reference: The reference's forward function, or `None`.
        window: As in `perplexity`.
        stride: As in `perplexity`.
        max_tokens: As in `perplexity`.
        bos: As in `perplexity`.
        progress: A tqdm bar over the windows.
        progress_label: The bar's label.
        device: Where input ids go (default: the CPU).

    Raises:
        InvalidConfigError: Bad windowing options, or a text of fewer than 2 tokens.
    """
    import torch

    stride = check_windowing(window, stride, max_tokens)
    prefix = bos_prefix(tokenizer, bos)
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise InvalidConfigError(f"the text has {len(ids)} token(s); perplexity needs at least 2 (pass a longer text)")
    ids = torch.tensor(ids, dtype=torch.long)
    spans = windows(len(ids), window, stride)
    device = device if device is not None else torch.device("cpu")

    if progress:
        from tqdm.auto import tqdm

        spans_iter = tqdm(spans, desc=progress_label, unit="window")
    else:
        spans_iter = spans

    tallies = [TokenTally() for _ in runs]
    reference_tally = TokenTally() if reference is not None else None
    begin = time.perf_counter()
    with torch.inference_mode():
        for start, end, first in spans_iter:
            input_ids = torch.cat([torch.tensor(prefix, dtype=torch.long), ids[start:end]]).unsqueeze(0).to(device)
            # Logits at position p predict the token at p + 1: positions first-1 .. end-2 predict first .. end-1
            # (shifted by the BOS prefix, if any).
            offset = len(prefix) - start
            rows = slice(first - 1 + offset, end - 1 + offset)
            targets = ids[first:end]
            reference_logits = None
            if reference is not None:
                reference_logits = reference(input_ids)[0, rows]
                reference_tally.add(reference_logits, targets)
            for run, tally in zip(runs, tallies, strict=True):
                logits = run(input_ids)[0, rows]
                tally.add(logits, targets, None if reference_logits is None else reference_logits.to(logits.device))
                del logits
    return WindowScores(
        tallies=tallies,
        reference=reference_tally,
        num_windows=len(spans),
        text_tokens=len(ids),
        stride=stride,
        bos=bool(prefix),
        seconds=time.perf_counter() - begin,
    )


def perplexity(
    model,
    tokenizer,
    text: str,
    *,
    window: int = 512,
    stride: int | None = None,
    max_tokens: int | None = None,
    progress: bool = False,
    model_name: str | None = None,
    text_file: str | None = None,
    bos: bool | None = None,
    reference=None,
    reference_name: str | None = None,
) -> PerplexityResult:
    """Perplexity of `model` on `text`, with the windowing scheme of the module docstring.

    Args:
        model: A transformers causal LM (pruned or not) or an `optimum.onnxruntime.ORTModelForCausalLM`.
        tokenizer: The model's tokenizer.
        text: The text to score.
        window: Tokens per forward pass (at most the model's maximum positions).
        stride: Start-to-start distance of windows; `None` for non-overlapping windows (`stride = window`).
        max_tokens: Evaluate only the first `max_tokens` tokens of the text.
        progress: Show a tqdm progress bar over the windows.
        model_name: Recorded as `PerplexityResult.model`.
        text_file: Recorded as `PerplexityResult.text_file`.
        bos: Run each window with the tokenizer's BOS token in front of it (context only; the same tokens are
            scored); `None`: if the tokenizer adds one when it encodes text.
        reference: A second model (PyTorch or ORT) with the same tokenizer, e.g. the unpruned one: the same
            windows run through it too, and the result carries `kl_mean`, `kl_p99`, `kl_max`, `top1_agreement`
            and `reference_perplexity` (see `optimum_gatenorm.evaluation.divergence`). `seconds` then counts both
            models' forward passes.
        reference_name: Recorded as `PerplexityResult.reference` (default `""` for an in-memory reference).

    Raises:
        InvalidConfigError: Bad windowing options, a window longer than the model's maximum positions, a text
            of fewer than 2 tokens, `bos=True` with a tokenizer that has no BOS token, or a reference with another
            vocabulary size.
    """
    import torch

    check_windowing(window, stride, max_tokens)
    prefix = bos_prefix(tokenizer, bos)
    check_window_fits(model, window, len(prefix))
    if reference is not None:
        check_window_fits(reference, window, len(prefix))
        sizes = [getattr(getattr(m, "config", None), "vocab_size", None) for m in (model, reference)]
        if sizes[0] != sizes[1]:
            raise InvalidConfigError(
                f"the reference has vocab_size={sizes[1]}, the model {sizes[0]}: KL divergence needs the same "
                "vocabulary; pass the unpruned model this one was made from"
            )
    scores = score_windows(
        [forward_logits(model)],
        tokenizer,
        text,
        reference=forward_logits(reference) if reference is not None else None,
        window=window,
        stride=stride,
        max_tokens=max_tokens,
        bos=bos,
        progress=progress,
        device=getattr(model, "device", torch.device("cpu")),
    )
    tally = scores.tallies[0]
    logger.info(
        "Perplexity %.4f over %d tokens in %d windows (%.1f s)",
        tally.perplexity,
        tally.count,
        scores.num_windows,
        scores.seconds,
    )
    return _result(
        tally,
        scores,
        backend=_backend(model),
        window=window,
        max_tokens=max_tokens,
        model=model_name,
        text_file=text_file,
        reference=None if reference is None else (reference_name or ""),
        reference_backend=None if reference is None else _backend(reference),
    )


def _result(
    tally: TokenTally, scores: WindowScores, *, backend: str, window: int, max_tokens: int | None, **extra
) -> PerplexityResult:
    """A `PerplexityResult` of one run of `score_windows`."""
    divergence = tally.divergence() if extra.get("reference") is not None else {}
    return PerplexityResult(
        perplexity=tally.perplexity,
        nll=tally.nll,
        num_tokens=tally.count,
        num_windows=scores.num_windows,
        seconds=scores.seconds,
        window=window,
        stride=scores.stride,
        max_tokens=max_tokens,
        text_tokens=scores.text_tokens,
        backend=backend,
        bos=scores.bos,
        reference_perplexity=scores.reference.perplexity if scores.reference is not None else None,
        warning=meaningless(tally.count, scores.num_windows),
        **divergence,
        **extra,
    )


MIN_MEANINGFUL_TOKENS = 100


def meaningless(scored: int, num_windows: int) -> str | None:
    """Why a perplexity over `scored` tokens in `num_windows` windows means little, or `None` if it is fine."""
    if scored < MIN_MEANINGFUL_TOKENS:
        return (
            f"perplexity over {scored} token(s) is not meaningful (fewer than {MIN_MEANINGFUL_TOKENS}); evaluate "
            "on a longer text, thousands of tokens"
        )
    if num_windows == 1:
        return (
            f"one window of {scored} tokens: a single sample, not meaningful for comparing models; use a longer "
            f"text or a shorter {param('window')}"
        )
    return None


def check_window_in_config(directory: str | Path, window: int) -> None:
    """Refuses, from `config.json` alone (before any model loads), a window longer than the model's positions.

    Raises:
        InvalidConfigError: If `window` exceeds `max_position_embeddings` (or `n_positions`).
    """
    try:
        config = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # the loader names what is wrong with the checkpoint
    config = config.get("text_config", config) if isinstance(config, dict) else {}
    for name in ("max_position_embeddings", "n_positions"):
        limit = config.get(name)
        if isinstance(limit, int) and limit > 0:
            if window > limit:
                raise InvalidConfigError(
                    f"window={window} is longer than the model's {limit} positions; use a window <= {limit}"
                )
            return


def evaluate_perplexity(
    model_path: str | Path,
    text_path: str | Path,
    *,
    window: int = 512,
    stride: int | None = None,
    max_tokens: int | None = None,
    dtype: "str | torch.dtype" = "auto",
    provider: str = "cpu",
    progress: bool = False,
    bos: bool | None = None,
    reference: str | Path | None = None,
) -> PerplexityResult:
    """Loads a model and its tokenizer and returns its perplexity on a text file.

    Args:
        model_path: An ONNX export directory (one with `model.onnx`, run by `ORTModelForCausalLM`), or anything
            `load_pruned` accepts: a checkpoint directory (pruned or not), a `.gguf` file, a built-in alias.
        text_path: A UTF-8 text file.
        window: Tokens per forward pass.
        stride: Start-to-start distance of windows; `None` for non-overlapping windows.
        max_tokens: Evaluate only the first `max_tokens` tokens of the text.
        dtype: Torch dtype of a PyTorch model (`"auto"`: the checkpoint's); ignored for ONNX.
        provider: `"cpu"` or `"cuda"`: onnxruntime's execution provider for an ONNX export, the device for PyTorch.
        progress: Show a progress bar over the windows.
        bos: Run each window with the BOS token in front of it (Gemma needs it; see the module docstring);
            `None`: if the tokenizer adds one when it encodes text.
        reference: A model to compare with (typically the unpruned one; same kinds of path as `model_path`, same
            `dtype` and `provider`): adds KL divergence and top-1 agreement on the same windows (see `perplexity`).
            It must have the same vocabulary and tokenizer, checked before either model loads.

    Raises:
        ModelNotFoundError: If the model, the reference or the text file does not exist.
        InvalidConfigError: Bad windowing options; a text file that is binary, not UTF-8, empty or too short; a
            reference with another vocabulary or tokenizer.
        InvalidCheckpointError: If the model directory has no usable tokenizer or its weights are broken.
    """

    check_windowing(window, stride, max_tokens)  # before any loading
    read_text(text_path, max_bytes=1 << 16)  # a missing, binary or empty text fails before the model loads
    if is_onnx_dir(model_path):
        check_window_in_config(model_path, window)  # before the onnxruntime extra is asked for
    if reference is None:
        directory = model_directory(model_path)
        check_window_in_config(directory, window)
        tokenizer = load_tokenizer(directory)
        text = read_text_for_tokens(text_path, tokenizer, max_tokens)
    else:
        directory, tokenizer, reference_dir, reference_tokenizer = open_reference_pair(model_path, reference)
        check_window_in_config(directory, window)
        check_window_in_config(reference_dir, window)
        text = read_text_for_tokens(text_path, tokenizer, max_tokens)
        check_same_tokens(text, tokenizer, reference_tokenizer, reference)
    if is_onnx_dir(directory):
        logger.info("Loading the ONNX model in %s (%s)", directory, ort_provider(provider))
    model, _ = load_causal_lm(directory, provider=provider, dtype=dtype)
    reference_model = None
    if reference is not None:
        reference_model, _ = load_causal_lm(reference_dir, provider=provider, dtype=dtype)
    result = perplexity(
        model,
        tokenizer,
        text,
        window=window,
        stride=stride,
        max_tokens=max_tokens,
        progress=progress,
        model_name=str(model_path),
        text_file=str(text_path),
        bos=bos,
        reference=reference_model,
        reference_name=None if reference is None else str(reference),
    )
    if result.warning:
        logger.warning("warning: %s", result.warning)
    return result
