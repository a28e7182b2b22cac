"""Pruning semantics on every architecture: h + mlp(post_norm(h)), a compact KV cache, cached == uncached."""

import copy

import pytest
import torch
from conftest import ALL_TINY, tiny_model

from optimum_gatenorm import GateNormConfig, GateNormPruner, InvalidConfigError, get_adapter, get_pruned_layers
from optimum_gatenorm.checkpoints.modeling import prune_model
from optimum_gatenorm.checkpoints.structure import is_attention_pruned
from optimum_gatenorm.compat import cache_kwargs, returned_cache


def _prune(model, layers):
    pruned = copy.deepcopy(model)
    prune_model(pruned, layers)
    return pruned


def _silence_attention(model, layers):
    """The unpruned model with the attention updates of `layers` zeroed: what pruning must compute."""
    silenced = copy.deepcopy(model)
    adapter = get_adapter(model.config)
    with torch.no_grad():
        for index in layers:
            attention = getattr(silenced.get_submodule(adapter.layers)[index], adapter.attention)
            # The output projection's output is the attention sublayer's update to the residual stream.
            for param in getattr(attention, adapter.qk.o).parameters():
                param.zero_()
    return silenced


def _batch(left_pad: bool):
    ids = torch.tensor([[3, 9, 27, 81, 115, 12, 40], [0, 0, 0, 7, 21, 63, 101]])
    mask = torch.ones_like(ids)
    if left_pad:
        mask[1, :3] = 0
    else:
        ids, mask = ids[:1], mask[:1]
    return ids, mask


@pytest.mark.parametrize("name", sorted(ALL_TINY))
@pytest.mark.parametrize("layers", [[1, 2], [0, 3]], ids=["middle", "first_and_last"])
def test_pruned_layers_compute_residual_plus_mlp(name, layers):
    model = tiny_model(name)
    ids, mask = _batch(left_pad=True)
    with torch.no_grad():
        expected = _silence_attention(model, layers)(ids, attention_mask=mask).logits
        got = _prune(model, layers)(ids, attention_mask=mask).logits
        original = model(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got[real], original[real], atol=1e-3)  # pruning changed something


@pytest.mark.parametrize("name", sorted(ALL_TINY))
@pytest.mark.parametrize("layers", [[1, 2], [0, 2]], ids=["middle", "layer0"])
@pytest.mark.parametrize("left_pad", [False, True], ids=["single", "left_padded_batch"])
def test_generate_with_cache_equals_without(name, layers, left_pad):
    model = _prune(tiny_model(name), layers)
    ids, mask = _batch(left_pad)
    kwargs = dict(
        attention_mask=mask,
        max_new_tokens=6,
        min_new_tokens=6,
        do_sample=False,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    with torch.no_grad():
        cached = model.generate(ids, use_cache=True, **kwargs)
        uncached = model.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, uncached.sequences)
    for step_cached, step_uncached in zip(cached.logits, uncached.logits, strict=True):
        # 1e-5 relative to the logits' scale: the two paths sum in different orders in float32. (float64 is not
        # an option: transformers' eager masks overflow to -inf there and turn left-padded gpt_neox rows to NaN.)
        scale = max(1.0, step_uncached.abs().max().item())
        torch.testing.assert_close(step_cached, step_uncached, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("name", sorted(ALL_TINY))
def test_cache_holds_only_kept_layers_and_structure_is_gone(name):
    model = _prune(tiny_model(name), [0, 2])
    adapter = get_adapter(model.config)
    layers = model.get_submodule(adapter.layers)
    for index in (0, 2):
        assert is_attention_pruned(layers[index])
        assert isinstance(layers[index], type(layers[1]).__mro__[1])  # still an instance of the original class
        assert not hasattr(layers[index], adapter.attention) and not hasattr(layers[index], adapter.input_norm)
        assert not any(hasattr(layers[index], name) for name in adapter.pruned_modules)
        assert not any(f".{index}.{adapter.attention}." in k for k in model.state_dict())
    assert [getattr(layers[i], adapter.attention).layer_idx for i in (1, 3)] == [0, 1]
    with torch.no_grad():
        cache = returned_cache(model(torch.tensor([[1, 2, 3]]), use_cache=True))
    filled = [
        i for i, layer in enumerate(cache.layers) if getattr(layer, "keys", None) is not None and layer.keys.numel()
    ]
    assert filled == [0, 1]
    assert cache.get_seq_length() == 3
    assert get_pruned_layers(model.config) == get_pruned_layers(model) == [0, 2]  # a config or the model


@pytest.mark.parametrize("name", sorted(ALL_TINY))
def test_num_layers_zero_is_bit_identical(name):
    model = tiny_model(name)
    ids, mask = _batch(left_pad=True)
    with torch.no_grad():
        before = model(ids, attention_mask=mask).logits
        pruned, report = GateNormPruner(model).prune(GateNormConfig(num_layers=0, replacement="none"))
        after = pruned(ids, attention_mask=mask).logits
    assert report.removed_layers == [] and report.num_parameters_before == report.num_parameters_after
    assert torch.equal(before, after)


@pytest.mark.parametrize("name", sorted(ALL_TINY))
def test_pruner_removes_lowest_scores_and_reports(name):
    model = tiny_model(name)
    pruner = GateNormPruner(model)
    scores = pruner.score()
    pruned, report = pruner.prune(GateNormConfig(num_layers=2, protect_first=0, min_gap=1, replacement="none"))
    assert report.removed_layers == sorted(scores.ranking[:2])
    assert report.kept_attention_layers == [i for i in range(4) if i not in report.removed_layers]
    assert report.num_parameters_after < report.num_parameters_before
    assert report.num_parameters_before - report.num_parameters_after == report.to_dict()["num_parameters_removed"]
    assert pruned is model  # in place


def test_protection_and_exclusion_are_respected():
    model = tiny_model("llama")
    with torch.no_grad():  # make layers 0, 1 and 3 the weakest
        for index in (0, 1, 3):
            model.model.layers[index].self_attn.q_proj.weight.mul_(0.01)
    config = GateNormConfig(num_layers=1, protect_first=1, protect_last=1, exclude_layers=(1,), replacement="none")
    _, report = GateNormPruner(model).prune(config)
    assert report.removed_layers == [2]
    assert report.protected_layers == [0, 3] and report.excluded_layers == [1]


def test_ratio_rounds_to_nearest():
    assert GateNormConfig(ratio=0.2).resolve_num_layers(40) == 8
    assert GateNormConfig(ratio=0.3).resolve_num_layers(4) == 1
    assert GateNormConfig(ratio=0.375).resolve_num_layers(4) == 2  # 1.5 rounds up


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_layers=4, protect_first=0), "at most 3 can go"),
        (dict(num_layers=5, protect_first=0), "at most 3"),
        (dict(num_layers=3, protect_first=1, protect_last=1), "at most 2"),
        (dict(num_layers=1, exclude_layers=(9,)), "out of range"),
        (dict(ratio=0.9, protect_first=0), "cannot remove 4"),
    ],
)
def test_impossible_requests_are_refused(kwargs, match):
    model = tiny_model("llama")
    with pytest.raises(InvalidConfigError, match=match):
        GateNormPruner(model).prune(GateNormConfig(**kwargs, replacement="none"))
    assert not any(is_attention_pruned(layer) for layer in model.model.layers)  # nothing changed


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_layers=1, ratio=0.1),
        dict(num_layers=-1),
        dict(num_layers=1.5),
        dict(num_layers=True),
        dict(ratio=1.0),
        dict(ratio=-0.1),
        dict(num_layers=1, protect_first=-1),
        dict(num_layers=1, exclude_layers=(-2,)),
        dict(num_layers=1, exclude_layers="1,2"),
        dict(num_layers=1, criterion="nope"),
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(InvalidConfigError):
        GateNormConfig(**kwargs)


def test_a_config_without_an_amount_waits_for_a_plan():
    # neither num_layers nor ratio: valid (prune_and_save(target_speedup=...) plans it), but nothing prunes it as is
    config = GateNormConfig()
    assert not config.has_amount
    with pytest.raises(InvalidConfigError, match="give num_layers or ratio"):
        config.resolve_num_layers(4)


def test_pruning_all_layers_is_refused():
    with pytest.raises(InvalidConfigError, match="cannot remove all"):
        prune_model(tiny_model("llama"), [0, 1, 2, 3])


def test_pruning_twice_accumulates():
    model = tiny_model("llama")
    prune_model(model, [1])
    _, report = GateNormPruner(model).prune(GateNormConfig(num_layers=1, protect_first=0, replacement="none"))
    assert len(report.pruned_layers) == 2 and 1 in report.pruned_layers
    assert report.scores[1] is None
    layers = model.model.layers
    assert [layers[i].self_attn.layer_idx for i in report.kept_attention_layers] == [0, 1]


# Architectures whose tiny config mixes sliding-window and full-attention layers (S, F, S, S with a window of 4).
MIXED = [
    name
    for name, spec in sorted(ALL_TINY.items())
    if len(set(spec.get("layer_types") or ())) > 1 and spec.get("sliding_window")
]
# Every kind of shift of the kept layers' type sequence: layer 0 removed, the only full layer removed, alternate
# layers, and all but one.
PATTERNS = {"layer0": [0], "all_full": [1], "alternate_even": [0, 2], "alternate_odd": [1, 3], "keep_one": [0, 1, 3]}


def test_mixed_tiny_configs_exist():
    assert {"qwen3", "gemma2", "gemma3_text"} <= set(MIXED)


def _incremental_logits(model, ids, prefill: int):
    """Logits of `ids` from a prefill of `prefill` tokens, then one cached step per token."""
    with torch.no_grad():
        out = model(ids[:, :prefill], use_cache=True)
        cache, steps = returned_cache(out), [out.logits]
        for t in range(prefill, ids.shape[1]):
            out = model(ids[:, t : t + 1], use_cache=True, **cache_kwargs(model, cache))
            cache = returned_cache(out)
            steps.append(out.logits)
    return torch.cat(steps, dim=1), cache


@pytest.mark.parametrize("name", MIXED)
@pytest.mark.parametrize("layers", PATTERNS.values(), ids=PATTERNS.keys())
def test_mixed_layer_types_keep_their_own_cache_type_whatever_is_removed(name, layers):
    model = _prune(tiny_model(name), layers)
    window = model.config.sliding_window
    ids = torch.randint(0, 128, (2, 4 * window), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
    cached, cache = _incremental_logits(model, ids, prefill=window + 1)
    scale = max(1.0, full.abs().max().item())
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5 * scale)
    kept = [i for i in range(model.config.num_hidden_layers) if i not in layers]
    expected = ["sliding_attention" if model.config.layer_types[i] == "sliding_attention" else "full" for i in kept]
    got = ["sliding_attention" if layer.is_sliding else "full" for layer in cache.layers]
    assert got == expected  # one slot per kept layer, of that layer's own type
    assert [layer.sliding_window for layer in cache.layers if layer.is_sliding] == [window] * got.count(
        "sliding_attention"
    )
    assert model.config.layer_types == tiny_model(name).config.layer_types  # the per-layer record is untouched
    # generate's caches are built the same way, the static one (Gemma's default) included.
    kwargs = dict(max_new_tokens=2 * window, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        expected = model.generate(ids[:, : window + 1], use_cache=False, **kwargs)
        for implementation in ("dynamic", "static"):
            got = model.generate(ids[:, : window + 1], use_cache=True, cache_implementation=implementation, **kwargs)
            assert torch.equal(got, expected), implementation


@pytest.mark.parametrize("name", MIXED)
def test_kept_sliding_layers_attend_only_within_their_window(name):
    # Without the full layer, the last token sees at most (window - 1) tokens back per kept layer: 3 layers of
    # window 4 reach 9 tokens back. A token further back must not matter, with or without the cache; had the kept
    # sliding layers become full-attention ones (or read a full layer's cache slot), it would.
    model = _prune(tiny_model(name), [1])
    window = model.config.sliding_window
    length = 3 * (window - 1) + 4
    ids = torch.randint(0, 128, (1, length), generator=torch.Generator().manual_seed(2))
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] + 1) % 128
    near = ids.clone()
    near[0, -2] = (ids[0, -2] + 1) % 128
    for use_cache in (False, True):
        last = {}
        for key, prompt in (("ids", ids), ("far", changed), ("near", near)):
            if use_cache:
                last[key] = _incremental_logits(model, prompt, prefill=window)[0][0, -1]
            else:
                with torch.no_grad():
                    last[key] = model(prompt, use_cache=False).logits[0, -1]
        torch.testing.assert_close(last["far"], last["ids"], rtol=0, atol=1e-5)
        assert not torch.allclose(last["near"], last["ids"], atol=1e-3)  # within the window it does matter
    unpruned = tiny_model(name)  # and with its full-attention layer the same change is seen
    with torch.no_grad():
        assert not torch.allclose(unpruned(changed).logits[0, -1], unpruned(ids).logits[0, -1], atol=1e-4)


@pytest.mark.parametrize("name", sorted(ALL_TINY))
def test_a_model_that_ran_with_output_hidden_states_prunes(name):
    # transformers 4.57 leaves each layer's bound forward behind as an instance attribute after recording hidden
    # states; it shadowed the pruned class's forward ("no attribute 'input_layernorm'")
    model = tiny_model(name).eval()
    ids = torch.randint(0, 98, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(ids, output_hidden_states=True)
        prune_model(model, [1, 2])
        fresh = tiny_model(name).eval()  # the same weights, never run
        prune_model(fresh, [1, 2])
        assert torch.allclose(model(ids).logits, fresh(ids).logits, atol=1e-6)
