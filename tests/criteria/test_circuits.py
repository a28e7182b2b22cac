"""The weight-only circuit criteria (ov_norm, gate_ov, ov_relative) and the breakdown warning."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import ALL_TINY, ROOT, tiny_model

from optimum_gatenorm import GateNormConfig, GateNormPruner
from optimum_gatenorm.adapters import HeadDims, get_adapter
from optimum_gatenorm.checkpoints.tensors import ModelWeights, layer_weights
from optimum_gatenorm.criteria import get_criterion
from optimum_gatenorm.criteria.circuits import StackWeights, _activation, mlp_output_norm, ov_norm_squared
from optimum_gatenorm.criteria.gate import gate_norm
from optimum_gatenorm.criteria.measurements import FIRST_K_WORSE_THAN_RANDOM, MEASUREMENTS, breakdown_warning


NEW = ("ov_norm", "gate_ov", "ov_relative")


def _single_token_attention_io(model, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and outputs of the real attention module for one-token sequences (every token id once).

    With one token, softmax is 1 for every head, so the sublayer is the affine map `x -> sum_h O_h V_g x + b`.
    """
    adapter = get_adapter(model.config)
    attention = getattr(model.get_submodule(adapter.layers)[layer], adapter.attention)
    seen = {}

    def capture_input(module, args, kwargs):
        seen["x"] = kwargs.get("hidden_states", args[0] if args else None).detach()

    def capture_output(module, args, output):
        seen["y"] = output[0].detach()

    handles = [
        attention.register_forward_pre_hook(capture_input, with_kwargs=True),
        attention.register_forward_hook(capture_output),
    ]
    with torch.no_grad():
        model(input_ids=torch.arange(model.config.vocab_size)[:, None])
    for handle in handles:
        handle.remove()
    return seen["x"][:, 0].double(), seen["y"][:, 0].double()


@pytest.mark.parametrize("name", sorted(ALL_TINY))
def test_extracted_value_and_output_projections_reproduce_the_attention_module(name):
    model = tiny_model(name)
    for layer in range(model.config.num_hidden_layers):
        weights = layer_weights(ModelWeights(model), model.config, layer, with_norm=True, with_ov=True)
        v, o = weights.v.double(), weights.o.double()
        dims = HeadDims.from_config(model.config)
        assert v.shape == (dims.num_kv_heads, dims.head_dim, dims.hidden_size)
        assert o.shape == (dims.num_heads, dims.hidden_size, dims.head_dim)
        expected = sum(o[h] @ v[h // weights.group_size] for h in range(dims.num_heads))
        x, y = _single_token_attention_io(model, layer)
        bias = y - x @ expected.T  # must be the same vector for every input: the output bias (zero or not)
        assert torch.allclose(bias, bias.mean(dim=0), atol=1e-4 * y.abs().max()), f"layer {layer}"
        assert (x @ expected.T).std() > 10 * 1e-4 * y.abs().max()  # the map is not trivially zero


@pytest.mark.parametrize("name", ["llama", "mistral", "llama_mha"])
def test_ov_norm_is_the_root_sum_of_per_head_dense_norms(name):
    model = tiny_model(name)
    with torch.no_grad():
        model.model.layers[1].input_layernorm.weight.uniform_(0.2, 2.0)  # a non-trivial gain
    weights = layer_weights(ModelWeights(model), model.config, 1, with_norm=True, with_ov=True)
    v, o, gain = weights.v.double(), weights.o.double(), weights.norm.double()
    dense = sum(
        torch.linalg.matrix_norm(o[h] @ v[h // weights.group_size] @ torch.diag(gain)) ** 2 for h in range(o.shape[0])
    )
    assert ov_norm_squared(weights) == pytest.approx(float(dense), rel=1e-5)
    assert get_criterion("ov_norm").fn(weights) == pytest.approx(math.sqrt(float(dense)), rel=1e-5)
    assert get_criterion("gate_ov").fn(weights) == pytest.approx(
        gate_norm(weights) * math.sqrt(float(dense)), rel=1e-5
    )


SANDWICH = [name for name in sorted(ALL_TINY) if get_adapter(ALL_TINY[name]["model_type"]).attention_output_norm]


@pytest.mark.parametrize("name", SANDWICH)
def test_sandwich_norms_enter_ov_norm_and_the_mlp_output_norm(name):
    """With an RMSNorm of gain g on a sublayer's output a, the update's expected squared norm is
    D * sum_i g_i^2 C_ii / tr(C), C the covariance of a (float64 reference of the documented formula)."""
    model = tiny_model(name)
    adapter = get_adapter(model.config)
    layer = model.get_submodule(adapter.layers)[1]
    with torch.no_grad():  # non-trivial gains (stored as w, applied as 1 + w)
        for norm in (adapter.input_norm, adapter.post_norm, adapter.attention_output_norm, adapter.mlp_output_norm):
            getattr(layer, norm).weight.uniform_(-0.8, 0.8)
    weights = layer_weights(ModelWeights(model), model.config, 1, with_norm=True, with_ov=True)
    gamma = 1 + layer.input_layernorm.weight.detach().double()
    g = 1 + getattr(layer, adapter.attention_output_norm).weight.detach().double()
    torch.testing.assert_close(weights.out_norm.double(), g)
    v, o = weights.v.double(), weights.o.double()
    dense = [o[h] @ v[h // weights.group_size] @ torch.diag(gamma) for h in range(o.shape[0])]
    covariance = sum(m @ m.T for m in dense)
    expected = covariance.shape[0] * float((g.square() * covariance.diagonal()).sum() / covariance.trace())
    assert ov_norm_squared(weights) == pytest.approx(expected, rel=1e-5)
    assert get_criterion("ov_norm").fn(weights) == pytest.approx(math.sqrt(expected), rel=1e-5)

    # The MLP: per-coordinate second moments of its output, then the same weighting by the post-MLP norm gain.
    stack = StackWeights(ModelWeights(model), model.config, [0, 1, 2, 3])
    prefix = f"{adapter.layer_prefix(1)}.{adapter.mlp}."
    tensors = {n[len(prefix) :]: stack._tensor(n).double() for n in adapter.mlp_tensor_names(1)}
    gate, up, down = adapter.mlp_layout.extract(tensors)
    act = _activation(model.config, adapter.mlp_layout.activation)
    pre = 1 + getattr(layer, adapter.post_norm).weight.detach().double()
    post = 1 + getattr(layer, adapter.mlp_output_norm).weight.detach().double()
    plain = mlp_output_norm(gate, up, down, pre, act)
    folded = mlp_output_norm(gate, up, down, pre, act, out_gain=post)
    assert stack.mlp_output_norm(1) == pytest.approx(folded, rel=1e-5)
    x = torch.randn(200_000, model.config.hidden_size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = (act(x * pre @ gate.T) * (x * pre @ up.T)) @ down.T
    moments = y.square().mean(dim=0)
    sampled = math.sqrt(len(moments) * float((post.square() * moments).sum() / moments.sum()))
    assert folded == pytest.approx(sampled, rel=0.05)  # Monte Carlo of the documented formula
    assert plain == pytest.approx(float(moments.sum().sqrt()), rel=0.05)
    assert folded != pytest.approx(plain, rel=0.05)  # the output norm does change the estimate


@pytest.mark.parametrize("name", sorted(ALL_TINY))
def test_mlp_layout_reproduces_the_mlp_module(name):
    model = tiny_model(name)
    adapter = get_adapter(model.config)
    stack = StackWeights(ModelWeights(model), model.config, list(range(model.config.num_hidden_layers)))
    layer = 1
    prefix = f"{adapter.layer_prefix(layer)}.{adapter.mlp}."
    tensors = {n[len(prefix) :]: stack._tensor(n) for n in adapter.mlp_tensor_names(layer)}
    gate, up, down = adapter.mlp_layout.extract(tensors)
    act = _activation(model.config, adapter.mlp_layout.activation)
    x = torch.randn(5, model.config.hidden_size)
    hidden = act(x @ gate.T) * (x @ up.T) if gate is not None else act(x @ up.T)
    module = getattr(model.get_submodule(adapter.layers)[layer], adapter.mlp)
    with torch.no_grad():
        expected = module(x)
    bias = getattr(getattr(module, adapter.mlp_layout.down), "bias", None)
    ours = hidden @ down.T + (bias if bias is not None else 0)
    assert torch.allclose(ours, expected, atol=1e-5)


@pytest.mark.parametrize("gated", [True, False])
def test_mlp_output_norm_matches_monte_carlo(gated):
    generator = torch.Generator().manual_seed(0)
    hidden, inner = 24, 96
    gate = torch.randn(inner, hidden, generator=generator, dtype=torch.float64) * 0.4 if gated else None
    up = torch.randn(inner, hidden, generator=generator, dtype=torch.float64) * 0.4
    if gated:  # correlated gate and up rows, as trained gated MLPs have
        up = 0.6 * gate + 0.8 * up
    down = torch.randn(hidden, inner, generator=generator, dtype=torch.float64) * 0.2
    gain = torch.rand(hidden, generator=generator, dtype=torch.float64) + 0.5
    act = torch.nn.functional.silu if gated else torch.nn.functional.gelu
    estimate = mlp_output_norm(gate, up, down, gain, act)
    x = torch.randn(200_000, hidden, generator=generator, dtype=torch.float64) * gain
    h = act(x @ gate.T) * (x @ up.T) if gated else act(x @ up.T)
    sampled = float((h @ down.T).square().sum(dim=1).mean().sqrt())
    # The estimate neglects correlations between neurons around their means: a few percent here.
    assert estimate == pytest.approx(sampled, rel=0.05)
    assert estimate != pytest.approx(sampled * 1.2, rel=0.05)  # the tolerance does separate a wrong scale


@pytest.mark.parametrize("name", sorted(ALL_TINY))
def test_ov_relative_is_ov_norm_over_the_estimated_residual_scale(name):
    model = tiny_model(name)
    total = model.config.num_hidden_layers
    stack = StackWeights(ModelWeights(model), model.config, list(range(total)))
    residual = stack.residual_norms()
    adapter = get_adapter(model.config)
    embedding = model.get_input_embeddings().weight.detach().double()
    scale = math.sqrt(model.config.hidden_size) if adapter.numerics.embedding_scale == "sqrt_hidden" else 1.0
    assert residual[0] == pytest.approx(float(embedding.square().sum(dim=1).mean().sqrt()) * scale, rel=1e-5)
    if adapter.cost.position_embeddings_attr is None:  # then the stream entering layer 0 is exactly that
        with torch.no_grad():  # (Gemma scales the embedding by sqrt(hidden), inside or outside its module)
            ids = torch.arange(model.config.vocab_size)[:, None]
            embedded = model(input_ids=ids, output_hidden_states=True).hidden_states[0][:, 0].double()
        assert residual[0] == pytest.approx(float(embedded.square().sum(dim=1).mean().sqrt()), rel=1e-5)
    for layer in range(1, total):
        grown = (
            residual[layer - 1] ** 2
            + stack.attention_output_norm(layer - 1) ** 2
            + stack.mlp_output_norm(layer - 1) ** 2
        )
        assert residual[layer] == pytest.approx(math.sqrt(grown), rel=1e-6)
    report = GateNormPruner(model).score("ov_relative")
    assert report.data_free
    expected = [stack.attention_output_norm(i) / residual[i] for i in range(total)]
    assert report.scores == pytest.approx(expected, rel=1e-5)


def test_ov_relative_of_a_pruned_checkpoint_leaves_removed_attention_out_of_the_residual(tmp_path):
    model = tiny_model("llama")
    unpruned = GateNormPruner(model).score("ov_relative").scores
    pruner = GateNormPruner(model)
    pruned_model, _ = pruner.prune(
        GateNormConfig(num_layers=1, exclude_layers=(2, 3), replacement="none")
    )  # removes layer 1
    pruned_model.save_pretrained(tmp_path)
    again = GateNormPruner.from_pretrained(tmp_path).score("ov_relative")
    assert again.scores[1] is None and again.pruned_layers == [1]
    assert again.scores[0] == pytest.approx(unpruned[0], rel=1e-5)  # nothing before layer 0 changed
    for layer in (2, 3):  # less residual above the removed sublayer: a larger relative contribution
        assert again.scores[layer] > unpruned[layer]


@pytest.mark.parametrize("name", sorted(ALL_TINY))
@pytest.mark.parametrize("criterion", NEW)
def test_new_criteria_stream_from_checkpoints_like_in_memory(name, criterion, tmp_path):
    model = tiny_model(name)
    model.save_pretrained(tmp_path)
    streamed = GateNormPruner.from_pretrained(tmp_path).score(criterion)
    in_memory = GateNormPruner(model).score(criterion)
    assert streamed.source == "checkpoint" and in_memory.source == "model"
    assert streamed.scores == pytest.approx(in_memory.scores, rel=1e-5)
    assert all(s > 0 for s in streamed.scores)


def test_new_criteria_fail_loudly_on_corrupt_value_weights():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[2].self_attn.v_proj.weight[0, 0] = float("nan")
    from optimum_gatenorm.errors import InvalidCheckpointError

    for criterion in NEW:
        with pytest.raises(InvalidCheckpointError, match="layer 2: the value weights hold NaN"):
            GateNormPruner(model).score(criterion)
    GateNormPruner(model).score("gate_norm")  # Gate-Norm reads no values


def test_gate_trace_is_the_expected_self_match_logit():
    """-gate_trace equals the average over isotropic inputs of sum_h q_h(x) . k_h(x) / sqrt(d), with the gain."""
    model = tiny_model("llama")  # GQA: 4 query heads on 2 key heads
    with torch.no_grad():
        model.model.layers[1].input_layernorm.weight.uniform_(0.2, 2.0)
    weights = layer_weights(ModelWeights(model), model.config, 1, with_norm=True)
    q, k = weights.q.double(), weights.k.double().repeat_interleave(weights.group_size, dim=0)
    x = torch.randn(400_000, q.shape[2], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x * weights.norm.double()
    logits = torch.einsum("hdn,bn,hdm,bm->b", q, x, k, x) / q.shape[1] ** 0.5
    spread = float(logits.std()) / len(logits) ** 0.5
    assert abs(float(logits.mean()) + get_criterion("gate_trace").fn(weights)) < 4 * spread


@pytest.mark.parametrize("measured_on", sorted(MEASUREMENTS))
def test_breakdown_warning_follows_the_measured_table(measured_on):
    measurement = MEASUREMENTS[measured_on]
    n, top = measurement.layers, measurement.max_k
    assert measurement.first_k_worse, "the criterion study's numbers are missing"

    def warn(criterion, gap, k, total):
        return breakdown_warning(criterion, gap, k, total, measured_on=measured_on)

    for (criterion, gap), first in measurement.first_k_worse.items():
        if first is None:
            assert warn(criterion, gap, top, n) is None
            assert "beyond what was measured" in warn(criterion, gap, top + 1, n)
            continue
        if first > 1:
            assert warn(criterion, gap, first - 1, n) is None
            assert warn(criterion, gap, 2 * first - 2, 2 * n) is None  # scaled by depth
        message = warn(criterion, gap, first, n)
        assert f"at k={first}" in message and measurement.model in message and measurement.advice in message
        assert warn(criterion, gap, 2 * first, 2 * n) is not None
    for reference in ("cosine", "attn_norm", "random"):  # references: only the measured range
        assert warn(reference, 1, top, n) is None and "beyond what was measured" in warn(reference, 1, top + 1, n)
    assert "was not measured" in warn("no_such_criterion", 1, 1, n)
    assert warn("gate_norm", 1, 0, n) is None


STUDIES = ROOT / "benchmarks" / "criteria"


def worse_than_random_in_study(directory: Path) -> dict[tuple[str, int], tuple[int, ...]]:
    """`(criterion, min_gap)` -> the ks at which the criterion's perplexity is above the median random draw on any
    text of a criterion-study directory (`benchmarks/criterion_study.py` records)."""
    result: dict[tuple[str, int], set[int]] = {}
    for path in sorted(directory.glob("*.json")):
        record = json.loads(path.read_text())
        random_median = record["curves"]["random"]
        for key, curve in record["curves"].items():
            if key == "random" or key.endswith("(re-scored)"):
                continue
            name, _, rule = key.partition(" (min_gap=")
            gap = int(rule.rstrip(")")) if rule else 1
            worse = {int(k) for k in curve if int(k) > 0 and curve[k] > random_median[k]}
            result.setdefault((name, gap), set()).update(worse)
    return {key: tuple(sorted(ks)) for key, ks in result.items()}


@pytest.mark.parametrize("measured_on", sorted(MEASUREMENTS))
def test_measured_tables_are_the_recorded_study(measured_on):
    """The numbers `prune` warns with are those of the study's JSON records, on every text (none copied wrong)."""
    measurement = MEASUREMENTS[measured_on]
    recorded = worse_than_random_in_study(STUDIES / measured_on)
    assert set(measurement.worse_at) <= set(recorded), set(measurement.worse_at) - set(recorded)
    for key, ks in measurement.worse_at.items():
        assert ks == recorded[key], (key, ks, recorded[key])
    assert ("cosine_self", 1) in measurement.worse_at  # the default
    records = [json.loads(p.read_text()) for p in sorted((STUDIES / measured_on).glob("*.json"))]
    assert len(records) >= 3 and all(r["num_layers"] == measurement.layers for r in records)
    assert sorted({int(k) for r in records for k in r["curves"]["random"] if int(k) > 0}) == list(measurement.ks)
    assert all(len(r["random_per_seed"]) >= 7 for r in records)


def test_breakdown_warning_looks_at_the_largest_measured_k_not_above_the_request():
    # cosine_self on SmolLM2: worse than random at k = 2 only, better from k = 4 to 12
    assert "at k=2" in breakdown_warning("cosine_self", 1, 2, 30) and "at k=2" in breakdown_warning(
        "cosine_self", 1, 3, 30
    )
    assert all(breakdown_warning("cosine_self", 1, k, 30) is None for k in range(4, 13))
    assert breakdown_warning("cosine_self", 1, 1, 30) is None  # below every measured k
    assert "at k=2" in breakdown_warning("cosine_self", 1, 4, 60)  # scaled: 4 of 60 is 2 of 30
    assert "beyond what was measured" in breakdown_warning("cosine_self", 1, 13, 30)
    # gate_norm on Gemma: worse at k = 2-4, not at 5-7 (where random is worse still)
    assert "at k=4" in breakdown_warning("gate_norm", 1, 4, 18, measured_on="gemma3-270m")
    assert breakdown_warning("gate_norm", 1, 5, 18, measured_on="gemma3-270m") is None


def test_breakdown_warning_says_when_a_family_was_never_measured():
    message = breakdown_warning("gate_trace", 2, 1, 30, measured_on=None)
    assert "no criterion was measured on this architecture's family" in message and "\n" not in message
    assert all(m.model in message for m in MEASUREMENTS.values())
    assert breakdown_warning("gate_trace", 2, 0, 30, measured_on=None) is None
    assert FIRST_K_WORSE_THAN_RANDOM is MEASUREMENTS["smollm2-135m"].first_k_worse
    # Which adapters point where: the Llama layouts at SmolLM2, the sandwich-norm Gemmas at Gemma-3-270M.
    from optimum_gatenorm.adapters import get_adapter

    expected = {"llama": "smollm2-135m", "mistral": "smollm2-135m", "qwen2": "smollm2-135m", "phi3": "smollm2-135m"}
    expected.update({"gemma3_text": "gemma3-270m", "gemma2": "gemma3-270m", "qwen3": None, "gpt2": None})
    for model_type, reference in expected.items():
        assert get_adapter(model_type).quality_reference == reference
    assert {"smollm2-135m", "gemma3-270m"} <= set(MEASUREMENTS)
