"""How far a model's next-token distributions are from a reference's: KL divergence and top-1 agreement.

At every scored position `t` (the positions perplexity scores, see `optimum_gatenorm.evaluation.perplexity`), with
`p = softmax(reference logits)` and `q = softmax(model logits)` over the vocabulary:

- `KL_t = KL(p || q) = sum_v p_v (log p_v - log q_v)`, in nats: the extra code length the model pays, on average,
  for text drawn from the reference. 0 exactly when both distributions agree.
- `top1_t = [argmax q == argmax p]`: whether both would pick the same next token greedily.

A run reports the mean and the 99th percentile of `KL_t` (linear interpolation between the two nearest ranks, as
numpy's default and llama.cpp's `perplexity --kl-divergence`) and the share of positions with `top1_t`: the
numbers llama.cpp reports for quantised models ("Mean KLD", "99.0% KLD", "Same top p"). The log-softmax runs in
float64 on a few positions at a time, so memory stays at one window's logits of each model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..checkpoints.hub import parse_hub_id
from ..checkpoints.modeling import load_tokenizer
from ..checkpoints.models import BUILTIN_MODELS, builtin_alias, resolve_model
from ..checkpoints.tensors import inspect_checkpoint
from ..compat import require_onnxruntime
from ..errors import InvalidConfigError, ModelNotFoundError
from ..text import bos_prefix
from .loading import is_onnx_dir


if TYPE_CHECKING:
    import torch

__all__ = [
    "TokenTally",
    "check_same_tokens",
    "check_same_vocabulary",
    "model_directory",
    "open_reference_pair",
    "percentile",
    "resolve_reference",
    "token_log_probs",
]

# Elements of one float64 log-softmax chunk (positions x vocabulary): 32 MB, whatever the vocabulary.
_CHUNK_ELEMENTS = 1 << 22


def percentile(values: "torch.Tensor | Sequence[float]", fraction: float) -> float:
    """The `fraction` quantile of `values`, interpolating linearly between the nearest ranks (numpy's default).

    Raises:
        ValueError: If `values` is empty or `fraction` is outside [0, 1].
    """
    import torch

    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    ordered = torch.as_tensor(values, dtype=torch.float64).flatten().sort().values
    if ordered.numel() == 0:
        raise ValueError("percentile of no values")
    position = fraction * (ordered.numel() - 1)
    low = math.floor(position)
    high = min(low + 1, ordered.numel() - 1)
    weight = position - low
    return float((1 - weight) * ordered[low] + weight * ordered[high])


def token_log_probs(logits: "torch.Tensor", start: int, stop: int) -> "torch.Tensor":
    """`log_softmax` in float64 of rows `start:stop` of a `[positions, vocabulary]` logits tensor."""
    import torch

    return torch.log_softmax(logits[start:stop].to(torch.float64), dim=-1)


@dataclass
class TokenTally:
    """Running sums over scored positions: NLL of the targets and, against a reference, KL and top-1 agreement.

    `add` takes one window's logits at a time; nothing but one float per position (its KL) is kept.
    """

    nll_sum: float = 0.0  # a Python float is float64
    count: int = 0
    agree: int = 0
    kl_sum: float = 0.0
    kl_values: list = field(default_factory=list)  # one float64 tensor per window
    compared: bool = False

    def add(
        self,
        logits: "torch.Tensor",
        targets: "torch.Tensor",
        reference_logits: "torch.Tensor | None" = None,
    ) -> None:
        """Scores `[n, vocabulary]` logits predicting `targets` (`[n]`), and compares them with a reference's.

        Raises:
            InvalidConfigError: If the reference's logits have another shape (another vocabulary).
        """
        import torch

        if reference_logits is not None and reference_logits.shape != logits.shape:
            raise InvalidConfigError(
                f"the reference's logits have shape {tuple(reference_logits.shape)}, the model's "
                f"{tuple(logits.shape)}: compare models with the same vocabulary"
            )
        targets = targets.to(logits.device)
        rows = max(1, _CHUNK_ELEMENTS // max(1, logits.shape[-1]))
        kl_parts = []
        for start in range(0, logits.shape[0], rows):
            stop = min(start + rows, logits.shape[0])
            log_q = token_log_probs(logits, start, stop)
            self.nll_sum -= log_q.gather(1, targets[start:stop, None]).sum().item()
            if reference_logits is not None:
                log_p = token_log_probs(reference_logits, start, stop)
                # Rounding can leave a hair below 0 where both agree; KL is never negative.
                kl_parts.append((log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0).cpu())
                self.agree += int((log_q.argmax(-1) == log_p.argmax(-1)).sum())
        self.count += logits.shape[0]
        if reference_logits is not None:
            self.compared = True
            kl = torch.cat(kl_parts)
            self.kl_values.append(kl)
            self.kl_sum += kl.sum().item()

    @property
    def nll(self) -> float:
        """Mean NLL per scored token, in nats."""
        return self.nll_sum / self.count

    @property
    def perplexity(self) -> float:
        # exp overflows float64 past ~709
        return math.exp(self.nll) if self.nll < 700 else math.inf

    def divergence(self) -> dict[str, float | None]:
        """`kl_mean`, `kl_p99`, `kl_max` (nats) and `top1_agreement` (share of positions), `None` if not compared."""
        if not self.compared:
            return {"kl_mean": None, "kl_p99": None, "kl_max": None, "top1_agreement": None}
        import torch

        values = torch.cat(self.kl_values)
        return {
            "kl_mean": self.kl_sum / self.count,
            "kl_p99": percentile(values, 0.99),
            "kl_max": float(values.max()),
            "top1_agreement": self.agree / self.count,
        }


def resolve_reference(reference: str | Path) -> Path:
    """The directory of a `--reference` value: an ONNX export, a checkpoint directory, a `.gguf` file or an alias.

    Raises:
        ModelNotFoundError: If it does not exist (named as the reference, with what to pass instead).
    """
    text = str(reference)
    missing = builtin_alias(text) is None and not Path(text).expanduser().exists()
    if missing and parse_hub_id(text) is None:
        aliases = ", ".join(sorted(BUILTIN_MODELS))
        raise ModelNotFoundError(
            f"reference model {text!r} not found: pass the unpruned model's directory, its ONNX export, a .gguf "
            f"file, a built-in alias ({aliases}) or a hub id (ORG/NAME)"
        )
    return Path(text).expanduser() if is_onnx_dir(text) else resolve_model(reference)


def _vocab_size(directory: Path) -> int | None:
    try:
        data = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a missing or broken config.json is named by the checkpoint checks
    value = data.get("vocab_size") or data.get("text_config", {}).get("vocab_size")
    return value if isinstance(value, int) else None


def check_same_vocabulary(model_dir: Path, model_tokenizer, reference_dir: Path, reference_tokenizer) -> None:
    """Refuses a reference whose next-token distributions cannot be compared with the model's, token for token.

    Compares `vocab_size` in both `config.json` files (the width of the logits), the tokenizers' vocabularies
    (every token string and id), their BOS/EOS ids and whether they put BOS in front of text. The tokens of the
    evaluated text itself are compared by the caller once it has read them.

    Raises:
        InvalidConfigError: On the first difference, in one line naming both values.
    """
    fix = "KL divergence compares the two models' next-token distributions token by token: pass the unpruned model "
    fix += "this one was made from (or its ONNX export), with the same tokenizer"
    sizes = _vocab_size(model_dir), _vocab_size(reference_dir)
    if sizes[0] != sizes[1]:
        raise InvalidConfigError(
            f"the reference {reference_dir} has vocab_size={sizes[1]}, the model {model_dir} vocab_size={sizes[0]}; "
            + fix
        )
    vocab, reference_vocab = model_tokenizer.get_vocab(), reference_tokenizer.get_vocab()
    if vocab != reference_vocab:
        differing = sorted(set(vocab.items()) ^ set(reference_vocab.items()), key=lambda item: item[1])
        example = f" (e.g. {differing[0][0]!r} -> {differing[0][1]})" if differing else ""
        raise InvalidConfigError(
            f"the reference {reference_dir} has another tokenizer than the model {model_dir}: {len(reference_vocab)} "
            f"vs {len(vocab)} tokens, {len(differing)} (token, id) pairs differ{example}; " + fix
        )
    for name in ("bos_token_id", "eos_token_id"):
        a, b = getattr(model_tokenizer, name), getattr(reference_tokenizer, name)
        if a != b:
            raise InvalidConfigError(
                f"the reference {reference_dir} has {name}={b}, the model {model_dir} {name}={a}; " + fix
            )
    if bos_prefix(model_tokenizer) != bos_prefix(reference_tokenizer):
        raise InvalidConfigError(
            f"the tokenizers of the model {model_dir} and the reference {reference_dir} disagree on putting BOS in "
            "front of text; " + fix
        )


def model_directory(path: str | Path) -> Path:
    """The directory of a model path, validated without loading weights: an ONNX export (the onnxruntime extra
    must be installed) or a checkpoint (`resolve_model`, then `inspect_checkpoint`)."""
    if is_onnx_dir(path):
        directory = Path(path)
        require_onnxruntime(f"running the ONNX export {directory}")  # before the tokenizer
        return directory
    directory = resolve_model(path)
    inspect_checkpoint(directory)  # a missing config.json or weights is named before the tokenizer
    return directory


def open_reference_pair(model_path: str | Path, reference_path: str | Path):
    """Checks a model and its reference before either loads: both exist, both are valid, same vocabulary.

    Returns:
        `(model_dir, model_tokenizer, reference_dir, reference_tokenizer)`.

    Raises:
        ModelNotFoundError: If either path does not exist.
        InvalidCheckpointError: If either has no config, weights or tokenizer.
        InvalidConfigError: If their vocabularies or tokenizers differ (`check_same_vocabulary`).
    """
    directory = model_directory(model_path)
    reference_dir = model_directory(resolve_reference(reference_path))
    tokenizer = load_tokenizer(directory)
    reference_tokenizer = load_tokenizer(reference_dir)
    check_same_vocabulary(directory, tokenizer, reference_dir, reference_tokenizer)
    return directory, tokenizer, reference_dir, reference_tokenizer


def check_same_tokens(text: str, tokenizer, reference_tokenizer, reference: str | Path) -> None:
    """Refuses a reference whose tokenizer splits `text` into other tokens than the model's.

    Raises:
        InvalidConfigError: At the first differing token.
    """
    a = tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    b = reference_tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    if a != b:
        where = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        raise InvalidConfigError(
            f"the reference {reference} tokenizes the text differently from the model ({len(b)} vs {len(a)} tokens, "
            f"first difference at token {where}); pass the unpruned model this one was made from, with the same "
            "tokenizer"
        )
