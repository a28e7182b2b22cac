"""One model's evaluation in one call, what `optimum-cli gatenorm eval` runs: perplexity on a text (with KL
divergence and top-1 agreement against a reference), the long-context retrieval suite, and chat fidelity against
the reference; each only when asked for, in that order, with one JSON document and one table for all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidConfigError
from ..exporters.onnx import check_cuda_available
from ..params import ANY, param
from ..validation import check_choice
from .chat import ChatFidelityResult, evaluate_chat_fidelity
from .perplexity import PerplexityResult, evaluate_perplexity
from .retrieval import RetrievalConfig, RetrievalResult, evaluate_retrieval


if TYPE_CHECKING:
    import torch

__all__ = ["DTYPES", "ModelEvaluation", "evaluate_model"]

DTYPES = ("auto", "float32", "float16", "bfloat16")  # the names `evaluate_model` takes for a dtype


@dataclass
class ModelEvaluation:
    """What `evaluate_model` measured; `None` for what it was not asked.

    Args:
        perplexity: Perplexity on the text (and the divergence from the reference, when one was given).
        retrieval: Right cases of the long-context retrieval suite.
        chat: How far the model's chat answers agree with the reference's.
    """

    perplexity: PerplexityResult | None = None
    retrieval: RetrievalResult | None = None
    chat: ChatFidelityResult | None = None

    def to_dict(self) -> dict[str, Any]:
        """The perplexity result's fields (an infinite perplexity as `None`), with `retrieval` and `chat` added;
        without a text, the retrieval result's fields with `chat` added."""
        data: dict[str, Any] = {}
        if self.perplexity is not None:
            data = json.loads(self.perplexity.to_json())  # to_json writes an infinite perplexity as null
        if self.retrieval is not None:
            data = {**data, "retrieval": self.retrieval.to_dict()} if data else self.retrieval.to_dict()
        if self.chat is not None:
            data["chat"] = self.chat.to_dict()
        return data

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_table(self) -> str:
        """The tables of what was measured, one after the other."""
        parts = (self.perplexity, self.retrieval, self.chat)
        return "\n\n".join(part.to_table() for part in parts if part is not None)


def evaluate_model(
    model_path: str | Path,
    text_path: str | Path | None = None,
    *,
    reference: str | Path | None = None,
    chat: bool = False,
    retrieval: RetrievalConfig | None = None,
    window: int = 512,
    stride: int | None = None,
    max_tokens: int | None = None,
    bos: bool | None = None,
    dtype: "str | torch.dtype" = "auto",
    provider: str = "cpu",
    progress: bool = False,
) -> ModelEvaluation:
    """Evaluates a model (a checkpoint, pruned or not, an ONNX export, a `.gguf` file or a built-in alias).

    Args:
        model_path: The model.
        text_path: A UTF-8 text file to measure perplexity on (`evaluate_perplexity`), or `None`.
        reference: A model to compare with, typically the unpruned one: with a text, adds the KL divergence and
            top-1 agreement on it; with `chat`, the model it is compared with.
        chat: Ask both models a few fixed chat prompts and report how far the answers agree
            (`evaluate_chat_fidelity`); needs `reference`.
        retrieval: Run the long-context retrieval suite with this configuration (`evaluate_retrieval`), or `None`.
        window, stride, max_tokens, bos: The perplexity's windowing (`evaluate_perplexity`).
        dtype: A torch dtype or its name (`"float32"`, ...) for a PyTorch model; `"auto"`: the checkpoint's.
        provider: `"cpu"`, `"cuda"` (checked before any work) or `"auto"`: onnxruntime's execution provider for an
            ONNX export, the device for PyTorch.
        progress: Show progress bars.

    Raises:
        InvalidConfigError: Nothing to evaluate, `chat` without a reference (or a reference with neither a text
            nor `chat`), an unknown dtype name, CUDA unavailable, or what the evaluations raise
            (`evaluate_perplexity`, `evaluate_retrieval`, `evaluate_chat_fidelity`).
        ModelNotFoundError: If the model, the reference or the text file does not exist.
    """
    if text_path is None and retrieval is None:
        raise InvalidConfigError(
            f"nothing to evaluate: pass {param('text_path', ANY)} (perplexity) or {param('retrieval', ANY)} "
            "(long-context retrieval)"
        )
    if chat and reference is None:
        raise InvalidConfigError(
            f"{param('chat', True)} compares answers with a reference model; add {param('reference', ANY)}"
        )
    if reference is not None and text_path is None and not chat:
        raise InvalidConfigError(
            f"{param('reference')} is used on a text (KL divergence) or with {param('chat', True)}: add "
            f"{param('text_path', ANY)} or {param('chat', True)}"
        )
    if isinstance(dtype, str) and check_choice("dtype", dtype, DTYPES) != "auto":
        import torch

        dtype = getattr(torch, dtype)
    if provider == "cuda":
        check_cuda_available()
    result = ModelEvaluation()
    if text_path is not None:
        result.perplexity = evaluate_perplexity(
            model_path,
            text_path,
            window=window,
            stride=stride,
            max_tokens=max_tokens,
            dtype=dtype,
            provider=provider,
            progress=progress,
            bos=bos,
            reference=reference,
        )
    if retrieval is not None:
        result.retrieval = evaluate_retrieval(model_path, retrieval, dtype=dtype, provider=provider, progress=progress)
    if chat:
        result.chat = evaluate_chat_fidelity(model_path, reference, dtype=dtype, provider=provider)
    return result
