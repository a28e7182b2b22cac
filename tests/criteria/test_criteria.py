"""Baseline criteria (`cosine`, `attn_norm`, `random`, `last`) in the criteria registry, and calibration data."""

import math

import pytest
import torch
from conftest import ALL_TINY, tiny_model, tiny_tokenizer

from optimum_gatenorm import (
    Calibration,
    GateNormConfig,
    GateNormPruner,
    InvalidConfigError,
    PruningReport,
    ScoreReport,
    available_criteria,
    get_adapter,
    get_criterion,
    prune_model,
)
from optimum_gatenorm.criteria.baselines import attention_statistics


BASELINES = ["attn_norm", "cosine", "last", "random"]
DATA_DRIVEN = ["attn_norm", "cosine"]
PLANTED = 2  # not layer 0, which protect_first keeps
TEXT = (
    "the quick brown fox jumps over the lazy dog. pack my box with five dozen liquor jugs, "
    "and sphinx of black quartz, judge my vow.\n"
) * 4


def token_windows(num_samples=4, length=16, batch_size=2) -> Calibration:
    ids = torch.randint(0, 128, (num_samples, length), generator=torch.Generator().manual_seed(0))
    return Calibration(ids, batch_size=batch_size)


def silence_attention(model, layer: int) -> None:
    """Zeroes the attention output projection of `layer` (weight and bias): its sublayer adds nothing."""
    adapter = get_adapter(model.config)
    attention = getattr(model.get_submodule(adapter.layers)[layer], adapter.attention)
    # llama/mistral/qwen2/phi3: o_proj; gpt2: c_proj (Conv1D); gpt_neox: dense
    projection = next(getattr(attention, n) for n in ("o_proj", "c_proj", "dense") if hasattr(attention, n))
    with torch.no_grad():
        projection.weight.zero_()
        if projection.bias is not None:
            projection.bias.zero_()


def test_registry_lists_baselines_with_their_requirements():
    assert set(BASELINES) <= set(available_criteria())
    with pytest.raises(
        ValueError,
        match="attn_norm, attn_norm_self, cosine, cosine_self, gate_norm, gate_norm_folded, gate_norm_head, gate_ov, gate_trace, last, ov_norm",
    ):
        get_criterion("nope")
    for name in DATA_DRIVEN:
        c = get_criterion(name)
        assert c.model_level and c.needs_data and not c.data_free and c.needs_model
    for name in ("random", "last"):
        c = get_criterion(name)
        assert c.model_level and c.data_free and not c.needs_model
    assert get_criterion("random").uses_seed and not get_criterion("last").uses_seed
    gate = get_criterion("gate_norm")
    assert not gate.model_level and gate.data_free


@pytest.mark.parametrize("name", sorted(ALL_TINY))
def test_every_baseline_scores_every_architecture(name):
    model = tiny_model(name)
    pruner = GateNormPruner(model)
    calibration = token_windows()
    for criterion in BASELINES:
        report = pruner.score(criterion, calibration=calibration, seed=3)
        assert len(report.scores) == model.config.num_hidden_layers
        assert all(isinstance(s, float) and math.isfinite(s) for s in report.scores), (criterion, report.scores)
        assert report.data_free == get_criterion(criterion).data_free
        assert (report.calibration is not None) == (criterion in DATA_DRIVEN)
    assert not model.training


@pytest.mark.parametrize("name", sorted(ALL_TINY))
def test_silenced_attention_ranks_first(name):
    model = tiny_model(name)
    silence_attention(model, PLANTED)
    for criterion in DATA_DRIVEN:
        report = GateNormPruner(model).score(criterion, calibration=token_windows())
        assert report.ranking[0] == PLANTED, (criterion, report.scores)
        assert report.scores[PLANTED] == pytest.approx(0.0, abs=1e-6)
        assert min(s for i, s in enumerate(report.scores) if i != PLANTED) > 1e-4


def test_random_is_seeded_and_last_goes_deepest_first():
    pruner = GateNormPruner(tiny_model("llama"))
    first = pruner.score("random", seed=7)
    assert pruner.score("random", seed=7).scores == first.scores
    assert first.seed == 7 and pruner.score("last").seed is None
    assert pruner.score("random", seed=8).scores != first.scores
    rankings = {tuple(pruner.score("random", seed=s).ranking) for s in range(10)}
    assert len(rankings) > 1  # 10 seeds giving one permutation of 4 layers has probability 24**-9
    assert pruner.score("last").ranking == [3, 2, 1, 0]


def _reference_statistics(model, ids):
    """`cos(X, X + A)` and `||A|| / ||X||` per layer, with X from `output_hidden_states` and A from calling
    the llama modules by hand (explicit causal mask and rotary embeddings), in float64 means."""
    layers = model.model.layers
    out = model(input_ids=ids, output_hidden_states=True)
    length = ids.shape[1]
    mask = torch.full((length, length), float("-inf")).triu(1)[None, None]
    position_ids = torch.arange(length)[None]
    cosines, ratios = [], []
    for i, layer in enumerate(layers):
        x = out.hidden_states[i]
        rotary = model.model.rotary_emb(x, position_ids)
        a = layer.self_attn(layer.input_layernorm(x), position_embeddings=rotary, attention_mask=mask)[0]
        # A is what the layer adds: the next hidden state is (X + A) + MLP(norm(X + A)).
        h = x + a
        if i + 1 < len(layers):
            expected = h + layer.mlp(layer.post_attention_layernorm(h))
            torch.testing.assert_close(out.hidden_states[i + 1], expected, rtol=1e-5, atol=1e-5)
        x, a = x.double(), a.double()
        cos = (x * (x + a)).sum(-1) / (x.norm(dim=-1) * (x + a).norm(dim=-1))
        cosines.append(cos.mean().item())
        ratios.append((a.norm(dim=-1) / x.norm(dim=-1)).mean().item())
    return cosines, ratios


def test_cosine_and_attn_norm_match_a_hand_computed_reference():
    model = tiny_model("llama")
    calibration = token_windows(num_samples=3, length=12, batch_size=2)  # batches of 2 and 1
    with torch.no_grad():
        cosines, ratios = _reference_statistics(model, calibration.input_ids)
    pruner = GateNormPruner(model)
    cosine = pruner.score("cosine", calibration=calibration).scores
    attn_norm = pruner.score("attn_norm", calibration=calibration).scores
    assert cosine == pytest.approx([1 - c for c in cosines], abs=1e-5)
    assert attn_norm == pytest.approx(ratios, abs=1e-5)
    assert len(set(cosine)) == len(cosine)  # distinct: a layer-index mix-up would show


@pytest.mark.parametrize("criterion", DATA_DRIVEN)
def test_data_driven_criteria_need_calibration(criterion, tmp_path):
    with pytest.raises(InvalidConfigError, match=r"`calibration_text=\.\.\.`"):
        GateNormPruner(tiny_model("gpt2")).score(criterion)
    model = tiny_model("gpt2")
    model.save_pretrained(tmp_path)
    lazy = GateNormPruner.from_pretrained(tmp_path)
    with pytest.raises(InvalidConfigError, match=r"`calibration_text=\.\.\.`"):
        lazy.prune(GateNormConfig(num_layers=1, criterion=criterion, replacement="none"))
    assert lazy._model is None  # failed before loading the model


def test_calibration_windows_and_errors(tmp_path):
    tokenizer = tiny_tokenizer()
    assert len(tokenizer) < 128
    calibration = Calibration.from_text(TEXT, tokenizer, num_samples=3, length=10, batch_size=2)
    expected = tokenizer(TEXT, add_special_tokens=False)["input_ids"][:30]
    assert calibration.input_ids.tolist() == [expected[0:10], expected[10:20], expected[20:30]]
    assert [b.shape[0] for b in calibration.batches()] == [2, 1]
    assert calibration.to_dict() == dict(num_samples=3, length=10, num_tokens=30, batch_size=2, source="text")
    with pytest.raises(InvalidConfigError, match=r"has 11 tokens but 2 samples x 8 tokens = 16 are needed"):
        Calibration.from_text("hello world", tokenizer, num_samples=2, length=8)
    short = tmp_path / "short.txt"
    short.write_text("tiny", encoding="utf-8")
    with pytest.raises(InvalidConfigError, match=r"short\.txt\) has 4 tokens"):
        Calibration.from_files(short, tokenizer, num_samples=1, length=5)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(InvalidConfigError, match="length must be an integer >= 1"):
            Calibration.from_text(TEXT, tokenizer, length=bad)
    with pytest.raises(InvalidConfigError, match="integer token ids"):
        Calibration(torch.zeros(2, 3))
    with pytest.raises(InvalidConfigError, match=r"\[num_samples, length\]"):
        Calibration(torch.zeros(5, dtype=torch.long))
    with pytest.raises(InvalidConfigError, match="out of range for the model's vocabulary of 128"):
        GateNormPruner(tiny_model("llama")).score("cosine", calibration=Calibration(torch.full((1, 4), 500)))
    with pytest.raises(InvalidConfigError, match="seed must be an integer"):
        GateNormConfig(num_layers=1, criterion="random", seed="1")


def test_prune_from_checkpoint_with_calibration_text_removes_planted_layer(tmp_path):
    model = tiny_model("qwen2")
    silence_attention(model, PLANTED)
    model.save_pretrained(tmp_path / "ckpt")
    tiny_tokenizer().save_pretrained(tmp_path / "ckpt")
    (tmp_path / "calib.txt").write_text(TEXT, encoding="utf-8")

    pruner = GateNormPruner.from_pretrained(tmp_path / "ckpt")
    calibration = pruner.calibration_from_files(tmp_path / "calib.txt", num_samples=4, length=24)
    pruned, report = pruner.prune(
        GateNormConfig(num_layers=1, criterion="cosine", replacement="none"), calibration=calibration
    )
    assert report.removed_layers == [PLANTED] and report.pruned_layers == [PLANTED]
    assert report.data_free is False and report.scores_source == "model"
    assert report.calibration == dict(num_samples=4, length=24, num_tokens=96, batch_size=1, source="calib.txt")
    again = PruningReport.from_json(_saved(report, tmp_path / "report.json"))
    assert again.calibration == report.calibration and again.data_free is False
    assert again.config["criterion"] == "cosine" and again.config["seed"] == 0
    logits = pruned(input_ids=calibration.input_ids[:1]).logits
    assert torch.isfinite(logits).all()


def _saved(report, path):
    report.save(path)
    return path


def test_random_and_last_do_not_load_the_checkpoint(tmp_path):
    tiny_model("phi3").save_pretrained(tmp_path)
    pruner = GateNormPruner.from_pretrained(tmp_path)
    assert pruner.score("last").ranking == [3, 2, 1, 0]
    report = pruner.score("random", seed=1)
    assert report.source == "checkpoint" and report.data_free and pruner._model is None
    again = ScoreReport.from_dict(report.to_dict())
    assert again.seed == 1 and again.ranking == report.ranking


def test_prune_with_random_uses_the_config_seed():
    def removed(seed):
        pruner = GateNormPruner(tiny_model("llama"))
        stale = pruner.score("random", seed=seed + 1)  # scores for another seed are recomputed
        _, report = pruner.prune(
            GateNormConfig(num_layers=1, criterion="random", seed=seed, replacement="none"), scores=stale
        )
        assert report.scores == GateNormPruner(tiny_model("llama")).score("random", seed=seed).scores
        return report.removed_layers

    assert removed(5) == removed(5)
    assert len({tuple(removed(s)) for s in range(6)}) > 1


@pytest.mark.parametrize("name", ["llama", "gpt2", "gpt_neox"])
def test_pruned_layers_are_skipped(name):
    calibration = token_windows()
    before = {c: GateNormPruner(tiny_model(name)).score(c, calibration=calibration) for c in BASELINES}
    model = tiny_model(name)
    prune_model(model, [1])
    pruner = GateNormPruner(model)
    for criterion in BASELINES:
        report = pruner.score(criterion, calibration=calibration, seed=0)
        assert report.scores[1] is None and report.pruned_layers == [1]
        assert 1 not in report.ranking and len(report.ranking) == 3
        assert all(math.isfinite(report.scores[i]) for i in (0, 2, 3))
        if criterion in DATA_DRIVEN:  # layer 0 is upstream of the pruned layer: unchanged
            assert report.scores[0] == pytest.approx(before[criterion].scores[0], abs=1e-6)
            assert report.scores[2] != pytest.approx(before[criterion].scores[2], abs=1e-6)
    assert pruner.score("last").ranking == [3, 2, 0]


def test_hooks_are_removed_even_after_an_error():
    model = tiny_model("llama")
    with pytest.raises(IndexError):
        attention_statistics(model, [0, 1], Calibration(torch.full((1, 4), 200)))  # 200 >= vocab: embedding fails
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    GateNormPruner(model).score("cosine", calibration=token_windows())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def _gate_trace_reference(model) -> list[float]:
    """`-(1/sqrt(d)) sum_h tr(diag(g) W_Q^h W_K^{g(h)T} diag(g))` per layer, by hand from the llama modules, in
    float64."""
    config = model.config
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    d = config.hidden_size // heads
    scores = []
    for layer in model.model.layers:
        q = layer.self_attn.q_proj.weight.detach().double().reshape(heads, d, -1)
        k = layer.self_attn.k_proj.weight.detach().double().reshape(kv, d, -1).repeat_interleave(heads // kv, dim=0)
        gain = layer.input_layernorm.weight.detach().double()
        trace = sum(float(torch.trace(q[h] * gain @ (k[h] * gain).T)) for h in range(heads))
        scores.append(-trace / math.sqrt(d))
    return scores


def _rank_sum_reference(model) -> list[float]:
    """rank(gate_trace, float64 by hand) + rank(ov_relative) per layer, 0 for the lowest."""
    from optimum_gatenorm.criteria.routing import ranks

    writes = GateNormPruner(model).score("ov_relative").scores
    return [float(a + b) for a, b in zip(ranks(_gate_trace_reference(model)), ranks(writes), strict=True)]


def test_trace_write_sums_the_ranks_of_self_match_and_relative_write():
    for kinds in (None, ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]):
        model = tiny_model("llama")
        with torch.no_grad():
            model.model.layers[1].input_layernorm.weight.uniform_(0.2, 2.0)
            model.model.layers[3].self_attn.o_proj.weight.mul_(0.01)  # the smallest write, whatever its trace
        model.config.layer_types = kinds  # no special rule for a sliding-window model's full-attention layers
        scores = GateNormPruner(model).score("trace_write").scores
        assert scores == _rank_sum_reference(model)
        assert sorted(scores) != [scores[0]] * 4  # the ranks do differ
    assert get_criterion("trace_write").min_gap == 1


def test_trace_write_reads_the_sandwich_norm_gains_on_gemma():
    """On a sandwich-norm model the write is `||1 + w_post||` (the post-attention RMSNorm fixes its size), the
    residual `R_l^2 = e^2 + sum_{j<l} (||1 + w_post_attn_j||^2 + ||1 + w_post_ff_j||^2)`, in float64 here."""
    from optimum_gatenorm.checkpoints.tensors import ModelWeights
    from optimum_gatenorm.criteria.circuits import StackWeights
    from optimum_gatenorm.criteria.routing import ranks, relative_writes

    model = tiny_model("gemma3_text")
    layers = model.model.layers
    with torch.no_grad():
        for layer in layers:
            layer.post_attention_layernorm.weight.uniform_(-0.9, 1.5)
            layer.post_feedforward_layernorm.weight.uniform_(-0.9, 1.5)
    stack = StackWeights(ModelWeights(model), model.config, list(range(4)))
    residual2 = float(stack.embedding_norm()) ** 2
    expected = []
    for layer in layers:
        write = (1 + layer.post_attention_layernorm.weight.double()).norm().item()
        expected.append(write / residual2**0.5)
        residual2 += write**2 + (1 + layer.post_feedforward_layernorm.weight.double()).norm().item() ** 2
    assert relative_writes(stack) == pytest.approx(expected, rel=1e-5)
    scores = GateNormPruner(model).score("trace_write").scores
    traces = GateNormPruner(model).score("gate_trace").scores
    assert scores == [float(a + b) for a, b in zip(ranks(traces), ranks(expected), strict=True)]
