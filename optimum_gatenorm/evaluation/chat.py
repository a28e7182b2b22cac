"""Chat fidelity: does a model answer a handful of fixed chat prompts as its reference (the unpruned model) does?

Perplexity on prose can stay close while an instruct model stops answering questions (issue 22: SmolLM2-135M with 4
of 30 attention sublayers removed answers "What is the capital of France?" with Spanish-looking noise). This check
asks each model the same short prompts, through the tokenizer's chat template when it has one (else as plain text),
and decodes greedily (no sampling: the answer is a function of the weights). Each answer pair is scored by:

- `first_sentence_match`: the first sentences (up to the first `.`, `!` or `?` followed by a space or the end, or a
  line break) are equal after trimming white space;
- `token_agreement`: the number of leading tokens both answers share, divided by the longer answer's length (1 when
  the answers are identical, 0 when they differ from the first token);
- `exact_match`: the whole answers are the same tokens.

The result averages each over the prompts. Reference answers can be computed once (`chat_answers`) and reused for
many models, e.g. every point of a `compare` sweep masked in memory.
"""

from __future__ import annotations

import logging
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidConfigError
from ..serialization import JSONMixin
from ..validation import check_int
from ..version import __version__
from .divergence import open_reference_pair


if TYPE_CHECKING:
    import torch

__all__ = [
    "CHAT_PROMPTS",
    "ChatAnswer",
    "ChatFidelityResult",
    "ChatPair",
    "chat_answers",
    "chat_fidelity",
    "eos_token_ids",
    "evaluate_chat_fidelity",
    "first_sentence",
]

logger = logging.getLogger(__name__)

# Short questions a small instruct model answers in one sentence; each has one plainly right answer.
CHAT_PROMPTS = (
    "What is the capital of France?",
    "What is 2 plus 3?",
    "Name the largest planet in our solar system.",
    "What color is the sky on a clear day?",
    "Translate 'thank you' into Spanish.",
    "Write one sentence about the sea.",
)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s|\n")


def first_sentence(text: str) -> str:
    """The text up to its first `.`, `!` or `?` followed by white space, or its first line break; trimmed."""
    text = text.strip()
    return _SENTENCE_END.split(text, maxsplit=1)[0].strip()


@dataclass
class ChatAnswer:
    """A model's greedy answer to one prompt: the new token ids (EOS excluded) and their decoded text."""

    prompt: str
    token_ids: list[int]
    text: str


@dataclass
class ChatPair:
    """One prompt's answers from the model and the reference, and how far they agree (see the module docstring)."""

    prompt: str
    answer: str
    reference_answer: str
    first_sentence_match: bool
    exact_match: bool
    common_prefix_tokens: int
    token_agreement: float

    @classmethod
    def of(cls, answer: ChatAnswer, reference: ChatAnswer) -> "ChatPair":
        if answer.prompt != reference.prompt:
            raise InvalidConfigError(f"answers to different prompts: {answer.prompt!r} vs {reference.prompt!r}")
        a, b = answer.token_ids, reference.token_ids
        common = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        longest = max(len(a), len(b))
        return cls(
            prompt=answer.prompt,
            answer=answer.text,
            reference_answer=reference.text,
            first_sentence_match=first_sentence(answer.text) == first_sentence(reference.text),
            exact_match=a == b,
            common_prefix_tokens=common,
            token_agreement=common / longest if longest else 1.0,
        )


@dataclass
class ChatFidelityResult(JSONMixin):
    """Chat fidelity of a model against a reference: every answer pair and the averages over prompts.

    Args:
        pairs: One `ChatPair` per prompt, in prompt order.
        first_sentence_agreement: Share of prompts whose answers have the same first sentence.
        token_agreement: Mean over prompts of `ChatPair.token_agreement`.
        exact_match: Share of prompts answered with exactly the same tokens.
        max_new_tokens: The answer length cap (answers stop earlier at EOS).
        chat_template: Whether the prompts went through the tokenizer's chat template (else plain text).
        model: The model path, or `None` for an in-memory model.
        reference: The reference path, or `None` for in-memory answers.
        seconds: Wall-clock time of the model's generation (the reference's not included).
    """

    pairs: list[ChatPair]
    first_sentence_agreement: float
    token_agreement: float
    exact_match: float
    max_new_tokens: int
    chat_template: bool
    model: str | None = None
    reference: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The fields, plus the package version that computed them."""
        return {**asdict(self), "gatenorm_version": __version__}

    @classmethod
    def from_dict(cls, data: dict):
        data = dict(data, pairs=[ChatPair(**pair) for pair in data.get("pairs", [])])
        return super().from_dict(data)

    def to_table(self, width: int = 60) -> str:
        """Each prompt with both answers (cut to `width` characters), its scores, and the averages."""

        def cut(text: str) -> str:
            text = " ".join(text.split())
            return text if len(text) <= width else text[: width - 3] + "..."

        lines = []
        for pair in self.pairs:
            lines += [
                f"Q: {pair.prompt}",
                f"  reference: {cut(pair.reference_answer)}",
                f"  model:     {cut(pair.answer)}",
                f"  first sentence {'same' if pair.first_sentence_match else 'differs'}, "
                f"{pair.common_prefix_tokens} tokens in common, token agreement {pair.token_agreement:.2f}",
            ]
        lines.append(
            f"chat fidelity over {len(self.pairs)} prompts: first sentence {self.first_sentence_agreement:.2f}, "
            f"token agreement {self.token_agreement:.2f}, exact {self.exact_match:.2f} "
            f"(greedy, up to {self.max_new_tokens} new tokens, {'chat template' if self.chat_template else 'plain text'})"
        )
        return "\n".join(lines)


def _prompt_ids(tokenizer, prompt: str) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        # the template writes any BOS itself
        return tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return tokenizer(prompt, return_attention_mask=False)["input_ids"]


def chat_answers(
    model,
    tokenizer,
    prompts: Sequence[str] = CHAT_PROMPTS,
    *,
    max_new_tokens: int = 32,
) -> list[ChatAnswer]:
    """Greedy answers of `model` to `prompts` (through the chat template if the tokenizer has one).

    Args:
        model: A transformers causal LM (pruned, masked in memory, or not) or an `ORTModelForCausalLM`.
        tokenizer: Its tokenizer.
        prompts: The user messages, one conversation each.
        max_new_tokens: Answer length cap; generation stops earlier at the model's EOS.

    Raises:
        InvalidConfigError: If `prompts` is empty or `max_new_tokens < 1`.
    """
    import torch

    check_int("max_new_tokens", max_new_tokens, 1)
    if isinstance(prompts, str) or not prompts:
        raise InvalidConfigError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    eos = eos_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    device = getattr(model, "device", torch.device("cpu"))
    answers = []
    for prompt in prompts:
        ids = torch.tensor([_prompt_ids(tokenizer, prompt)], device=device)
        with torch.inference_mode():
            output = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                eos_token_id=eos or None,
                pad_token_id=pad,
            )
        new = output[0, ids.shape[1] :].tolist()
        end = next((i for i, token in enumerate(new) if token in eos), len(new))
        new = new[:end]
        answers.append(ChatAnswer(prompt=prompt, token_ids=new, text=tokenizer.decode(new, skip_special_tokens=True)))
    return answers


def eos_token_ids(model, tokenizer) -> list[int]:
    """EOS ids from the model's generation config (an instruct model's end-of-turn token), else the tokenizer's."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = tokenizer.eos_token_id
    if ids is None:
        return []
    return [ids] if isinstance(ids, int) else list(ids)


def chat_fidelity(
    model,
    tokenizer,
    reference,
    *,
    prompts: Sequence[str] = CHAT_PROMPTS,
    max_new_tokens: int = 32,
    model_name: str | None = None,
    reference_name: str | None = None,
) -> ChatFidelityResult:
    """Chat fidelity of `model` against `reference` (see the module docstring).

    Args:
        model: A causal LM in memory (PyTorch, masked with `mask_attention`, or ORT).
        tokenizer: The tokenizer of both models.
        reference: The reference model, or its answers from `chat_answers` (computed once, reused across models;
            they fix the prompts).
        prompts: The prompts, when `reference` is a model.
        max_new_tokens: Answer length cap (must equal the reference answers' cap when those are given).
        model_name: Recorded as `ChatFidelityResult.model`.
        reference_name: Recorded as `ChatFidelityResult.reference`.
    """
    if isinstance(reference, (list, tuple)):
        reference_answers = list(reference)
        prompts = [answer.prompt for answer in reference_answers]
    else:
        reference_answers = chat_answers(reference, tokenizer, prompts, max_new_tokens=max_new_tokens)
    begin = time.perf_counter()
    answers = chat_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    seconds = time.perf_counter() - begin
    pairs = [ChatPair.of(a, r) for a, r in zip(answers, reference_answers, strict=True)]
    result = ChatFidelityResult(
        pairs=pairs,
        first_sentence_agreement=statistics.fmean(p.first_sentence_match for p in pairs),
        token_agreement=statistics.fmean(p.token_agreement for p in pairs),
        exact_match=statistics.fmean(p.exact_match for p in pairs),
        max_new_tokens=max_new_tokens,
        chat_template=bool(getattr(tokenizer, "chat_template", None)),
        model=model_name,
        reference=reference_name,
        seconds=seconds,
    )
    logger.info(
        "Chat fidelity: first sentence %.2f, token agreement %.2f over %d prompts",
        result.first_sentence_agreement,
        result.token_agreement,
        len(pairs),
    )
    return result


def evaluate_chat_fidelity(
    model_path: str | Path,
    reference: str | Path,
    *,
    prompts: Sequence[str] = CHAT_PROMPTS,
    max_new_tokens: int = 32,
    dtype: "str | torch.dtype" = "auto",
    provider: str = "cpu",
) -> ChatFidelityResult:
    """Loads a model and its reference (PyTorch checkpoints or ONNX exports) and returns `chat_fidelity`.

    Raises:
        ModelNotFoundError: If either path does not exist.
        InvalidConfigError: If their vocabularies or tokenizers differ (checked before either loads).
        InvalidCheckpointError: If either has no config, weights or tokenizer.
    """
    from .loading import load_causal_lm

    check_int("max_new_tokens", max_new_tokens, 1)
    directory, tokenizer, reference_dir, _ = open_reference_pair(model_path, reference)
    model, _ = load_causal_lm(directory, provider=provider, dtype=dtype)
    reference_model, _ = load_causal_lm(reference_dir, provider=provider, dtype=dtype)
    return chat_fidelity(
        model,
        tokenizer,
        reference_model,
        prompts=prompts,
        max_new_tokens=max_new_tokens,
        model_name=str(model_path),
        reference_name=str(reference),
    )
