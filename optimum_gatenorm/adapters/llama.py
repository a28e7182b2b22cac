"""Llama-style decoders: separate q/k/v/o projections and RMSNorm (llama, mistral, qwen2)."""

from .base import ArchitectureAdapter, MLPLayout, SeparateProjections


# qwen2 adds q/k/v biases; the score reads weights only, so the layout is the same.
LLAMA = ArchitectureAdapter(
    model_types=("llama", "mistral", "qwen2"),
    layers="model.layers",
    attention="self_attn",
    input_norm="input_layernorm",
    post_norm="post_attention_layernorm",
    qk=SeparateProjections(),
    mlp_layout=MLPLayout(up="up_proj", gate="gate_proj", down="down_proj"),
    embedding="model.embed_tokens",
)
