"""Llama-style decoders: separate q/k/v/o projections and RMSNorm (llama, mistral, qwen2)."""

from dataclasses import replace

from .base import (
    TINY_COMMON,
    ArchitectureAdapter,
    ForTests,
    MLPLayout,
    OnnxFacts,
    ParameterLayout,
    SeparateProjections,
    ServingFacts,
)
from .registry import register_adapter


# hidden 32, 4 layers, 4 query heads; the key/value heads differ per model type (GQA / MQA).
_TINY = dict(TINY_COMMON, max_position_embeddings=128)

LLAMA = register_adapter(
    ArchitectureAdapter(
        model_types=("llama",),
        notes="grouped-query and multi-query attention",
        layers="model.layers",
        attention="self_attn",
        input_norm="input_layernorm",
        post_norm="post_attention_layernorm",
        qk=SeparateProjections(),
        mlp_layout=MLPLayout(up="up_proj", gate="gate_proj", down="down_proj"),
        embedding="model.embed_tokens",
        # Only llama's config has switches for the attention and MLP biases.
        cost=ParameterLayout(attention_bias_attr="attention_bias", mlp_bias_attr="mlp_bias"),
        # SmolLM2-135M is a Llama: same pre-norm layer, RMSNorm gains w, separate projections (mistral and qwen2 too).
        quality_reference="smollm2-135m",
        onnx=OnnxFacts(reads_kv_heads=True),
        # llama.cpp's `llama` (unpruned) and `deci` (pruned) graphs and Nemotron-NAS are this layout exactly.
        serving=ServingFacts(
            llama_cpp_arch="llama",
            nemotron_nas=True,
            unsupported_flags=(
                ("attention_bias", "llama.cpp's deci graph and Nemotron-NAS loaders expect bias-free attention"),
                ("mlp_bias", "llama.cpp's deci graph and Nemotron-NAS loaders expect a bias-free MLP"),
            ),
        ),
        tests=ForTests(dict(_TINY, num_key_value_heads=2)),
    )
)

# Mistral is Llama plus an optional sliding window, which neither llama.cpp's llama/deci graphs nor Nemotron-NAS
# express: refused when set (Mistral v0.2 and later set it to null).
MISTRAL = register_adapter(
    replace(
        LLAMA,
        model_types=("mistral",),
        notes="a sliding window is refused by the GGUF and Nemotron-NAS exports",
        cost=ParameterLayout(),
        serving=replace(
            LLAMA.serving,
            unsupported_flags=(
                (
                    "sliding_window",
                    "llama.cpp's llama/deci graphs and Nemotron-NAS have no sliding-window attention; set "
                    "sliding_window to null in config.json only if the model never attends past it",
                ),
            ),
        ),
        tests=ForTests(dict(_TINY, num_key_value_heads=1)),
    )
)

# Qwen2 has biases on q, k and v (not on o), always; the score reads weights only, so the layout is the same.
# Not exported to GGUF / Nemotron-NAS: llama.cpp runs qwen2 under its own `qwen2` graph (neox rope, biases), which
# has no attention-free layers, and Nemotron-NAS loaders take no q/k/v biases.
QWEN2 = register_adapter(
    replace(
        LLAMA,
        model_types=("qwen2",),
        notes="q/k/v biases (not part of the score)",
        serving=ServingFacts(),
        cost=ParameterLayout(qkv_bias=True),
        tests=ForTests(dict(_TINY, num_key_value_heads=2, bos_token_id=1)),  # Qwen2Config names no BOS by default
    )
)
