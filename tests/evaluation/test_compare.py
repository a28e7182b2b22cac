"""`compare`: masking equals pruning, Spearman, and the sweep end to end."""

import copy
import json
import math

import pytest
import torch
from conftest import ALL_TINY, tiny_model, tiny_tokenizer

from optimum_gatenorm import GateNormConfig, GateNormPruner, prune_model
from optimum_gatenorm.criteria import get_criterion
from optimum_gatenorm.evaluation.compare import CompareConfig, compare_criteria, mask_attention, spearman
from optimum_gatenorm.pruning.pruner import select_layers


IDS = torch.tensor([[3, 9, 27, 81, 115, 12, 40], [7, 21, 63, 101, 45, 8, 99]])


@pytest.mark.parametrize("name", sorted(ALL_TINY))
def test_masking_equals_structural_pruning(name):
    model = tiny_model(name)
    pruned = copy.deepcopy(model)
    prune_model(pruned, [0, 2])
    with torch.no_grad():
        before = model(IDS, use_cache=False).logits
        with mask_attention(model, [0, 2]):
            masked = model(IDS, use_cache=False).logits
        after = model(IDS, use_cache=False).logits
        expected = pruned(IDS, use_cache=False).logits
    torch.testing.assert_close(masked, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(before, after)  # hooks are gone afterwards
    assert not torch.allclose(masked, before, atol=1e-3)


def test_spearman_known_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties share their average rank: ranks [1, 2.5, 2.5, 4] vs [1, 2, 3, 4]
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        spearman([1], [1])


def test_each_distinct_set_is_evaluated_once(monkeypatch):
    """Criteria that agree on a set share one masked run per window; the numbers stay those of a run per point."""
    from conftest import tiny_tokenizer

    import optimum_gatenorm.evaluation.compare as compare
    from optimum_gatenorm.evaluation.perplexity import perplexity

    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    text = "the quick brown fox jumps over the lazy dog. " * 20
    calls = []
    real = compare.mask_attention
    monkeypatch.setattr(compare, "mask_attention", lambda m, layers: calls.append(tuple(layers)) or real(m, layers))
    config = compare.CompareConfig(criteria=["last", "random"], num_layers=[0, 1, 2], seeds=[0, 1, 2, 3], window=64)
    result = compare.compare_criteria(model, tokenizer, text, config)
    distinct = {tuple(p.removed_layers) for p in result.points if p.removed_layers}
    num_windows = math.ceil(len(text) / 64)  # one token per character
    assert len(calls) == len(distinct) * num_windows and set(calls) == distinct
    assert len(distinct) < len(result.points)
    for point in result.points:
        if not point.removed_layers:
            assert (point.perplexity, point.kl_mean, point.kl_p99, point.top1_agreement) == (
                result.baseline_perplexity, 0.0, 0.0, 1.0
            )  # fmt: skip
            continue
        pruned = copy.deepcopy(model)
        prune_model(pruned, point.removed_layers)  # structurally pruned, against the unpruned model as reference
        expected = perplexity(pruned, tokenizer, text, window=64, reference=model)
        assert point.perplexity == pytest.approx(expected.perplexity, rel=1e-6)
        assert point.kl_mean == pytest.approx(expected.kl_mean, rel=1e-4) and point.kl_mean > 0
        assert point.kl_p99 == pytest.approx(expected.kl_p99, rel=1e-4) and point.kl_p99 > point.kl_mean
        assert point.top1_agreement == pytest.approx(expected.top1_agreement, abs=2 / expected.num_tokens)
        assert point.top1_agreement < 1
    assert result.settings["bos"] is False  # the tiny tokenizer adds no BOS: recorded as resolved
    table = result.format_table()
    for title in ("perplexity on", "mean KL(unpruned || pruned)", "99th percentile of KL", "top-1 agreement"):
        assert table.count(title) == 1, table
    import json

    data = json.loads(result.to_json())
    assert {"kl_mean", "kl_p99", "top1_agreement"} <= set(data["points"][0])


def _calibration(seed: int = 0):
    from optimum_gatenorm.criteria.calibration import Calibration

    generator = torch.Generator().manual_seed(seed)
    return Calibration(torch.randint(0, 98, (8, 24), generator=generator), source="random ids")


@pytest.mark.parametrize("kind", ["mean", "linear"])
@pytest.mark.parametrize("name", sorted(ALL_TINY))
def test_replaced_masking_equals_pruning_with_the_replacement(name, kind):
    from optimum_gatenorm.pruning.replacement import fit_replacements, replaced_attention

    model = tiny_model(name)
    fit = fit_replacements(model, [0, 2], kind, _calibration())
    pruned = copy.deepcopy(model)
    prune_model(pruned, [0, 2], replacements=fit.layers)
    with torch.no_grad():
        before = model(IDS, use_cache=False).logits
        with replaced_attention(model, fit):
            replaced = model(IDS, use_cache=False).logits
        with mask_attention(model, [0, 2]):
            masked = model(IDS, use_cache=False).logits
        after = model(IDS, use_cache=False).logits
        expected = pruned(IDS, use_cache=False).logits
    torch.testing.assert_close(replaced, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(before, after)
    assert not torch.allclose(replaced, masked, atol=1e-3)


def test_compare_with_a_replacement_scores_what_prune_with_it_gives():
    """Each point of a `--replacement linear` sweep is the perplexity and KL of the model pruned with that fit."""
    from conftest import tiny_tokenizer

    from optimum_gatenorm.evaluation.compare import CompareConfig, compare_criteria
    from optimum_gatenorm.evaluation.perplexity import perplexity
    from optimum_gatenorm.pruning.replacement import fit_replacements

    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    text = "the quick brown fox jumps over the lazy dog. " * 6
    calibration = _calibration(1)
    results = {
        kind: compare_criteria(
            model,
            tokenizer,
            text,
            CompareConfig(criteria=["last"], num_layers=[0, 2], window=64, replacement=kind),
            calibration=calibration,
        )
        for kind in ("none", "linear")
    }
    point = next(p for p in results["linear"].points if p.num_layers == 2)
    assert results["linear"].settings["replacement"] == "linear"
    assert list(results["linear"].settings["replacement_fits"]) == [",".join(map(str, point.removed_layers))]
    assert results["none"].settings["replacement_fits"] == {}

    pruned = copy.deepcopy(model)
    fit = fit_replacements(model, point.removed_layers, "linear", calibration)
    prune_model(pruned, point.removed_layers, replacements=fit.layers)
    expected = perplexity(pruned, tokenizer, text, window=64, reference=model)
    assert point.perplexity == pytest.approx(expected.perplexity, rel=1e-5)
    assert point.kl_mean == pytest.approx(expected.kl_mean, rel=1e-4, abs=1e-7)
    assert point.top1_agreement == pytest.approx(expected.top1_agreement)
    plain = next(p for p in results["none"].points if p.num_layers == 2)
    assert plain.removed_layers == point.removed_layers and plain.perplexity != pytest.approx(point.perplexity)


def test_compare_fits_on_the_windows_cosine_self_scored_on(monkeypatch):
    """The self-sampled windows reach the fit as a value, from the scoring's report: sampled once, not twice."""
    from conftest import tiny_tokenizer

    from optimum_gatenorm.criteria import selfcal
    from optimum_gatenorm.evaluation.compare import CompareConfig, compare_criteria

    calls = []
    original = selfcal.self_generated
    monkeypatch.setattr(selfcal, "self_generated", lambda *a, **kw: calls.append(kw) or original(*a, **kw))
    result = compare_criteria(
        tiny_model("llama"),
        tiny_tokenizer(),
        "the quick brown fox jumps over the lazy dog. " * 6,
        CompareConfig(criteria=["cosine_self"], num_layers=[1], window=64, replacement="mean"),
    )
    assert len(calls) == 1
    fits = result.settings["replacement_fits"]
    assert [fit["calibration"] for fit in fits.values()] == ["16 x 127 tokens sampled by the model (seed 0)"]


def test_compare_config_refuses_an_unknown_replacement():
    from optimum_gatenorm import InvalidConfigError
    from optimum_gatenorm.evaluation.compare import CompareConfig

    with pytest.raises(InvalidConfigError, match="replacement must be one of none, mean, linear, got 'cubic'"):
        CompareConfig(replacement="cubic")


def test_compare_takes_a_path_and_gives_what_compare_criteria_gives(tmp_path):
    """`compare(path, text file)` loads once and matches `compare_criteria` on the loaded model; a data-driven
    criterion without `calibration_text` is refused (naming the parameter) before the model loads."""
    from conftest import tiny_tokenizer

    from optimum_gatenorm import CompareConfig, InvalidConfigError, compare, compare_criteria

    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    text = "the quick brown fox jumps over the lazy dog. " * 20
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    config = CompareConfig(criteria=["last", "random", "gate_norm"], num_layers=[0, 1, 2], seeds=[0, 1], window=64)

    result = compare(tmp_path / "model", tmp_path / "text.txt", config)
    expected = compare_criteria(model, tokenizer, text, config)
    assert result.model == str(tmp_path / "model") and result.text == str(tmp_path / "text.txt")
    assert [(p.criterion, p.seed, p.num_layers, p.removed_layers) for p in result.points] == [
        (p.criterion, p.seed, p.num_layers, p.removed_layers) for p in expected.points
    ]
    assert [p.perplexity for p in result.points] == pytest.approx([p.perplexity for p in expected.points])
    with pytest.raises(InvalidConfigError, match=r"`calibration_text=\.\.\.`"):
        compare(
            tmp_path / "model", tmp_path / "text.txt", CompareConfig(criteria=["cosine"], num_layers=[0, 1], window=64)
        )


def test_compare_records_retrieval_at_every_point_as_the_pruned_model_answers():
    """With `retrieval`, each point holds the suite's right cases per task@length, and each removed set's answers
    are the structurally pruned model's; a length beyond the context is refused before any scoring."""
    from conftest import tiny_tokenizer

    from optimum_gatenorm import CompareConfig, InvalidConfigError, compare_criteria
    from optimum_gatenorm.evaluation.retrieval import RetrievalConfig, retrieval_accuracy

    model, tokenizer = tiny_model("llama", max_position_embeddings=512), tiny_tokenizer()
    retrieval = RetrievalConfig(tasks=("passkey", "multikey"), lengths=(300,), depths=(0.5,), cases=2)
    text = "the quick brown fox jumps over the lazy dog. " * 8
    config = CompareConfig(criteria=["last"], num_layers=[0, 1], window=64, retrieval=retrieval)
    result = compare_criteria(model, tokenizer, text, config)

    removed = next(p.removed_layers for p in result.points if p.num_layers == 1)
    assert sorted(result.retrieval) == sorted(["", ",".join(map(str, removed))])
    pruned = copy.deepcopy(model)
    prune_model(pruned, removed)
    expected = retrieval_accuracy(pruned, tokenizer, retrieval)
    recorded = result.retrieval[",".join(map(str, removed))]["cases"]
    assert [case["answer"] for case in recorded] == [case["answer"] for case in expected.cases]
    unpruned = retrieval_accuracy(model, tokenizer, retrieval)
    assert [case["answer"] for case in result.retrieval[""]["cases"]] == [c["answer"] for c in unpruned.cases]
    assert [case["answer"] for case in recorded] != [c["answer"] for c in unpruned.cases]
    for point in result.points:
        source = expected if point.num_layers else unpruned
        assert point.retrieval == {
            f"{task}@300": [sum(c["correct"] for c in source.cases if c["task"] == task), 2]
            for task in ("passkey", "multikey")
        }
    assert "passkey@300" in result.format_table()
    document = json.loads(result.to_json())
    assert document["settings"]["retrieval"]["lengths"] == [300]
    assert [p["retrieval"] for p in document["points"]] == [p.retrieval for p in result.points]

    too_long = CompareConfig(
        criteria=["last"], num_layers=[0, 1], window=64, retrieval=RetrievalConfig(lengths=(600,))
    )
    with pytest.raises(InvalidConfigError, match=r"lengths \[600\] exceed the model's context of 512"):
        compare_criteria(model, tokenizer, text, too_long)
    with pytest.raises(InvalidConfigError, match="retrieval must be a RetrievalConfig"):
        CompareConfig(retrieval={"tasks": ["passkey"]})


def test_compare_applies_each_criterion_rule_unless_min_gap_is_given():
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    text = "the quick brown fox jumps over the lazy dog. " * 20
    pruner = GateNormPruner(model)
    for min_gap in (None, 1):
        config = CompareConfig(criteria=["gate_trace", "gate_norm"], num_layers=[0, 2], min_gap=min_gap, window=64)
        result = compare_criteria(model, tokenizer, text, config)
        for name in ("gate_trace", "gate_norm"):
            gap = min_gap or get_criterion(name).min_gap
            assert result.criteria[name]["min_gap"] == gap
            expected = select_layers(
                pruner.score(name).scores, GateNormConfig(num_layers=2, criterion=name, min_gap=gap)
            )
            removed = next(p.removed_layers for p in result.points if p.criterion == name and p.num_layers == 2)
            assert removed == expected[0]
