"""Scoring criteria against naive references, and checkpoint streaming against in-memory scoring."""

import pytest
import torch
from conftest import ALL_TINY, save_sharded, tiny_model

from optimum_gatenorm import DEFAULT_CRITERION, GateNormPruner, available_criteria, get_criterion, register_criterion
from optimum_gatenorm.adapters import HeadDims, get_adapter
from optimum_gatenorm.checkpoints.tensors import AttentionWeights, ModelWeights, layer_weights
from optimum_gatenorm.criteria.gate import frobenius_of_product


def _reference(criterion: str, q, k, norm) -> float:
    """The paper's definitions, literally, in float64, with K heads explicitly repeated to their query heads."""
    q, k, norm = q.double(), k.double(), norm.double()
    heads, d, hidden = q.shape
    k_expanded = k.repeat_interleave(heads // k.shape[0], dim=0)  # query head h uses key head h // group
    if criterion == "gate_norm_folded":
        q, k_expanded = q * norm, k_expanded * norm
    if criterion == "gate_norm_head":
        return sum(torch.linalg.matrix_norm(q[h].T @ k_expanded[h]).item() for h in range(heads))
    if criterion == "gate_trace":  # minus the summed trace of diag(g) W_Q^h W_K^h^T diag(g), over sqrt(d)
        gain = torch.diag(norm)
        return -sum(torch.trace(gain @ q[h].T @ k_expanded[h] @ gain).item() for h in range(heads)) / d**0.5
    w_q = q.reshape(heads * d, hidden).T  # hidden x (heads * d)
    w_k = k_expanded.reshape(heads * d, hidden).T
    return torch.linalg.matrix_norm(w_q @ w_k.T).item()


# (heads, kv_heads, head_dim, hidden): MHA, GQA, MQA; r = kv_heads * head_dim below and above hidden.
SHAPES = {
    "mha": (4, 4, 8, 32),
    "mha_wide": (8, 8, 8, 16),
    "gqa": (8, 2, 8, 32),
    "gqa_wide": (6, 3, 16, 24),
    "mqa": (4, 1, 8, 32),
}


@pytest.mark.parametrize("criterion", ["gate_norm", "gate_norm_head", "gate_norm_folded", "gate_trace"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_criteria_match_float64_reference(criterion, shape):
    heads, kv_heads, head_dim, hidden = shape
    generator = torch.Generator().manual_seed(sum(shape))
    q = torch.randn(heads, head_dim, hidden, generator=generator)
    k = torch.randn(kv_heads, head_dim, hidden, generator=generator)
    norm = torch.rand(hidden, generator=generator) * 2
    got = get_criterion(criterion).fn(AttentionWeights(0, q, k, norm))
    assert got == pytest.approx(_reference(criterion, q, k, norm), rel=1e-5)


QK_NORMED = [name for name in sorted(ALL_TINY) if get_adapter(ALL_TINY[name]["model_type"]).qk_norms]


@pytest.mark.parametrize("name", QK_NORMED)
@pytest.mark.parametrize("criterion", ["gate_norm", "gate_norm_head", "gate_norm_folded", "gate_trace"])
def test_query_key_norm_gains_are_folded_in(name, criterion):
    """With per-head q/k RMSNorms the criteria score W_Q^h diag(g_q g_k) W_K^h^T, each projection divided by the
    expected RMS of its head's output for an input gamma * x_hat (AttentionWeights.gate), in float64."""
    model = tiny_model(name)
    adapter = get_adapter(model.config)
    offset = adapter.numerics.norm_gain_offset
    layer = model.get_submodule(adapter.layers)[2]
    attention = getattr(layer, adapter.attention)
    with torch.no_grad():  # non-trivial gains everywhere
        for norm in (attention.q_norm, attention.k_norm, layer.input_layernorm):
            norm.weight.uniform_(-0.6, 0.6)
    weights = layer_weights(ModelWeights(model), model.config, 2, with_norm=get_criterion(criterion).uses_norm)
    dims = HeadDims.from_config(model.config)
    d = dims.head_dim
    gamma = layer.input_layernorm.weight.detach().double() + offset
    g_q = attention.q_norm.weight.detach().double() + offset
    g_k = attention.k_norm.weight.detach().double() + offset
    q = attention.q_proj.weight.detach().double().reshape(dims.num_heads, d, dims.hidden_size)
    k = attention.k_proj.weight.detach().double().reshape(dims.num_kv_heads, d, dims.hidden_size)
    q = torch.stack([g_q[:, None] * g_k[:, None] * q[h] / ((q[h] * gamma).norm() / d**0.5) for h in range(len(q))])
    k = torch.stack([k[g] / ((k[g] * gamma).norm() / d**0.5) for g in range(len(k))])
    expected = _reference(criterion, q, k, gamma)
    assert get_criterion(criterion).fn(weights) == pytest.approx(expected, rel=1e-5)
    # The raw projections give another score: the norms are not ignored.
    raw = AttentionWeights(2, weights.q, weights.k, gamma.float())
    assert get_criterion(criterion).fn(raw) != pytest.approx(expected, rel=1e-3)
    # The per-token normalisation makes the score independent of the projections' scale.
    with torch.no_grad():
        attention.q_proj.weight.mul_(3.0)
        attention.k_proj.weight.mul_(0.5)
    scaled = layer_weights(ModelWeights(model), model.config, 2, with_norm=True)
    assert get_criterion(criterion).fn(scaled) == pytest.approx(expected, rel=1e-5)


def test_gram_and_direct_products_agree():
    a, b = torch.randn(64, 16, dtype=torch.float64), torch.randn(64, 16, dtype=torch.float64)
    direct = torch.linalg.matrix_norm(a.T @ b).item()
    assert frobenius_of_product(a, b) == pytest.approx(direct, rel=1e-12)  # r >= n: direct product
    assert frobenius_of_product(a.T.contiguous()[:8], b.T.contiguous()[:8]) == pytest.approx(
        torch.linalg.matrix_norm(a.T[:8].T @ b.T[:8]).item(), rel=1e-12
    )  # r < n: Gram matrices


def test_registry_rejects_duplicates_and_lists_names_on_miss():
    with pytest.raises(ValueError, match="already registered"):
        register_criterion("gate_norm", description="dup")(lambda w: 0.0)
    with pytest.raises(ValueError, match="gate_norm, gate_norm_folded, gate_norm_head"):
        get_criterion("nope")
    assert {"gate_norm", "gate_norm_head", "gate_norm_folded"} <= set(available_criteria())


@pytest.mark.parametrize("name", sorted(ALL_TINY))
@pytest.mark.parametrize("criterion", ["gate_norm", "gate_norm_head", "gate_norm_folded", "gate_trace"])
def test_checkpoint_streaming_matches_in_memory(name, criterion, tmp_path):
    model = tiny_model(name)
    model.save_pretrained(tmp_path / "single")
    save_sharded(model, tmp_path / "sharded")
    in_memory = GateNormPruner(model).score(criterion)
    assert in_memory.source == "model"
    for folder in ("single", "sharded"):
        streamed = GateNormPruner.from_pretrained(tmp_path / folder).score(criterion)
        assert streamed.source == "checkpoint"
        assert streamed.scores == pytest.approx(in_memory.scores, rel=1e-5)
        assert streamed.ranking == in_memory.ranking
    assert len(in_memory.scores) == model.config.num_hidden_layers
    assert all(s > 0 for s in in_memory.scores) or criterion == "gate_trace"  # a trace has either sign
    assert len(set(in_memory.scores)) == len(in_memory.scores)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_half_precision_checkpoints_are_upcast(dtype, tmp_path):
    model = tiny_model("llama", dtype=dtype)
    model.save_pretrained(tmp_path)
    streamed = GateNormPruner.from_pretrained(tmp_path).score("gate_trace")  # weight-level: read and upcast
    reference = GateNormPruner(model.float()).score("gate_trace")  # same stored values, upcast in memory
    assert streamed.scores == pytest.approx(reference.scores, rel=1e-5)


def test_ranking_is_lowest_first_and_scoring_reads_no_mlp(tmp_path):
    model = tiny_model("llama")
    with torch.no_grad():  # make layer 2 the weakest gate and wreck an MLP weight: scores must not care
        model.model.layers[2].self_attn.q_proj.weight.mul_(0.01)
        model.model.layers[1].mlp.up_proj.weight.fill_(float("nan"))
    report = GateNormPruner(model).score("gate_norm")
    assert report.ranking[0] == 2
    assert [report.scores[i] for i in report.ranking] == sorted(report.scores)


def test_gate_trace_removes_the_most_self_matching_layer_first_and_reads_no_mlp():
    model = tiny_model("llama")  # 4 query heads on 2 key heads of 8 dims
    with torch.no_grad():  # layer 3's queries equal its keys: every head prefers tokens like the query itself
        k = model.model.layers[3].self_attn.k_proj.weight
        model.model.layers[3].self_attn.q_proj.weight.copy_(k.reshape(2, 1, 8, 32).expand(2, 2, 8, 32).reshape(32, 32))
        model.model.layers[1].mlp.up_proj.weight.fill_(float("nan"))
    report = GateNormPruner(model).score("gate_trace")
    assert report.criterion == "gate_trace" != DEFAULT_CRITERION
    assert report.ranking[0] == 3 and report.scores[3] < 0
    assert [report.scores[i] for i in report.ranking] == sorted(report.scores)


def test_score_report_json_roundtrip(tmp_path):
    from optimum_gatenorm import ScoreReport

    report = GateNormPruner(tiny_model("gpt2")).score("gate_norm_head")
    report.save(tmp_path / "r.json")
    again = ScoreReport.from_json(tmp_path / "r.json")
    assert again.scores == report.scores and again.ranking == report.ranking
    assert again.criterion == "gate_norm_head" and report.to_dict()["ranking"] == report.ranking
