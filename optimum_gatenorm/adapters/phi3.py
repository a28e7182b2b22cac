"""Phi-3: one fused `qkv_proj` with `[Q; K; V]` rows."""

from .base import TINY_COMMON, ArchitectureAdapter, ForTests, FusedRows, MLPLayout, OnnxFacts, ParameterLayout
from .registry import register_adapter


PHI3 = register_adapter(
    ArchitectureAdapter(
        model_types=("phi3",),
        notes="fused gate and up projections",
        layers="model.layers",
        attention="self_attn",
        input_norm="input_layernorm",
        post_norm="post_attention_layernorm",
        qk=FusedRows("qkv_proj"),
        # Phi-3 fuses the gate and up projections: rows [gate; up].
        mlp_layout=MLPLayout(up="gate_up_proj", down="down_proj", fused_gate_up=True),
        embedding="model.embed_tokens",
        # Phi-3 applies a dropout to the MLP output before the residual add (identity in eval mode).
        pruned_forward=("post_attention_layernorm", "mlp", "resid_mlp_dropout"),
        # Fused qkv_proj and gate_up_proj have the same counts as separate matrices.
        cost=ParameterLayout(),
        # ORTModelForCausalLM sizes phi3's KV cache with num_attention_heads: only MHA shapes run on onnxruntime.
        onnx=OnnxFacts(reads_kv_heads=False),
        # A Llama layer with fused projections: the criteria read the same Q, K, V, O and gains as on SmolLM2-135M.
        quality_reference="smollm2-135m",
        tests=ForTests(
            dict(
                TINY_COMMON,
                num_key_value_heads=2,
                max_position_embeddings=128,
                original_max_position_embeddings=128,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
            )
        ),
    )
)
