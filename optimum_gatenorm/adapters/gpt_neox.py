"""GPT-NeoX (Pythia): head-interleaved `query_key_value`, parallel or sequential residual."""

from .base import TINY_COMMON, ArchitectureAdapter, CompatFacts, ForTests, HeadInterleaved, MLPLayout, ParameterLayout
from .registry import register_adapter


# With parallel residual a layer computes h + attn(ln1(h)) + mlp(ln2(h)); with sequential residual
# h' = h + attn(ln1(h)), then h' + mlp(ln2(h')). Without attention both reduce to h + mlp(ln2(h)), followed by the
# MLP-output dropout (identity in eval mode).
GPT_NEOX = register_adapter(
    ArchitectureAdapter(
        model_types=("gpt_neox",),
        notes="parallel and sequential residual, partial rotary",
        layers="gpt_neox.layers",
        attention="attention",
        input_norm="input_layernorm",
        post_norm="post_attention_layernorm",
        qk=HeadInterleaved("query_key_value"),
        mlp_layout=MLPLayout(up="dense_h_to_4h", down="dense_4h_to_h"),
        embedding="gpt_neox.embed_in",
        pruned_forward=("post_attention_layernorm", "mlp", "post_mlp_dropout"),
        parallel_residual_attr="use_parallel_residual",
        # transformers 4.57 names these rotary_emb_base and rotary_pct (5.x: rope_parameters).
        compat=CompatFacts(
            returns_tuple=True,
            legacy_rope_names={"rope_theta": "rotary_emb_base", "partial_rotary_factor": "rotary_pct"},
        ),
        # LayerNorms and biases everywhere (attention ones switchable); both residual styles have two norms per layer.
        cost=ParameterLayout(
            norm_bias=True,
            qkv_bias=True,
            o_bias=True,
            mlp_bias=True,
            attention_bias_attr="attention_bias",
        ),
        tests=ForTests(dict(TINY_COMMON, rotary_pct=0.5, use_parallel_residual=True, max_position_embeddings=128)),
    )
)
