"""The LLaMA shapes the GPU speed studies time (random weights: speed depends on the shape, not the values), and the
layer choice they remove."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import LlamaConfig


@dataclass(frozen=True)
class ModelSpec:
    """A LLaMA shape.

    Args:
        name: Short name used in the tables.
        hidden_size: Model width.
        num_layers: Decoder layers L.
        num_heads: Query heads.
        num_kv_heads: Key/value heads (GQA when fewer than `num_heads`).
        intermediate_size: MLP width.
        vocab_size: Vocabulary size (untied embedding and LM head).
        rope_theta: RoPE base.
        native_context: The model's own context length (raised when a longer cell is measured; speed only).
        note: Where the shape comes from.
    """

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float
    native_context: int
    note: str

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def config(self, max_positions: int, attn_implementation: str) -> LlamaConfig:
        config = LlamaConfig(
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            intermediate_size=self.intermediate_size,
            vocab_size=self.vocab_size,
            rope_theta=self.rope_theta,
            max_position_embeddings=max(self.native_context, max_positions),
            tie_word_embeddings=False,
            use_cache=True,
        )
        config._attn_implementation = attn_implementation
        return config

    def ks(self) -> list[int]:
        """k in {0, L/8, L/4, 0.4 L} rounded half up, without repeats, then L-1 (the bound probe)."""
        ks = []
        for fraction in (0.0, 1 / 8, 1 / 4, 0.4):
            k = int(fraction * self.num_layers + 0.5)
            if k not in ks and k < self.num_layers - 1:
                ks.append(k)
        return [*ks, self.num_layers - 1]

    def param_count(self) -> int:
        h, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        attention = 2 * h * h + 2 * h * kv
        layer = attention + 3 * h * self.intermediate_size + 2 * h
        return self.num_layers * layer + 2 * self.vocab_size * h + h


MODELS = {
    "llama2-13b": ModelSpec(
        "llama2-13b", 5120, 40, 40, 40, 13824, 32000, 10000.0, 4096, "LLaMA-2-13B shape (the paper's model; MHA)"
    ),
    "llama3-8b": ModelSpec(
        "llama3-8b", 4096, 32, 32, 8, 14336, 128256, 500000.0, 8192, "Llama-3-8B shape (GQA, 8 KV heads)"
    ),
}
TINY_MODELS = {
    "tiny-mha": ModelSpec("tiny-mha", 64, 6, 4, 4, 128, 256, 10000.0, 128, "tiny MHA (CPU test of the code path)"),
    "tiny-gqa": ModelSpec("tiny-gqa", 64, 8, 4, 2, 128, 512, 500000.0, 128, "tiny GQA (CPU test of the code path)"),
}


def evenly_spread(k: int, num_layers: int) -> list[int]:
    """k distinct layers spread evenly over 1..L-1 (layer choice does not matter for speed)."""
    if k <= 0:
        return []
    if k == 1:
        return [num_layers // 2]
    step = (num_layers - 2) / (k - 1)
    return [int(1 + i * step + 0.5) for i in range(k)]
