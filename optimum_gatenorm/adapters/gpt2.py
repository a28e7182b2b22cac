"""GPT-2: `Conv1D` `c_attn` stored `[in, out]`, LayerNorm `ln_1`/`ln_2`, layers return tuples."""

from .base import ArchitectureAdapter, CompatFacts, ForTests, FusedConv1D, MLPLayout, ParameterLayout
from .registry import register_adapter


GPT2 = register_adapter(
    ArchitectureAdapter(
        model_types=("gpt2",),
        notes="learned positions, LayerNorms; not with scale_attn_by_inverse_layer_idx or cross-attention",
        layers="transformer.h",
        attention="attn",
        input_norm="ln_1",
        post_norm="ln_2",
        qk=FusedConv1D("c_attn"),
        mlp_layout=MLPLayout(up="c_fc", down="c_proj", conv1d=True, activation="activation_function"),
        embedding="transformer.wte",
        compat=CompatFacts(returns_tuple=True),
        unsupported_flags=(
            # The attention scale depends on the layer index, which pruning renumbers.
            (
                "scale_attn_by_inverse_layer_idx",
                "its attention scale depends on the layer index, which pruning changes",
            ),
            ("add_cross_attention", "only decoder-only models are supported"),
        ),
        # LayerNorms and biases everywhere, learned positions, MLP width n_inner (None means 4 * D).
        cost=ParameterLayout(
            norm_bias=True,
            qkv_bias=True,
            o_bias=True,
            mlp_bias=True,
            intermediate_attr="n_inner",
            position_embeddings_attr="n_positions",
        ),
        # GPT2Config's default BOS (50256) is outside the tiny vocabulary; its EOS stays (generation never stops early).
        tests=ForTests(dict(vocab_size=128, n_embd=32, n_layer=4, n_head=4, n_positions=128, bos_token_id=0)),
    )
)
