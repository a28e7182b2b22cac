"""Long-context retrieval: does the model still find what it was told far back in its context?

Perplexity on short windows hardly sees what attention carries across a long context, and retrieval is the first
thing removing attention sublayers breaks. This suite is generated from a seed, offline and deterministic, in the
way of RULER (arXiv 2404.06654), with no dataset:

- `passkey`: a 5-digit key ("The pass key is 12345. Remember it.") hidden at a depth of repeated filler; the prompt
  ends "What is the pass key? The pass key is". (RULER's needle repeats the key, "12345 is the pass key."; that
  made the unpruned SmolLM2-135M-Instruct answer "the pass key" instead: 4 of 6 cases at 1k tokens through its chat
  template, against 6 of 6 without it.)
- `multikey`: needle in a haystack among distractors: several keys, each under its own name ("The pass key for
  river is 12345."), the asked one at the depth, the others at seeded random depths.
- `vartrack`: variable tracking: "VAR ABCDE = 12345." at the depth, then a chain of assignments ("VAR FGHIJ = VAR
  ABCDE.") spread between it and the end; the prompt asks for the value of the chain's last variable.

Each prompt is `length` tokens at most (and within one filler sentence of it), measured with the model's tokenizer;
depth 0 puts the needle at the start of the filler, 1 at its end. A case is right when the first 5-digit number of
the greedy continuation (12 new tokens at most) is the key. An instruct model (a tokenizer with a chat template)
gets the context and question as its user message and the answer prefix at the start of its own turn; a base
model gets plain completion (`chat=` chooses). The result counts right cases per task, length and depth.
"""

from __future__ import annotations

import logging
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidConfigError
from ..serialization import JSONMixin
from ..validation import check_int, check_int_list
from ..version import __version__
from .chat import eos_token_ids


if TYPE_CHECKING:
    import torch

__all__ = [
    "RETRIEVAL_TASKS",
    "RetrievalCase",
    "RetrievalConfig",
    "RetrievalResult",
    "answer_is_right",
    "evaluate_retrieval",
    "retrieval_accuracy",
    "retrieval_cases",
]

logger = logging.getLogger(__name__)

RETRIEVAL_TASKS = ("passkey", "multikey", "vartrack")
# RULER's passkey filler: carries no information a key could be confused with.
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
INSTRUCTION = "There is important information hidden inside a lot of irrelevant text. Find it and memorize it."
_NAMES = ("river", "stone", "cloud", "maple", "harbor", "violet", "falcon", "copper", "meadow", "lantern")
_DISTRACTORS = 3  # multikey: keys besides the asked one
_HOPS = 3  # vartrack: assignments after the first
_KEY = re.compile(r"(?<!\d)\d{5}(?!\d)")


@dataclass(frozen=True)
class RetrievalConfig:
    """What the suite generates.

    Args:
        tasks: Some of `RETRIEVAL_TASKS`.
        lengths: Prompt lengths in tokens (each at most the model's `max_position_embeddings`).
        depths: Where the needle sits in the filler, each in [0, 1].
        cases: Cases per task, length and depth (each with its own key).
        seed: Seed of the keys, names and distractor depths.
        max_new_tokens: Greedy continuation length; the answer is its first 5-digit number.
        chat: Ask through the tokenizer's chat template (`None`: when it has one).
    """

    tasks: tuple[str, ...] = RETRIEVAL_TASKS
    lengths: tuple[int, ...] = (1024, 2048)
    depths: tuple[float, ...] = (0.1, 0.5, 0.9)
    cases: int = 3
    seed: int = 0
    max_new_tokens: int = 12
    chat: bool | None = None

    def __post_init__(self):
        tasks = (self.tasks,) if isinstance(self.tasks, str) else tuple(self.tasks)
        unknown = [task for task in tasks if task not in RETRIEVAL_TASKS]
        if not tasks or unknown:
            raise InvalidConfigError(
                f"tasks must be some of {', '.join(RETRIEVAL_TASKS)}, got {', '.join(map(repr, unknown or tasks))}"
            )
        lengths = tuple(check_int_list("lengths", self.lengths, 1))
        if not lengths:
            raise InvalidConfigError("lengths must name at least one prompt length in tokens")
        depths = tuple(self.depths)
        if not depths or any(
            not isinstance(d, (int, float)) or isinstance(d, bool) or not 0 <= d <= 1 for d in depths
        ):
            raise InvalidConfigError(f"depths must be numbers in [0, 1], got {list(depths)!r}")
        check_int("cases", self.cases, 1)
        check_int("seed", self.seed, 0)
        check_int("max_new_tokens", self.max_new_tokens, 6)
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "lengths", lengths)
        object.__setattr__(self, "depths", tuple(float(d) for d in depths))

    def check_context(self, max_positions: int | None) -> None:
        """Refuses a length beyond the model's context (`max_position_embeddings`), before anything runs."""
        if max_positions is None:
            return
        too_long = [length for length in self.lengths if length > max_positions]
        if too_long:
            raise InvalidConfigError(
                f"lengths {too_long} exceed the model's context of {max_positions} positions "
                "(max_position_embeddings); give lengths up to it"
            )


@dataclass
class RetrievalCase:
    """One generated prompt: its task, target length, depth, the key it hides and the prompt's token ids."""

    task: str
    length: int
    depth: float
    key: str
    input_ids: list[int] = field(repr=False)


def _sentences(task: str, rng: random.Random) -> tuple[str, list[tuple[float | None, str]], str]:
    """The key, the needles (`(depth or None for "at the case's depth", sentence)`) and the question of one case."""
    key = f"{rng.randrange(10_000, 100_000)}"
    if task == "passkey":
        return (
            key,
            [(None, f"The pass key is {key}. Remember it.")],
            ("What is the pass key? The pass key is"),
        )
    if task == "multikey":
        names = rng.sample(_NAMES, _DISTRACTORS + 1)
        needles = [(None, f"The pass key for {names[0]} is {key}.")]
        for name in names[1:]:
            other = f"{rng.randrange(10_000, 100_000)}"
            needles.append((rng.random(), f"The pass key for {name} is {other}."))
        return key, needles, f"What is the pass key for {names[0]}? The pass key for {names[0]} is"
    variables = ["".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5)) for _ in range(_HOPS + 1)]
    chain = [f"VAR {variables[0]} = {key}."]
    chain += [f"VAR {variables[i + 1]} = VAR {variables[i]}." for i in range(_HOPS)]
    needles = [(None if i == 0 else -i, sentence) for i, sentence in enumerate(chain)]  # -i: the i-th hop after it
    return key, needles, f"What is the value of VAR {variables[-1]}? The value of VAR {variables[-1]} is"


def _prompt_ids(tokenizer, context: str, question: str, chat: bool) -> list[int]:
    if chat:
        user = f"{INSTRUCTION}\n\n{context}\n\n{question.rsplit('?', 1)[0]}?"
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        text += question.rsplit("? ", 1)[1]  # the answer prefix opens the model's own turn
        return tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return tokenizer(f"{INSTRUCTION}\n\n{context}\n\n{question}", return_attention_mask=False)["input_ids"]


def _context(filler: int, depth: float, needles: list[tuple[float | None, str]]) -> str:
    """`filler` filler sentences with the needles placed: `None` at `depth`, a negative `-i` the i-th hop spread
    between `depth` and the end, a number at that depth."""
    slots: dict[int, list[str]] = {}
    for where, sentence in needles:
        if where is None:
            at = depth
        elif where < 0:
            at = depth + (1 - depth) * (-where) / (_HOPS + 1)
        else:
            at = where
        slots.setdefault(round(at * filler), []).append(sentence)
    parts = []
    for index in range(filler + 1):
        parts += slots.get(index, [])
        if index < filler:
            parts.append(FILLER)
    return " ".join(parts)


def _uses_chat(tokenizer, chat: bool | None) -> bool:
    """Whether prompts go through the chat template: as asked, or (`None`) when the tokenizer has one."""
    return bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat


def retrieval_cases(tokenizer, config: RetrievalConfig, *, chat: bool | None = None) -> list[RetrievalCase]:
    """The suite's prompts for `tokenizer`, deterministic for `config.seed`.

    Each prompt has at most `length` tokens and at most one filler sentence fewer.

    Raises:
        InvalidConfigError: If a length is too short for the question and needles alone.
    """
    chat = _uses_chat(tokenizer, config.chat if chat is None else chat)
    rng = random.Random(config.seed)
    per_filler = len(tokenizer(FILLER + " ", add_special_tokens=False)["input_ids"])
    cases = []
    for task in config.tasks:
        for length in config.lengths:
            for depth in config.depths:
                for _ in range(config.cases):
                    key, needles, question = _sentences(task, rng)
                    bare = len(_prompt_ids(tokenizer, _context(0, depth, needles), question, chat))
                    if bare > length:
                        raise InvalidConfigError(
                            f"a {task} prompt needs {bare} tokens without any filler; give lengths of at least "
                            f"{bare}, got {length}"
                        )
                    filler = (length - bare) // per_filler
                    ids = _prompt_ids(tokenizer, _context(filler, depth, needles), question, chat)
                    while len(ids) > length and filler > 0:  # token counts are not quite additive
                        filler -= 1
                        ids = _prompt_ids(tokenizer, _context(filler, depth, needles), question, chat)
                    cases.append(RetrievalCase(task, length, depth, key, ids))
    return cases


@dataclass
class RetrievalResult(JSONMixin):
    """Right cases per task, length and depth.

    Args:
        rows: `{"task", "length", "depth", "correct", "total"}` per task, length and depth.
        cases: Every case: task, length, depth, prompt tokens, key, the model's continuation, whether it was right.
        config: The `RetrievalConfig` as a dict.
        chat_template: Whether the prompts went through the chat template (else plain completion).
        model: What was evaluated, for the record.
        seconds: Wall time of the generation.
        gatenorm_version: Version of optimum-gatenorm.
    """

    rows: list[dict[str, Any]]
    cases: list[dict[str, Any]]
    config: dict[str, Any]
    chat_template: bool
    model: str | None = None
    seconds: float = 0.0
    gatenorm_version: str = __version__

    def accuracy(self, task: str | None = None) -> float:
        """Share of right cases, over one task or all."""
        rows = [row for row in self.rows if task is None or row["task"] == task]
        return sum(r["correct"] for r in rows) / max(1, sum(r["total"] for r in rows))

    def to_table(self) -> str:
        lengths = sorted({row["length"] for row in self.rows})
        header = f"{'task':<9} {'depth':>5}  " + "  ".join(f"{length:>7}" for length in lengths)
        lines = [header]
        for task in dict.fromkeys(row["task"] for row in self.rows):
            for depth in dict.fromkeys(row["depth"] for row in self.rows if row["task"] == task):
                cells = []
                for length in lengths:
                    row = next(r for r in self.rows if (r["task"], r["depth"], r["length"]) == (task, depth, length))
                    cells.append(f"{row['correct']:>3}/{row['total']:<3}")
                lines.append(f"{task:<9} {depth:>5.2f}  " + "  ".join(cells))
        mode = "chat template" if self.chat_template else "plain completion"
        totals = ", ".join(f"{task} {self.accuracy(task):.2f}" for task in dict.fromkeys(r["task"] for r in self.rows))
        lines.append(f"retrieval accuracy: {totals} ({mode}, greedy, seed {self.config['seed']})")
        return "\n".join(lines)


def answer_is_right(answer: str, key: str) -> bool:
    """Whether the first 5-digit number of a continuation is `key` (a longer number is not a 5-digit one)."""
    found = _KEY.search(answer)
    return found is not None and found.group() == key


def retrieval_accuracy(
    model,
    tokenizer,
    config: RetrievalConfig | None = None,
    *,
    model_name: str | None = None,
    progress: bool = False,
) -> RetrievalResult:
    """Runs the suite (`retrieval_cases`) on a model in memory: PyTorch (pruned, masked or not) or ONNX.

    Raises:
        InvalidConfigError: If a length exceeds the model's context or is too short for the prompt.
    """
    import torch
    from tqdm.auto import tqdm

    config = config or RetrievalConfig()
    config.check_context(getattr(model.config, "max_position_embeddings", None))
    cases = retrieval_cases(tokenizer, config)
    chat = _uses_chat(tokenizer, config.chat)
    eos = eos_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    device = getattr(model, "device", torch.device("cpu"))
    begin = time.perf_counter()
    records = []
    for case in tqdm(cases, desc="Retrieval cases", unit="case", disable=not progress):
        ids = torch.tensor([case.input_ids], device=device)
        with torch.inference_mode():
            output = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=config.max_new_tokens,
                do_sample=False,
                num_beams=1,
                eos_token_id=eos or None,
                pad_token_id=pad,
            )
        answer = tokenizer.decode(output[0, ids.shape[1] :].tolist(), skip_special_tokens=True)
        records.append(
            {
                "task": case.task,
                "length": case.length,
                "depth": case.depth,
                "tokens": len(case.input_ids),
                "key": case.key,
                "answer": answer,
                "correct": answer_is_right(answer, case.key),
            }
        )
    rows = []
    for task in config.tasks:
        for length in config.lengths:
            for depth in config.depths:
                mine = [r for r in records if (r["task"], r["length"], r["depth"]) == (task, length, depth)]
                rows.append(
                    {
                        "task": task,
                        "length": length,
                        "depth": depth,
                        "correct": sum(r["correct"] for r in mine),
                        "total": len(mine),
                    }
                )
    result = RetrievalResult(
        rows=rows,
        cases=records,
        config=asdict(config),
        chat_template=chat,
        model=model_name,
        seconds=time.perf_counter() - begin,
    )
    logger.info("Retrieval accuracy %.2f over %d cases", result.accuracy(), len(records))
    return result


def evaluate_retrieval(
    model_path: str | Path,
    config: RetrievalConfig | None = None,
    *,
    dtype: "str | torch.dtype" = "auto",
    provider: str = "cpu",
    progress: bool = False,
) -> RetrievalResult:
    """Loads a model (a checkpoint, pruned or not, a `.gguf` file, a built-in alias, or an ONNX export) and runs
    `retrieval_accuracy` on it.

    Raises:
        InvalidConfigError: If a length exceeds the model's context (checked from `config.json` before loading).
    """
    from transformers import AutoConfig

    from ..checkpoints.modeling import load_tokenizer
    from ..checkpoints.models import resolve_model
    from .loading import is_onnx_dir, load_causal_lm

    config = config or RetrievalConfig()
    directory = Path(model_path) if is_onnx_dir(model_path) else resolve_model(model_path)
    config.check_context(getattr(AutoConfig.from_pretrained(directory), "max_position_embeddings", None))
    model, directory = load_causal_lm(directory, provider=provider, dtype=dtype)
    return retrieval_accuracy(model, load_tokenizer(directory), config, model_name=str(model_path), progress=progress)
