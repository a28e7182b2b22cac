"""Qwen3: llama-style projections plus per-head query/key RMSNorms (`q_norm`, `k_norm`), optional sliding windows."""

from .base import (
    TINY_COMMON,
    ArchitectureAdapter,
    ForTests,
    MLPLayout,
    OnnxFacts,
    ParameterLayout,
    SeparateProjections,
)
from .registry import register_adapter


QWEN3 = register_adapter(
    ArchitectureAdapter(
        model_types=("qwen3",),
        notes="per-head query/key RMSNorms folded into every gate criterion; sliding-window layers kept per layer",
        layers="model.layers",
        attention="self_attn",
        input_norm="input_layernorm",
        post_norm="post_attention_layernorm",
        qk=SeparateProjections(),
        mlp_layout=MLPLayout(up="up_proj", gate="gate_proj", down="down_proj"),
        embedding="model.embed_tokens",
        # The logit is (g_q * q / rms(q)) . (g_k * k / rms(k)): the criteria fold these gains in (criteria/gate.py).
        qk_norms=("q_norm", "k_norm"),
        # No quality_reference: the q/k norms change what every gate criterion reads, and no Qwen3 was measured.
        # One switch for the q, k, v and o biases.
        cost=ParameterLayout(attention_bias_attr="attention_bias"),
        # optimum-onnx 0.1.0's ORTModelForCausalLM takes hidden_size // num_attention_heads as qwen3's head size: the
        # released Qwen3 models (head_dim 128 != hidden / heads) are refused for onnxruntime up front.
        onnx=OnnxFacts(reads_kv_heads=True, reads_head_dim=False),
        # head_dim is its own setting (128 in the released models); the tiny model mixes sliding-window layers (window
        # 4, so tests run prompts longer than the window) with full ones.
        tests=ForTests(
            dict(
                TINY_COMMON,
                bos_token_id=1,  # Qwen3Config names no BOS by default
                num_key_value_heads=2,
                head_dim=8,
                max_position_embeddings=128,
                use_sliding_window=True,
                sliding_window=4,
                max_window_layers=0,
                layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"],
            )
        ),
    )
)
