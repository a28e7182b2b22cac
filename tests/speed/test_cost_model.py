"""The analytical cost model: hand-computed FLOPs and bytes, parameter counts against real models, speed-ups."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from conftest import ALL_TINY, tiny_config, tiny_model
from model_support import replaced_model
from transformers import LlamaConfig

import optimum_gatenorm
from optimum_gatenorm.errors import InvalidConfigError, UnsupportedModelError
from optimum_gatenorm.speed.cost_model import ModelCost, ideal_speedup


def hand_config():
    # D=64, L=4, H=4, G=2, d=16, I=128, V=100, untied.
    return LlamaConfig(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        vocab_size=100,
        tie_word_embeddings=False,
    )


# Sizes of the hand config, written out once.
D, L, H, G, d, FF, V = 64, 4, 4, 2, 16, 128, 100
S = 4  # float32 bytes
Q_PROJ = D * (H * d)  # 64 * 64 = 4096
K_PROJ = D * (G * d)  # 64 * 32 = 2048
V_PROJ = D * (G * d)  # 64 * 32 = 2048
O_PROJ = (H * d) * D  # 64 * 64 = 4096
ATTN_PER_LAYER = Q_PROJ + K_PROJ + V_PROJ + O_PROJ  # 12288 (llama: no biases)
MLP_PER_LAYER = 3 * D * FF  # I = FF = 128; gate, up, down: 3 * 64 * 128 = 24576
NORM = D  # RMSNorm weight: 64
LM_HEAD = V * D  # 6400
EMBED = V * D  # 6400


def hand_prefill(kept, batch, prompt):
    tokens = batch * prompt
    flops = 0
    flops += 2 * tokens * kept * ATTN_PER_LAYER  # q, k, v, o projections of kept layers
    flops += kept * batch * (2 * H * d * prompt * prompt)  # QK^T, full P x P
    flops += kept * batch * (2 * H * d * prompt * prompt)  # AV, full P x P
    flops += 2 * tokens * L * MLP_PER_LAYER  # MLP of every layer
    flops += 2 * tokens * V * D  # logits at every position
    moved = 0
    moved += kept * ATTN_PER_LAYER * S  # attention weights of kept layers
    moved += L * MLP_PER_LAYER * S  # MLP weights
    moved += (kept + L + 1) * NORM * S  # attention norms (kept), MLP norms, final norm
    moved += LM_HEAD * S  # LM head matrix
    moved += tokens * D * S  # embedding rows gathered
    moved += kept * tokens * (2 * G * d) * S  # K and V written
    return flops, moved


def hand_decode(kept, batch, context):
    flops = 0
    flops += 2 * batch * kept * ATTN_PER_LAYER
    flops += kept * batch * (2 * H * d * 1 * context)  # QK^T, 1 x C
    flops += kept * batch * (2 * H * d * 1 * context)  # AV, 1 x C
    flops += 2 * batch * L * MLP_PER_LAYER
    flops += 2 * batch * V * D  # logits at the new position only
    moved = 0
    moved += kept * ATTN_PER_LAYER * S
    moved += L * MLP_PER_LAYER * S
    moved += (kept + L + 1) * NORM * S
    moved += LM_HEAD * S
    moved += batch * D * S
    moved += kept * batch * (2 * G * d) * context * S  # K and V read
    moved += kept * batch * (2 * G * d) * S  # the new token's K and V written
    return flops, moved


def test_hand_numbers_are_what_we_think():
    # Guard the helpers themselves with fully expanded literals for the unpruned prefill at B=1, P=8.
    flops, moved = hand_prefill(4, 1, 8)
    assert flops == 786432 + 32768 + 32768 + 1572864 + 102400
    assert moved == 196608 + 393216 + 2304 + 25600 + 2048 + 8192


@pytest.mark.parametrize("pruned, kept", [([], 4), ([1, 2], 2)])
def test_prefill_and_decode_match_hand_computation(pruned, kept):
    cost = ModelCost.from_config(hand_config(), pruned_layers=pruned, dtype_bytes=4)
    assert cost.num_kept_layers == kept
    assert cost.kept_layers == tuple(i for i in range(L) if i not in pruned)

    prefill = cost.prefill(batch=1, prompt_len=8)
    assert (prefill.flops, prefill.bytes) == hand_prefill(kept, 1, 8)
    decode = cost.decode_step(batch=2, context_len=10)
    assert (decode.flops, decode.bytes) == hand_decode(kept, 2, 10)

    for result in (prefill, decode):
        assert sum(result.flops_breakdown.values()) == result.flops
        assert sum(result.bytes_breakdown.values()) == result.bytes


def test_hand_parameter_counts():
    cost = ModelCost.from_config(hand_config(), pruned_layers=[1, 2])
    assert cost.attention_params == 2 * ATTN_PER_LAYER
    assert cost.mlp_params == L * MLP_PER_LAYER
    assert cost.norm_params == (2 + L + 1) * NORM
    assert cost.embedding_params == EMBED
    assert cost.lm_head_params == LM_HEAD
    assert cost.num_parameters == 2 * ATTN_PER_LAYER + L * MLP_PER_LAYER + 7 * NORM + EMBED + LM_HEAD


def test_sandwich_norms_and_query_key_norms_are_counted():
    # A Gemma-style layer: 4 norms, 2 of which go with the attention, and head_dim-sized query and key norms.
    cost = replace(
        ModelCost.from_config(hand_config(), pruned_layers=[1, 2]),
        norms_per_layer=4,
        attention_norms_per_layer=2,
        qk_norms=True,
    )
    assert cost.num_norms == 2 * 2 + L * 2 + 1
    assert cost.attention_params == 2 * (ATTN_PER_LAYER + 2 * d)


def test_dtype_bytes_scales_bytes_not_flops():
    fp32 = ModelCost.from_config(hand_config(), dtype_bytes=4).decode_step(2, 10)
    fp16 = ModelCost.from_config(hand_config(), dtype_bytes=2).decode_step(2, 10)
    assert fp16.flops == fp32.flops
    assert 2 * fp16.bytes == fp32.bytes


def _real_count(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once


@pytest.mark.parametrize("name", sorted(ALL_TINY))
def test_parameter_count_matches_real_model(name):
    model = tiny_model(name)
    assert ModelCost.from_config(model.config).num_parameters == _real_count(model)

    optimum_gatenorm.prune_model(model, [1, 2])
    cost = ModelCost.from_config(model.config)  # pruned layers read from the config record
    assert cost.pruned_layers == (1, 2)
    assert cost.num_parameters == _real_count(model)
    assert ModelCost.from_config(tiny_config(name), pruned_layers=[1, 2]).num_parameters == _real_count(model)


@pytest.mark.parametrize("name", sorted(ALL_TINY))
def test_parameter_split_matches_module_names(name):
    # Attention parameters are exactly those of the attention modules of kept layers.
    model = tiny_model(name)
    adapter = optimum_gatenorm.get_adapter(model.config)
    layers = model.get_submodule(adapter.layers)
    attention = sum(p.numel() for layer in layers for p in getattr(layer, adapter.attention).parameters())
    mlp = sum(p.numel() for layer in layers for p in getattr(layer, adapter.mlp).parameters())
    cost = ModelCost.from_config(model.config)
    assert cost.attention_params == attention
    assert cost.mlp_params == mlp


def test_ideal_speedup_is_one_without_pruning():
    config = hand_config()
    base = ModelCost.from_config(config)
    same = ModelCost.from_config(config, pruned_layers=[])
    for phase in ("prefill", "decode"):
        result = ideal_speedup(base, same, phase, batch=2, length=16)
        assert result["compute_bound"] == 1.0
        assert result["memory_bound"] == 1.0


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_ideal_speedup_above_one_with_pruning(phase):
    config = hand_config()
    result = ideal_speedup(ModelCost.from_config(config), ModelCost.from_config(config, [1, 2]), phase, 2, 16)
    assert result["compute_bound"] > 1.0
    assert result["memory_bound"] > 1.0
    json.dumps(result)  # JSON-friendly


def test_decode_memory_bound_speedup_grows_with_context():
    config = hand_config()
    base, pruned = ModelCost.from_config(config), ModelCost.from_config(config, [1, 2])
    ratios = [ideal_speedup(base, pruned, "decode", 1, c)["memory_bound"] for c in (1, 16, 256, 4096, 65536)]
    assert ratios == sorted(ratios) and len(set(ratios)) == len(ratios)
    assert ratios[-1] < 4 / 2  # bounded by K_base / K_pruned, the KV share's limit


def test_prefill_compute_bound_speedup_grows_with_prompt():
    config = hand_config()
    base, pruned = ModelCost.from_config(config), ModelCost.from_config(config, [1, 2])
    ratios = [ideal_speedup(base, pruned, "prefill", 1, p)["compute_bound"] for p in (1, 16, 256, 4096)]
    assert ratios == sorted(ratios) and len(set(ratios)) == len(ratios)
    assert ratios[-1] < 4 / 2


def test_to_dict_is_json_friendly():
    cost = ModelCost.from_config(tiny_config("qwen2"), pruned_layers=[3])
    data = json.loads(json.dumps(cost.to_dict()))
    assert data["pruned_layers"] == [3]
    assert data["parameters"]["total"] == cost.num_parameters
    assert data["head_dims"]["num_kv_heads"] == 2
    assert json.loads(json.dumps(cost.prefill(1, 4).to_dict()))["flops"] == cost.prefill(1, 4).flops


def test_bad_input():
    config = hand_config()
    with pytest.raises(InvalidConfigError, match="out of range"):
        ModelCost.from_config(config, pruned_layers=[4])
    with pytest.raises(InvalidConfigError, match="cannot remove all"):
        ModelCost.from_config(config, pruned_layers=[0, 1, 2, 3])
    cost = ModelCost.from_config(config)
    with pytest.raises(InvalidConfigError, match="batch"):
        cost.prefill(0, 8)
    with pytest.raises(InvalidConfigError, match="phase"):
        ideal_speedup(cost, cost, "train", 1, 8)
    with pytest.raises(InvalidConfigError, match="dtype_bytes"):
        ideal_speedup(cost, ModelCost.from_config(config, dtype_bytes=2), "decode", 1, 8)
    bert = LlamaConfig()
    bert.model_type = "bert"
    with pytest.raises(UnsupportedModelError, match="llama"):
        ModelCost.from_config(bert)


# --- replaced layers: a linear replacement is a D x D product, a mean one a D-vector -----------------------------


def test_hand_costs_of_replaced_layers():
    plain = ModelCost.from_config(hand_config(), pruned_layers=[1, 2])
    replaced = ModelCost.from_config(hand_config(), pruned_layers=[1, 2], replacements={1: "linear", 2: "mean"})
    assert replaced.replacements == ((1, "linear"), (2, "mean"))
    assert replaced.replacement_params == D * D + D
    assert replaced.norm_params == plain.norm_params + NORM  # the linear map keeps its layer's input norm
    assert replaced.num_parameters == plain.num_parameters + D * D + D + NORM
    # prefill of 1 x 8 tokens, and a decode step of 2 sequences: N = 8 and N = 2 tokens through the D x D map
    for before, after, tokens in (
        (plain.prefill(1, 8), replaced.prefill(1, 8), 8),
        (plain.decode_step(2, 8), replaced.decode_step(2, 8), 2),
    ):
        assert after.flops - before.flops == 2 * tokens * D * D == after.flops_breakdown["attention_replacements"]
        assert after.bytes - before.bytes == (D * D + D + NORM) * S
        assert after.bytes_breakdown["replacement_weights"] == (D * D + D) * S
    assert replaced.to_dict()["replacements"] == {"1": "linear", "2": "mean"}
    # cheaper than the attention it replaces, but not free
    base = ModelCost.from_config(hand_config())
    plain_speedup = ideal_speedup(base, plain, "prefill", 1, 8)["compute_bound"]
    replaced_speedup = ideal_speedup(base, replaced, "prefill", 1, 8)["compute_bound"]
    assert 1 < replaced_speedup < plain_speedup
    with pytest.raises(InvalidConfigError, match="not pruned"):
        ModelCost.from_config(hand_config(), pruned_layers=[1], replacements={2: "linear"})
    with pytest.raises(InvalidConfigError, match="replacement 'cubic'"):
        ModelCost.from_config(hand_config(), pruned_layers=[1], replacements={1: "cubic"})


def test_replacement_share_is_the_replacements_cost_over_the_saving():
    from optimum_gatenorm.speed.cost_model import replacement_share

    base = ModelCost.from_config(hand_config())
    plain = ModelCost.from_config(hand_config(), pruned_layers=[1, 2])
    linear = ModelCost.from_config(hand_config(), pruned_layers=[1, 2], replacements={1: "linear", 2: "linear"})
    assert replacement_share(base, plain, "prefill", 1, 8) == 0.0
    saved = base.prefill(1, 8).flops - plain.prefill(1, 8).flops
    assert replacement_share(base, linear, "prefill", 1, 8) == pytest.approx(2 * 2 * 8 * D * D / saved)
    saved = base.decode_step(1, 8).bytes - plain.decode_step(1, 8).bytes
    added = linear.decode_step(1, 8).bytes - plain.decode_step(1, 8).bytes
    assert replacement_share(base, linear, "decode", 1, 8) == pytest.approx(added / saved)
    # a replacement the baseline already had costs nothing new
    assert replacement_share(linear, linear, "decode", 1, 8) == 0.0


@pytest.mark.parametrize("kind", ["mean", "linear"])
@pytest.mark.parametrize("name", sorted(ALL_TINY))
def test_parameter_count_of_replaced_models_matches_the_real_model(name, kind):

    model = replaced_model(name, kind, layers=[1, 2])
    cost = ModelCost.from_config(model.config)  # pruned layers and replacements read from the config record
    assert cost.replacements == ((1, kind), (2, kind))
    assert cost.num_parameters == _real_count(model)


def test_sliding_window_layers_are_read_from_each_family():
    from optimum_gatenorm.speed.cost_model import sliding_window_layers

    gemma = tiny_config("gemma3_text")
    gemma.sliding_window, gemma.layer_types = 8, ["sliding_attention", "full_attention"] * 2
    assert sliding_window_layers(gemma) == (8, (0, 2))
    mistral = tiny_config("mistral", sliding_window=16)
    assert sliding_window_layers(mistral) == (16, tuple(range(mistral.num_hidden_layers)))
    assert sliding_window_layers(tiny_config("mistral", sliding_window=None)) == (None, ())
    assert sliding_window_layers(hand_config()) == (None, ())
    assert sliding_window_layers(tiny_config("qwen2")) == (None, ())  # layer_types all full_attention
    assert ModelCost.from_config(gemma).to_dict()["sliding_layers"] == [0, 2]


def test_a_sliding_layer_costs_its_window_on_a_window_aware_engine():
    """Scores and KV reads of a sliding layer stop growing at W; with window_aware=False every layer costs the full
    context; at a context within the window both are the same."""
    W = 8
    config = hand_config()
    config.sliding_window, config.layer_types = W, ["sliding_attention", "full_attention"] * 2
    aware = ModelCost.from_config(config)
    unaware = ModelCost.from_config(config, window_aware=False)
    assert aware.span(0, 100) == W and aware.span(1, 100) == 100 and unaware.span(0, 100) == 100
    b, c, p = 2, 100, 50
    decode = aware.decode_step(b, c)
    assert decode.flops_breakdown["attention_scores"] == b * 2 * 2 * (H * d) * (W + c + W + c)
    assert decode.bytes_breakdown["kv_cache"] == b * 2 * (G * d) * S * ((W + 1) + (c + 1)) * 2
    prefill = aware.prefill(b, p)
    assert prefill.flops_breakdown["attention_scores"] == b * 2 * 2 * (H * d) * p * (W + p) * 2
    assert unaware.decode_step(b, c).bytes_breakdown["kv_cache"] == 4 * b * 2 * (G * d) * S * (c + 1)
    assert aware.decode_step(b, W - 1).bytes == unaware.decode_step(b, W - 1).bytes

    # Removing the sliding layer 0 saves less than removing the global layer 1 past the window, as much within it.
    without_sliding = ModelCost.from_config(config, pruned_layers=[0])
    without_global = ModelCost.from_config(config, pruned_layers=[1])
    for phase in ("prefill", "decode"):
        long = [
            ideal_speedup(aware, m, phase, 1, 64)["memory_bound" if phase == "decode" else "compute_bound"]
            for m in (without_sliding, without_global)
        ]
        assert 1 < long[0] < long[1], (phase, long)
        short = [
            ideal_speedup(aware, m, phase, 1, W)["memory_bound" if phase == "decode" else "compute_bound"]
            for m in (without_sliding, without_global)
        ]
        assert short[0] == pytest.approx(short[1]), (phase, short)
    with pytest.raises(InvalidConfigError, match="sliding_layers need a sliding_window"):
        replace(aware, sliding_window=None)
    with pytest.raises(InvalidConfigError, match=r"sliding_layers \[7\] must be in 0..3"):
        replace(aware, sliding_layers=(7,))
