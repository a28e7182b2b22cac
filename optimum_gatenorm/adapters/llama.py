"""Llama-style decoders: separate q/k/v/o projections and RMSNorm (llama, mistral, qwen2)."""

from dataclasses import replace

from .base import TINY_COMMON, ArchitectureAdapter, MLPLayout, ParameterLayout, SeparateProjections


# hidden 32, 4 layers, 4 query heads; the key/value heads differ per model type (GQA / MQA).
_TINY = dict(TINY_COMMON, max_position_embeddings=128)

LLAMA = ArchitectureAdapter(
    model_types=("llama",),
    layers="model.layers",
    attention="self_attn",
    input_norm="input_layernorm",
    post_norm="post_attention_layernorm",
    qk=SeparateProjections(),
    mlp_layout=MLPLayout(up="up_proj", gate="gate_proj", down="down_proj"),
    embedding="model.embed_tokens",
    # Only llama's config has switches for the attention and MLP biases.
    params=ParameterLayout(attention_bias_attr="attention_bias", mlp_bias_attr="mlp_bias"),
    ort_reads_kv_heads=True,
    tiny_config=dict(_TINY, num_key_value_heads=2),
)

MISTRAL = replace(
    LLAMA, model_types=("mistral",), params=ParameterLayout(), tiny_config=dict(_TINY, num_key_value_heads=1)
)

# Qwen2 has biases on q, k and v (not on o), always; the score reads weights only, so the layout is the same.
QWEN2 = replace(
    LLAMA,
    model_types=("qwen2",),
    params=ParameterLayout(qkv_bias=True),
    tiny_config=dict(_TINY, num_key_value_heads=2),
)
