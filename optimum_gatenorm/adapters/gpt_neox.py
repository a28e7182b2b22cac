"""GPT-NeoX (Pythia): head-interleaved `query_key_value`, parallel or sequential residual."""

from .base import ArchitectureAdapter, HeadInterleaved, MLPLayout


# With parallel residual a layer computes h + attn(ln1(h)) + mlp(ln2(h)); with sequential residual
# h' = h + attn(ln1(h)), then h' + mlp(ln2(h')). Without attention both reduce to h + mlp(ln2(h)).
GPT_NEOX = ArchitectureAdapter(
    model_types=("gpt_neox",),
    layers="gpt_neox.layers",
    attention="attention",
    input_norm="input_layernorm",
    post_norm="post_attention_layernorm",
    qk=HeadInterleaved("query_key_value"),
    mlp_layout=MLPLayout(up="dense_h_to_4h", down="dense_4h_to_h"),
    embedding="gpt_neox.embed_in",
    mlp_dropout="post_mlp_dropout",
    returns_tuple=True,
)
