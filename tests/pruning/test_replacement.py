"""Replacing removed attention sublayers (`--replacement mean|linear`): the fit, the structure, the checkpoint."""

import copy
import json
import weakref

import pytest
import torch
from cli_support import ok, optimum_cli
from conftest import ALL_TINY, tiny_model
from model_support import IDS, LONG_IDS, random_windows, run_fresh, save_for_fresh_load
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from optimum_gatenorm import (
    GateNormConfig,
    GateNormPruner,
    InvalidCheckpointError,
    InvalidConfigError,
    PrunedAttentionConfig,
    PruningReport,
    get_adapter,
    load_pruned,
    prune_model,
    save_pruned,
)
from optimum_gatenorm.checkpoints.record import get_replacements
from optimum_gatenorm.checkpoints.structure import REPLACEMENT_MODULE, is_attention_pruned, replacement_of
from optimum_gatenorm.compat import returned_cache
from optimum_gatenorm.criteria import selfcal
from optimum_gatenorm.criteria.calibration import Calibration
from optimum_gatenorm.pruning.replacement import (
    REPLACEMENTS,
    _fit_linear,
    _substituted,
    fit_replacements,
    layer_replaceability,
)


LAYERS = [1, 2]


def _update_outputs(model, layer, batches):
    """What `layer`'s attention sublayer adds to the residual stream, and its normalised input, per token."""
    adapter = get_adapter(model.config)
    decoder_layer = model.get_submodule(adapter.layers)[layer]
    update = (
        getattr(decoder_layer, adapter.attention_output_norm)
        if adapter.attention_output_norm
        else getattr(decoder_layer, adapter.attention)
    )
    norm = getattr(decoder_layer, adapter.input_norm)
    ys, xs = [], []
    h1 = update.register_forward_hook(lambda m, a, out: ys.append(out[0] if isinstance(out, tuple) else out))
    h2 = decoder_layer.register_forward_pre_hook(
        lambda m, a, kw: xs.append(norm(a[0] if a else kw["hidden_states"])), with_kwargs=True
    )
    try:
        with torch.no_grad():
            for batch in batches:
                model(input_ids=batch, use_cache=False)
    finally:
        h1.remove()
        h2.remove()
    d = model.config.hidden_size
    return torch.cat([x.reshape(-1, d) for x in xs]).double(), torch.cat([y.reshape(-1, d) for y in ys]).double()


# --- the fit ---------------------------------------------------------------------------------------------------------


def test_ridge_recovers_an_exact_linear_map_and_picks_the_weakest_strength():
    generator = torch.Generator().manual_seed(0)
    w_true = torch.randn(16, 16, generator=generator, dtype=torch.float64)
    pairs = []
    for _ in range(8):
        x = torch.randn(50, 16, generator=generator, dtype=torch.float64)
        pairs.append((x, x @ w_true))
    w, alpha, error = _fit_linear(pairs[:6], pairs[6:])
    assert alpha == 1e-6  # no noise: the weakest ridge generalises best
    torch.testing.assert_close(w, w_true, rtol=0, atol=1e-4)
    assert error < 1e-8


def test_ridge_strength_grows_with_noise():
    generator = torch.Generator().manual_seed(1)
    w_true = torch.randn(16, 16, generator=generator, dtype=torch.float64) * 0.01
    pairs = []
    for _ in range(8):
        x = torch.randn(20, 16, generator=generator, dtype=torch.float64)
        pairs.append((x, x @ w_true + torch.randn(20, 16, generator=generator, dtype=torch.float64)))
    _, alpha, error = _fit_linear(pairs[:6], pairs[6:])
    assert alpha >= 1e-1 and 0.9 < error < 1.2  # mostly noise: strong shrinkage, little explained


@pytest.mark.parametrize("name", ["llama", "gemma3_text", "gpt_neox"])
def test_mean_is_the_average_update_of_each_sublayer(name):
    model = tiny_model(name)
    calibration = random_windows()
    fit = fit_replacements(model, LAYERS, "mean", calibration)
    for layer in LAYERS:
        _, ys = _update_outputs(model, layer, calibration.batches())
        torch.testing.assert_close(fit.layers[layer].tensors["bias"], ys.mean(0).float(), rtol=1e-5, atol=1e-6)
    assert 0 < fit.layers[1].held_out_error < 2


@pytest.mark.parametrize("name", ["llama", "gemma3_text", "gpt_neox_sequential"])
def test_linear_fit_is_sequential_ridge_on_the_partly_replaced_model(name):
    model = tiny_model(name)
    calibration = random_windows()
    fit = fit_replacements(model, LAYERS, "linear", calibration)
    first, second = LAYERS
    batches = calibration.batches()
    # Layer 1: inputs and targets from the model as given.
    # Layer 2: inputs from the model with layer 1 replaced, targets still from the model as given.
    _, y_first = _update_outputs(model, first, batches)
    _, y_second = _update_outputs(model, second, batches)
    replaced = copy.deepcopy(model)
    prune_model(replaced, [first], replacements={first: fit.layers[first]})
    x_second, _ = _update_outputs(replaced, second, batches)
    x_first, _ = _update_outputs(model, first, batches)
    for layer, x, y in ((first, x_first, y_first), (second, x_second, y_second)):
        xtx = x.T @ x
        lam = fit.layers[layer].alpha * torch.trace(xtx) / xtx.shape[0]
        expected = torch.linalg.solve(xtx + lam * torch.eye(xtx.shape[0], dtype=xtx.dtype), x.T @ y)
        got = fit.layers[layer].tensors["proj.weight"].double().T
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert fit.layers[first].alpha in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    assert fit.calibration["held_out"] == 2 and fit.calibration["num_samples"] == 8


def test_fit_reuses_the_tokens_cosine_self_just_sampled(monkeypatch):
    model = tiny_model("llama")
    calls = []
    original = selfcal.self_generated
    monkeypatch.setattr(selfcal, "self_generated", lambda *a, **kw: calls.append(kw) or original(*a, **kw))
    pruner = GateNormPruner(model)
    scores = pruner.score("cosine_self", seed=3)
    assert len(calls) == 1
    assert scores.windows.input_ids.shape == (16, 128) and "windows" not in scores.to_dict()
    assert "windows" not in json.loads(scores.to_json())
    _, report = pruner.prune(GateNormConfig(num_layers=1, seed=3, replacement="linear"), scores=scores)
    # The fit took the scoring's 16 windows; only the 2 recovery sequences (seed 4) were sampled since.
    assert [call.get("seed") for call in calls] == [3, 4] and calls[1]["num_samples"] == 2
    assert report.replacement["calibration"]["source"] == "16 x 127 tokens sampled by the model (seed 3)"
    assert (
        report.replacement["calibration"]["num_samples"] == 16 and report.replacement["calibration"]["held_out"] == 4
    )


def test_the_windows_travel_with_the_scores_not_in_module_state(monkeypatch):
    """Two scorings of one model: the fit takes the windows of the report it is given, whichever came last."""
    model = tiny_model("llama")
    pruner = GateNormPruner(model)
    first = pruner.score("cosine_self", seed=3)
    second = pruner.score("attn_norm_self", seed=7)
    assert not torch.equal(first.windows.input_ids, second.windows.input_ids)
    assert not any(isinstance(value, weakref.WeakKeyDictionary) for value in vars(selfcal).values())
    calls = []
    original = selfcal.self_generated
    monkeypatch.setattr(selfcal, "self_generated", lambda *a, **kw: calls.append(kw) or original(*a, **kw))
    _, report = pruner.prune(GateNormConfig(num_layers=1, seed=3, replacement="mean"), scores=first)
    assert [call.get("seed") for call in calls] == [4]  # only the held-out check sampled
    assert report.replacement["calibration"]["source"] == "16 x 127 tokens sampled by the model (seed 3)"


def test_without_cosine_self_the_fit_samples_the_same_windows_itself():
    model = tiny_model("llama")
    a = selfcal.self_calibration(model, 5)
    b = selfcal.self_calibration(model, 5)  # nothing remembered: sampled again, the same tokens
    assert torch.equal(a.input_ids, b.input_ids) and a.input_ids.shape == (16, 128)
    _, report = GateNormPruner(model).prune(GateNormConfig(num_layers=1, criterion="gate_norm", replacement="mean"))
    assert report.replacement["calibration"]["source"] == "16 x 127 tokens sampled by the model (seed 0)"


def test_fit_on_user_calibration_windows():
    model = tiny_model("llama")
    calibration = Calibration(random_windows().input_ids, source="my.txt")
    _, report = GateNormPruner(model).prune(
        GateNormConfig(num_layers=2, criterion="cosine", replacement="linear"), calibration=calibration
    )
    assert report.replacement["calibration"]["source"] == "my.txt"
    assert report.config["replacement"] == "linear"


# --- the structure ---------------------------------------------------------------------------------------------------


def _pruned(name, kind, layers=LAYERS):
    model = tiny_model(name)
    reference = copy.deepcopy(model)
    fit = None
    if kind != "none":
        fit = fit_replacements(model, layers, kind, random_windows())
    prune_model(model, layers, replacements=fit.layers if fit else None)
    return reference, model, fit


@pytest.mark.parametrize("kind", ["mean", "linear"])
@pytest.mark.parametrize("name", sorted(ALL_TINY))
def test_replaced_layer_computes_what_was_fitted(name, kind):
    reference, model, fit = _pruned(name, kind)
    live = {layer: copy.deepcopy(replacement_of(model.get_submodule(get_adapter(model.config).layers)[layer]))
            for layer in LAYERS}  # fmt: skip
    # The unpruned model with the updates of the layers substituted by the replacements (the fit's view) ...
    adapter = get_adapter(reference.config)
    for layer, module in live.items():
        if kind == "linear":  # the substitution reads the reference's own norm (same weights)
            module.norm = getattr(reference.get_submodule(adapter.layers)[layer], adapter.input_norm)
    with torch.no_grad():
        with _substituted(reference, live):
            expected = reference(IDS).logits
        zeroed = None
        with _substituted(reference, dict.fromkeys(live)):
            zeroed = reference(IDS).logits
        got = model(IDS).logits
    # ... is what the pruned model computes, and differs from plain removal.
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, zeroed, atol=1e-3)


@pytest.mark.parametrize("kind", ["mean", "linear"])
@pytest.mark.parametrize("name", sorted(ALL_TINY))
def test_replaced_layer_holds_no_attention_and_no_cache_and_cache_equals_no_cache(name, kind):
    _, model, _ = _pruned(name, kind, layers=[0, 2])
    adapter = get_adapter(model.config)
    layers = model.get_submodule(adapter.layers)
    for index in (0, 2):
        assert is_attention_pruned(layers[index]) and replacement_of(layers[index]).kind == kind
        assert not any(hasattr(layers[index], name) for name in adapter.pruned_modules)
        assert not any(f".{index}.{adapter.attention}." in k for k in model.state_dict())
    with torch.no_grad():
        cache = returned_cache(model(torch.tensor([[1, 2, 3]]), use_cache=True))
    filled = [
        i for i, layer in enumerate(cache.layers) if getattr(layer, "keys", None) is not None and layer.keys.numel()
    ]
    assert filled == [0, 1]  # the two kept layers only
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0, output_logits=True,
                  return_dict_in_generate=True)  # fmt: skip
    with torch.no_grad():
        cached = model.generate(LONG_IDS, use_cache=True, **kwargs)
        uncached = model.generate(LONG_IDS, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, uncached.sequences)
    for step_cached, step_uncached in zip(cached.logits, uncached.logits, strict=True):
        scale = max(1.0, step_uncached.abs().max().item())
        torch.testing.assert_close(step_cached, step_uncached, rtol=1e-5, atol=1e-5 * scale)


# --- the checkpoint --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["none", "mean", "linear"])
@pytest.mark.parametrize("name", sorted(ALL_TINY))
def test_roundtrip_is_exact_with_each_replacement(name, kind, tmp_path):
    _, model, _ = _pruned(name, kind)
    save_pruned(model, tmp_path / "pruned")
    record = json.loads((tmp_path / "pruned" / "config.json").read_text())["quantization_config"]
    expected = {"none": None, "mean": {"1": "mean", "2": "mean"}, "linear": {"1": "linear", "2": "linear"}}[kind]
    assert record.get("attention_replacements") == expected
    names = {}
    for file in (tmp_path / "pruned").glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            names.update({key: f.get_slice(key).get_shape() for key in f.keys() if REPLACEMENT_MODULE in key})
    prefix = get_adapter(model.config).layers
    d = model.config.hidden_size
    if kind == "none":
        assert names == {}
    elif kind == "mean":
        assert names == {f"{prefix}.{i}.{REPLACEMENT_MODULE}.bias": [d] for i in LAYERS}
    else:
        assert {k: v for k, v in names.items() if k.endswith("proj.weight")} == {
            f"{prefix}.{i}.{REPLACEMENT_MODULE}.proj.weight": [d, d] for i in LAYERS
        }
        assert all(f"{prefix}.{i}.{REPLACEMENT_MODULE}.norm.weight" in names for i in LAYERS)
    loaded, info = AutoModelForCausalLM.from_pretrained(
        tmp_path / "pruned", output_loading_info=True, attn_implementation="eager"
    )
    assert all(not v for v in info.values()), info
    again = load_pruned(tmp_path / "pruned", attn_implementation="eager")
    assert get_replacements(again) == ({} if kind == "none" else dict.fromkeys(LAYERS, kind))
    with torch.no_grad():
        expected_logits = model(IDS).logits
        assert torch.equal(loaded.eval()(IDS).logits, expected_logits)
        assert torch.equal(again(IDS).logits, expected_logits)


@pytest.fixture(scope="module")
def saved_replaced(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fresh_replaced")
    model = tiny_model("llama")
    GateNormPruner(model).prune(GateNormConfig(num_layers=2, replacement="linear"))
    return save_for_fresh_load(model, directory)


@pytest.mark.process
def test_fresh_process_without_the_package_refuses_a_replaced_checkpoint(saved_replaced):
    result = run_fresh(saved_replaced, imports="")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "LOAD FAILED: RuntimeError" in result.stdout and "mismatch" in result.stdout.lower(), result.stdout


@pytest.mark.process
def test_fresh_process_with_the_package_rebuilds_the_replacement(saved_replaced):
    result = run_fresh(saved_replaced, imports="import optimum_gatenorm")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "IDENTICAL" in result.stdout


def test_record_without_replacements_loads_as_plain_removal_and_bad_ones_are_refused():
    old = {"quant_method": "gatenorm", "pruned_attention_layers": [1, 2], "num_hidden_layers": 4}
    assert PrunedAttentionConfig.from_dict(old).replacements == {}
    assert "attention_replacements" not in PrunedAttentionConfig.from_dict(old).to_dict()
    record = PrunedAttentionConfig.from_dict({**old, "attention_replacements": {"2": "linear"}})
    assert record.replacements == {2: "linear"} and record.to_dict()["attention_replacements"] == {"2": "linear"}
    with pytest.raises(
        InvalidCheckpointError, match=r"names layer '3', which is not one of the pruned layers \[1, 2\]"
    ):
        PrunedAttentionConfig.from_dict({**old, "attention_replacements": {"3": "linear"}})
    with pytest.raises(InvalidCheckpointError, match="layer 1 has replacement 'cubic'; known: mean, linear"):
        PrunedAttentionConfig.from_dict({**old, "attention_replacements": {"1": "cubic"}})


def test_pruning_a_replaced_model_again_keeps_the_earlier_replacements(tmp_path):
    _, model, _ = _pruned("llama", "mean", layers=[1])
    GateNormPruner(model).prune(GateNormConfig(num_layers=1, replacement="linear", criterion="gate_norm"))
    replacements = get_replacements(model)
    assert replacements[1] == "mean" and len(replacements) == 2 and "linear" in replacements.values()
    save_pruned(model, tmp_path / "twice")
    with torch.no_grad():
        assert torch.equal(load_pruned(tmp_path / "twice", attn_implementation="eager")(IDS).logits, model(IDS).logits)


# --- the API ---------------------------------------------------------------------------------------------------------


def test_config_validates_and_reports_the_replacement(tmp_path):
    assert REPLACEMENTS == ("none", "mean", "linear")
    with pytest.raises(InvalidConfigError, match="replacement must be one of none, mean, linear, got 'cubic'"):
        GateNormConfig(num_layers=1, replacement="cubic")
    assert GateNormConfig(num_layers=1).replacement == "linear"  # the default, chosen by the replacement study
    model, report = GateNormPruner(tiny_model("llama")).prune(GateNormConfig(num_layers=2, replacement="linear"))
    assert report.config["replacement"] == "linear"
    fit = report.replacement
    assert fit["kind"] == "linear" and sorted(fit["layers"]) == [str(i) for i in report.removed_layers]
    recovery = fit["recovery"]
    assert recovery["tokens"] == 2 * 128 and recovery["source"] == "2 x 127 tokens sampled by the model (seed 1)"
    assert 0 <= recovery["kl_with"] < recovery["kl_without"]
    line = report.summary().splitlines()[-1]
    assert line.startswith("Replaced them with linear maps fitted in") and "removed plainly" in line
    save_pruned(model, tmp_path / "out")
    saved = PruningReport.from_json(tmp_path / "out" / "gatenorm_report.json")
    assert saved.replacement == json.loads(json.dumps(fit)) and saved.config["replacement"] == "linear"
    _, plain = GateNormPruner(tiny_model("llama")).prune(GateNormConfig(num_layers=2, replacement="none"))
    assert plain.replacement is None and plain.replacement_summary() is None and "\n" not in plain.summary()


# --- the CLI ---------------------------------------------------------------------------------------------------------


@pytest.mark.process
def test_cli_prune_with_replacement_prints_what_it_recovered(tmp_path):

    tiny_model("llama").save_pretrained(tmp_path / "llama")
    # No --replacement: linear is the default.
    result = ok(optimum_cli("gatenorm", "prune", "-m", tmp_path / "llama", "-k", "2", "-o", tmp_path / "p"))
    line = next(line for line in result.stdout.splitlines() if line.startswith("Replaced them with linear maps"))
    assert "16 x 127 tokens sampled by the model (seed 0)" in line and "2 x 127 tokens" in line
    report = PruningReport.from_json(tmp_path / "p" / "gatenorm_report.json")
    recovery = report.replacement["recovery"]
    assert f"{recovery['kl_with']:.4f} with the replacement, {recovery['kl_without']:.4f} removed plainly" in line
    assert report.config["replacement"] == "linear"
    record = json.loads((tmp_path / "p" / "config.json").read_text())["quantization_config"]
    assert record["attention_replacements"] == {str(i): "linear" for i in report.removed_layers}
    with torch.no_grad():  # the saved model is the one the same request builds in this process
        model, _ = GateNormPruner.from_pretrained(tmp_path / "llama").prune(
            GateNormConfig(num_layers=2, replacement="linear")
        )
        assert torch.equal(load_pruned(tmp_path / "p")(IDS).logits, model(IDS).logits)


@pytest.mark.process
def test_cli_replacement_help_and_bad_value(tmp_path):

    help_text = " ".join(optimum_cli("gatenorm", "prune", "--help").stdout.split())
    assert "--replacement {none,mean,linear}" in help_text and "docs/replacement.md" in help_text
    assert "(default: linear," in help_text  # the CLI default is the library's
    assert "no user data" in help_text
    result = optimum_cli(
        "gatenorm", "prune", "-m", tmp_path, "-k", "1", "-o", tmp_path / "p", "--replacement", "cubic"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "invalid choice: 'cubic'" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "p").exists()


@pytest.mark.process
def test_cli_compare_with_replacement_scores_the_replaced_model(tmp_path):
    """`compare --replacement linear` fits on --calibration-text as `prune` does, and scores the replaced model."""
    from conftest import tiny_tokenizer

    from optimum_gatenorm.evaluation.compare import CompareConfig, compare_criteria

    tiny_model("llama").save_pretrained(tmp_path / "llama")
    tiny_tokenizer().save_pretrained(tmp_path / "llama")
    text = "It is a truth universally acknowledged, that a single man. " * 6
    (tmp_path / "text.txt").write_text(text)
    (tmp_path / "calib.txt").write_text("However little known the feelings or views of such a man may be. " * 12)
    calibration_args = ["--calibration-samples", "4", "--calibration-length", "32"]
    ok(optimum_cli("gatenorm", "compare", "-m", tmp_path / "llama", "--text", tmp_path / "text.txt", "--criteria",
               "last", "-k", "0,2", "--window", "64", "--replacement", "linear", "--calibration-text",
               tmp_path / "calib.txt", *calibration_args, "--output", tmp_path / "cmp.json"))  # fmt: skip
    data = json.loads((tmp_path / "cmp.json").read_text())
    assert data["settings"]["replacement"] == "linear"
    assert list(data["settings"]["replacement_fits"]) == ["2,3"]
    pruner = GateNormPruner.from_pretrained(tmp_path / "llama")
    calibration = pruner.calibration_from_files(tmp_path / "calib.txt", num_samples=4, length=32)
    expected = {
        kind: compare_criteria(
            pruner.model,
            pruner.tokenizer,
            text,
            CompareConfig(criteria=["last"], num_layers=[0, 2], window=64, replacement=kind),
            calibration=calibration,
        ).points[1]
        for kind in ("linear", "none")
    }
    point = data["points"][1]
    assert point["removed_layers"] == expected["linear"].removed_layers == [2, 3]
    assert point["perplexity"] == pytest.approx(expected["linear"].perplexity, rel=1e-5)
    assert point["perplexity"] != pytest.approx(expected["none"].perplexity)


def test_layer_replaceability_judges_each_layer_on_the_held_out_windows():
    model = tiny_model("llama")
    windows = random_windows(num_samples=8)
    replaced_cos, unexplained = layer_replaceability(model, windows)
    assert len(replaced_cos) == len(unexplained) == model.config.num_hidden_layers
    assert all(0.0 <= value < 1.0 for value in replaced_cos), replaced_cos
    # the unexplained share is the held-out error `fit_replacements` reports for the same layer fitted alone
    for layer in (0, 2):
        fitted = fit_replacements(model, [layer], "linear", windows).layers[layer]
        assert unexplained[layer] == pytest.approx(fitted.held_out_error, rel=1e-9)
    with pytest.raises(InvalidConfigError, match="at least 2 calibration windows, got 1"):
        layer_replaceability(model, random_windows(num_samples=1))
