"""Phi-3: one fused `qkv_proj` with `[Q; K; V]` rows."""

from .base import ArchitectureAdapter, FusedRows, MLPLayout


PHI3 = ArchitectureAdapter(
    model_types=("phi3",),
    layers="model.layers",
    attention="self_attn",
    input_norm="input_layernorm",
    post_norm="post_attention_layernorm",
    qk=FusedRows("qkv_proj"),
    # Phi-3 fuses the gate and up projections: rows [gate; up].
    mlp_layout=MLPLayout(up="gate_up_proj", down="down_proj", fused_gate_up=True),
    embedding="model.embed_tokens",
    # Phi-3 applies a dropout to the MLP output before the residual add (identity in eval mode).
    mlp_dropout="resid_mlp_dropout",
)
