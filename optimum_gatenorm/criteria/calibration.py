"""Calibration token windows for the data-driven criteria (`cosine`, `attn_norm`).

The rule is simple and deterministic: the text is tokenized once, without special tokens, and cut into
`num_samples` consecutive, non-overlapping windows of exactly `length` tokens, starting at the first token; the
rest of the text is ignored. Every window is full, so there is no padding and every token counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InvalidConfigError
from ..params import param
from ..text import bos_prefix, read_texts
from ..validation import check_int


if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

__all__ = ["Calibration"]


@dataclass(frozen=True)
class Calibration:
    """Token windows fed through the model by data-driven criteria, `batch_size` windows per forward pass.

    Args:
        input_ids: Integer tensor `[num_samples, length]` of token ids.
        batch_size: Windows per forward pass.
        source: What the windows were cut from (file names), recorded in reports.
    """

    input_ids: "torch.Tensor"
    batch_size: int = 1
    source: str = "token ids"

    def __post_init__(self):
        import torch

        ids = self.input_ids
        if not isinstance(ids, torch.Tensor):
            raise InvalidConfigError(f"input_ids must be a torch.Tensor, got {type(ids).__name__}")
        if ids.dim() != 2 or ids.numel() == 0:
            raise InvalidConfigError(
                f"input_ids must be a non-empty [num_samples, length] tensor, got {tuple(ids.shape)}"
            )
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise InvalidConfigError(f"input_ids must hold integer token ids, got dtype {ids.dtype}")
        if int(ids.min()) < 0:
            raise InvalidConfigError(f"input_ids must be >= 0, got a minimum of {int(ids.min())}")
        check_int("batch_size", self.batch_size, 1)
        object.__setattr__(self, "input_ids", ids.long())

    @property
    def num_samples(self) -> int:
        return self.input_ids.shape[0]

    @property
    def length(self) -> int:
        return self.input_ids.shape[1]

    @property
    def num_tokens(self) -> int:
        return self.input_ids.numel()

    def batches(self) -> list["torch.Tensor"]:
        """The windows in forward-pass batches of at most `batch_size`."""
        return list(self.input_ids.split(self.batch_size))

    def check_vocab(self, vocab_size: int) -> None:
        """Raises `InvalidConfigError` if a token id does not fit an embedding of `vocab_size` rows."""
        largest = int(self.input_ids.max())
        if largest >= vocab_size:
            raise InvalidConfigError(
                f"calibration token id {largest} is out of range for the model's vocabulary of {vocab_size}; "
                "tokenize with the model's own tokenizer"
            )

    def to_dict(self) -> dict:
        """Settings for reports: `num_samples`, `length`, `num_tokens`, `batch_size`, `source`."""
        return {
            "num_samples": self.num_samples,
            "length": self.length,
            "num_tokens": self.num_tokens,
            "batch_size": self.batch_size,
            "source": self.source,
        }

    @classmethod
    def from_text(
        cls,
        text: str,
        tokenizer: "PreTrainedTokenizerBase",
        *,
        num_samples: int = 16,
        length: int = 256,
        batch_size: int = 1,
        source: str = "text",
        bos: bool | None = None,
    ) -> "Calibration":
        """Tokenizes `text` and takes `num_samples` consecutive non-overlapping windows of `length` tokens.

        Each window starts with the BOS token where the tokenizer adds one when it encodes text (Gemma), as in
        `optimum_gatenorm.text.bos_prefix`; `bos=True` / `False` chooses.

        Raises:
            InvalidConfigError: If a setting is not a positive integer, or the text has fewer than
                `num_samples * length` tokens.
        """
        import torch

        check_int("num_samples", num_samples, 1)
        check_int("length", length, 1)
        check_int("batch_size", batch_size, 1)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        needed = num_samples * length
        if len(ids) < needed:
            raise InvalidConfigError(
                f"calibration text ({source}) has {len(ids)} tokens but {num_samples} samples x {length} tokens "
                f"= {needed} are needed; pass more text or lower {param('num_samples')} / {param('length')}"
            )
        windows = torch.tensor(ids[:needed], dtype=torch.long).reshape(num_samples, length)
        prefix = bos_prefix(tokenizer, bos)
        if prefix:  # the model sees text as its tokenizer encodes it: Gemma always after <bos>
            windows = torch.cat([torch.tensor(prefix, dtype=torch.long).expand(num_samples, 1), windows], dim=1)
        return cls(windows, batch_size=batch_size, source=source)

    @classmethod
    def from_files(
        cls,
        paths: "str | Path | Sequence[str | Path]",
        tokenizer: "PreTrainedTokenizerBase",
        *,
        num_samples: int = 16,
        length: int = 256,
        batch_size: int = 1,
        bos: bool | None = None,
    ) -> "Calibration":
        """`from_text` on the UTF-8 files `paths`, joined by blank lines (see `optimum_gatenorm.text.read_texts`)."""
        names = [paths] if isinstance(paths, (str, Path)) else list(paths)
        text = read_texts(names)
        source = ", ".join(Path(p).name for p in names)
        return cls.from_text(
            text, tokenizer, num_samples=num_samples, length=length, batch_size=batch_size, source=source, bos=bos
        )
