"""Gemma 2 and Gemma 3 (text): sandwich norms, `1 + w` norm gains, a scaled embedding, sliding-window layers.

A decoder layer computes `h' = h + post_attention_layernorm(attn(input_layernorm(h)))`, then
`h' + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h')))`. Without attention it is
`h + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h)))`: the attention and both of its norms go.
Gemma 3 adds per-head query/key norms; Gemma 2 caps attention logits with `tanh` instead.
"""

from dataclasses import replace

from .base import (
    TINY_COMMON,
    ArchitectureAdapter,
    CompatFacts,
    ForTests,
    MLPLayout,
    Numerics,
    OnnxFacts,
    ParameterLayout,
    SeparateProjections,
)
from .registry import register_adapter


_SANDWICH = dict(
    layers="model.layers",
    attention="self_attn",
    input_norm="input_layernorm",
    # The norm in front of the MLP (whose gain the residual-scale criteria read) is the pre-feed-forward one.
    post_norm="pre_feedforward_layernorm",
    qk=SeparateProjections(),
    mlp_layout=MLPLayout(up="up_proj", gate="gate_proj", down="down_proj", activation="hidden_activation"),
    embedding="model.embed_tokens",
    pruned_modules=("self_attn", "input_layernorm", "post_attention_layernorm"),
    pruned_forward=("pre_feedforward_layernorm", "mlp", "post_feedforward_layernorm"),
    attention_output_norm="post_attention_layernorm",
    mlp_output_norm="post_feedforward_layernorm",
    # Gemma's RMSNorm multiplies by (1 + weight).
    numerics=Numerics(norm_gain_offset=1.0, embedding_scale="sqrt_hidden"),
    cost=ParameterLayout(attention_bias_attr="attention_bias", norms_per_layer=4),
    # Measured on Gemma-3-270M: sandwich norms, 1 + w gains, sliding/full layers (Gemma 2 shares all three).
    quality_reference="gemma3-270m",
    onnx=OnnxFacts(reads_kv_heads=True, reads_head_dim=True),
)

# Layer types S, F, S, S and a window of 4: removing layer 0, the full layer, or alternate layers all shift the
# type sequence of the kept layers, and the tests' prompts are longer than the window.
_TINY = dict(
    TINY_COMMON,
    num_key_value_heads=1,
    head_dim=8,
    query_pre_attn_scalar=8,
    max_position_embeddings=128,
    sliding_window=4,
    layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"],
)

GEMMA3_TEXT = register_adapter(
    ArchitectureAdapter(
        model_types=("gemma3_text",),
        notes="sandwich norms, 1 + w gains, sqrt(hidden) embedding scale, q/k norms, 5 sliding : 1 full layers",
        qk_norms=("q_norm", "k_norm"),
        unsupported_flags=(
            ("use_bidirectional_attention", "bidirectional attention (EmbeddingGemma) is an encoder, not a causal LM"),
        ),
        tests=ForTests(dict(_TINY)),
        # 4.57 reads the sliding layers' RoPE base (5.x: rope_parameters["sliding_attention"]) as rope_local_base_freq;
        # the full layers' base and scaling under the plain names.
        compat=CompatFacts(
            returns_tuple=True,
            legacy_rope_names={"rope_theta": "rope_theta", "sliding_attention.rope_theta": "rope_local_base_freq"},
        ),
        **_SANDWICH,
    )
)

# optimum-onnx 0.1.0's ORTModelForCausalLM reads neither num_key_value_heads nor head_dim for gemma2, so only
# MHA shapes with head_dim * heads == hidden run there (the released Gemma 2 models do not): the tiny one is MHA.
GEMMA2 = register_adapter(
    replace(
        GEMMA3_TEXT,
        model_types=("gemma2",),
        notes="sandwich norms, 1 + w gains, sqrt(hidden) embedding scale, sliding/full layers, logit soft-capping",
        qk_norms=None,
        unsupported_flags=(),
        onnx=OnnxFacts(),
        tests=ForTests(dict(_TINY, num_key_value_heads=4)),
        compat=CompatFacts(returns_tuple=True, legacy_rope_names={"rope_theta": "rope_theta"}),
    )
)
