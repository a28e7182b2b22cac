"""How a replacement's parameters are obtained (`--fit least-squares|distill`, `pruning.fits`), and the weight-only
map the replacement study measures."""

import json

import pytest
import torch
from cli_support import ok, optimum_cli
from conftest import ALL_TINY, tiny_model
from model_support import IDS, random_windows

from optimum_gatenorm import GateNormConfig, GateNormPruner, InvalidConfigError, load_pruned, save_pruned
from optimum_gatenorm.adapters import get_adapter
from optimum_gatenorm.pruning.fits import (
    DISTILL_SAMPLES,
    DISTILL_STEPS,
    FITS,
    distill_replacements,
    fit_replacements_by,
    weight_replacements,
)
from optimum_gatenorm.pruning.replacement import _module, fit_replacements, replaced_attention, replacement_recovery


LAYERS = [1, 2]
# Families whose attention has no value/output bias and no norm on its output: there the weight-only map is exactly
# what the attention adds for a single token, which can only attend to itself.
NO_BIAS = ["llama", "llama_mha", "mistral", "phi3", "qwen3"]


def _attention_update(model, layer: int, ids) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's input and what its attention sublayer adds to the residual stream, for `ids`."""
    adapter = get_adapter(model.config)
    decoder_layer = model.get_submodule(adapter.layers)[layer]
    name = adapter.attention_output_norm or adapter.attention
    found = {}

    def take_input(module, args, kwargs):
        found.setdefault("h", args[0] if args else kwargs["hidden_states"])

    def take_update(module, args, output):
        found.setdefault("y", output[0] if isinstance(output, tuple) else output)

    handles = [
        decoder_layer.register_forward_pre_hook(take_input, with_kwargs=True),
        getattr(decoder_layer, name).register_forward_hook(take_update),
    ]
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return found["h"], found["y"]


@pytest.mark.parametrize("name", NO_BIAS)
def test_weights_fit_is_the_attention_of_a_token_that_sees_only_itself(name):
    model = tiny_model(name)
    fit = weight_replacements(model, LAYERS)
    assert fit.fit == "weights" and fit.kind == "linear" and sorted(fit.layers) == LAYERS
    assert "no forward pass" in fit.calibration["source"]
    for layer in LAYERS:
        for token in (5, 40):
            hidden, update = _attention_update(model, layer, torch.tensor([[token]]))
            with torch.no_grad():
                mapped = _module(model, layer, fit.layers[layer])(hidden)
            torch.testing.assert_close(mapped, update, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(ALL_TINY))
def test_weights_fit_builds_a_finite_map_for_every_family(name):
    model = tiny_model(name)
    fit = weight_replacements(model, LAYERS)
    d = model.config.hidden_size
    for fitted in fit.layers.values():
        weight = fitted.tensors["proj.weight"]
        assert weight.shape == (d, d) and torch.isfinite(weight).all() and weight.abs().sum() > 0
    with torch.no_grad(), replaced_attention(model, fit):
        assert torch.isfinite(model(IDS).logits).all()


def test_weights_fit_folds_gemmas_post_attention_norm_at_its_expected_scale():
    """With a sandwich norm, `g_out * normalize(M n)` is approximated by `g_out * M n * sqrt(d) / ||M g_in||_F`."""
    model = tiny_model("gemma3_text")
    adapter = get_adapter(model.config)
    layer = model.get_submodule(adapter.layers)[1]
    fit = weight_replacements(model, [1])
    weight = fit.layers[1].tensors["proj.weight"].double()
    out_gain = adapter.norm_gain(getattr(layer, adapter.attention_output_norm).weight.detach()).double()
    in_gain = adapter.norm_gain(getattr(layer, adapter.input_norm).weight.detach()).double()
    m = weight / out_gain[:, None]  # M scaled by sqrt(d) / ||M diag(g_in)||_F
    assert float((m * in_gain).norm()) == pytest.approx(model.config.hidden_size**0.5, rel=1e-6)


@pytest.mark.parametrize("name", sorted(ALL_TINY))
def test_distill_lowers_the_held_out_kl_below_least_squares(name):
    model = tiny_model(name)
    windows = random_windows(num_samples=24, length=32)
    start = fit_replacements(model, LAYERS, "linear", windows)
    before = [t.clone() for f in start.layers.values() for t in f.tensors.values()]
    fit = distill_replacements(model, start, windows, steps=40, lr=1e-3)
    after = [t for f in start.layers.values() for t in f.tensors.values()]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))  # the start is not mutated
    extra = fit.extra
    assert fit.fit == "distill" and fit.kind == "linear" and extra["steps"] <= 40
    # The kept parameters are the best seen on the held-out quarter, the least-squares start included.
    assert extra["held_out_kl"] <= extra["held_out_kl_start"]
    assert all(p.requires_grad for p in model.parameters())  # the model is left trainable, as it came
    assert not model.training


def test_distill_wins_on_windows_the_fit_never_saw():
    model = tiny_model("llama")
    windows, unseen = (
        random_windows(num_samples=32, length=32),
        random_windows(seed=7, num_samples=8, length=32).input_ids,
    )
    start = fit_replacements(model, LAYERS, "linear", windows)
    fit = distill_replacements(model, start, windows, steps=60, lr=1e-3)
    assert fit.extra["held_out_kl"] < fit.extra["held_out_kl_start"]
    least_squares = replacement_recovery(model, start, unseen)
    distilled = replacement_recovery(model, fit, unseen)
    assert distilled["kl_with"] < least_squares["kl_with"] < least_squares["kl_without"]


def test_distill_is_deterministic_for_a_seed_and_the_seed_matters():
    model = tiny_model("qwen3")
    windows = random_windows(num_samples=12, length=24)
    start = fit_replacements(model, LAYERS, "linear", windows)
    runs = [distill_replacements(model, start, windows, steps=12, lr=1e-3, seed=s) for s in (0, 0, 1)]
    tensors = [[f.tensors["proj.weight"] for f in run.layers.values()] for run in runs]
    assert all(torch.equal(a, b) for a, b in zip(tensors[0], tensors[1], strict=True))
    assert runs[0].extra == {**runs[1].extra, "seconds": runs[0].extra["seconds"]}
    assert not all(torch.equal(a, b) for a, b in zip(tensors[0], tensors[2], strict=True))


def test_distill_mean_replacement_trains_the_bias():
    model = tiny_model("llama")
    windows = random_windows(num_samples=12, length=24)
    start = fit_replacements(model, LAYERS, "mean", windows)
    fit = distill_replacements(model, start, windows, steps=10, lr=1e-2)
    assert fit.kind == "mean" and set(fit.layers[1].tensors) == {"bias"}


def test_pruned_with_distill_saves_loads_exactly_and_reports_the_fit(tmp_path):
    config = GateNormConfig(num_layers=2, criterion="last", fit="distill", distill_steps=8)
    model, report = GateNormPruner(tiny_model("llama")).prune(config)
    fit = report.replacement
    assert fit["fit"] == "distill" and fit["distill"]["steps"] <= 8 and "state" not in fit["distill"]
    assert fit["distill"]["windows"] == "64 x 127 tokens sampled by the model (seed 0)"  # DISTILL_SAMPLES, fresh
    assert report.config["fit"] == "distill" and report.config["distill_steps"] == 8
    assert report.replacement_summary().startswith("Replaced them with linear maps fitted end to end in")
    save_pruned(model, tmp_path / "out")
    loaded = load_pruned(tmp_path / "out")
    state, saved_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == saved_state.keys() and all(torch.equal(state[k], saved_state[k]) for k in state)
    with torch.no_grad():  # the same weights; the loaded model may run another attention kernel (sdpa, not eager)
        torch.testing.assert_close(loaded(IDS).logits, model(IDS).logits, rtol=1e-5, atol=1e-4)
    saved = json.loads((tmp_path / "out" / "gatenorm_report.json").read_text())
    assert saved["replacement"]["distill"] == json.loads(json.dumps(fit["distill"]))
    # With calibration windows given, the fit distills on them instead of sampling.
    config = GateNormConfig(num_layers=1, criterion="last", fit="distill", distill_steps=2)
    _, report = GateNormPruner(tiny_model("llama")).prune(config, calibration=random_windows(num_samples=8))
    assert report.replacement["distill"]["windows"] == report.replacement["calibration"]["source"] == "token ids"
    # distill_samples sets how many it samples; the least-squares start keeps its 16 windows.
    config = GateNormConfig(num_layers=1, criterion="last", fit="distill", distill_steps=2, distill_samples=4)
    _, report = GateNormPruner(tiny_model("llama")).prune(config)
    assert report.replacement["calibration"]["num_samples"] == 16  # the least-squares start's windows
    distill = report.replacement["distill"]
    assert distill["steps"] <= 2 and distill["windows"] == "4 x 127 tokens sampled by the model (seed 0)"


def test_fit_by_name_dispatches_and_least_squares_is_unchanged():
    model = tiny_model("llama")
    windows = random_windows()
    plain = fit_replacements(model, LAYERS, "linear", windows)
    by_name = fit_replacements_by(model, LAYERS, "linear", "least-squares", windows)
    assert by_name.fit == "least-squares" and "distill" not in by_name.to_dict()
    for layer in LAYERS:
        assert torch.equal(plain.layers[layer].tensors["proj.weight"], by_name.layers[layer].tensors["proj.weight"])
    other = random_windows(seed=3, num_samples=8)
    distilled = fit_replacements_by(model, LAYERS, "linear", "distill", windows, distill_windows=other, steps=2)
    assert distilled.calibration == plain.calibration and distilled.extra["windows"] == other.source


def test_bad_fits_are_refused():
    assert FITS == ("least-squares", "distill") and (DISTILL_STEPS, DISTILL_SAMPLES) == (100, 64)
    assert GateNormConfig(num_layers=1).fit == "least-squares"  # the default stays, pending the study
    cases = [
        (dict(fit="ridge"), "fit must be one of least-squares, distill, got 'ridge'"),
        (dict(fit="weights"), "fit must be one of least-squares, distill, got 'weights'"),
        (dict(fit="distill", replacement="none"), "fits a replacement; give replacement 'linear'"),
        (dict(fit="distill", distill_steps=0), "distill steps must be an integer >= 1, got 0"),
        (dict(fit="distill", distill_steps=2.5), "distill steps must be an integer >= 1, got 2.5"),
        (dict(fit="distill", distill_samples=1), "distill_samples must be an integer >= 2"),
        (dict(fit="distill", distill_samples=None), "distill_samples must be an integer >= 2"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InvalidConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            GateNormConfig(num_layers=1, **kwargs)
    model = tiny_model("llama")
    start = fit_replacements(model, [1], "linear", random_windows(num_samples=1))
    with pytest.raises(InvalidConfigError, match="fit 'distill' needs at least 2 windows"):
        distill_replacements(model, start, random_windows(num_samples=1))


@pytest.mark.process
@pytest.mark.one_line  # three CLI processes; the library calls they make are tested on both lines above
def test_cli_prune_with_fit_and_bad_fit_requests(tmp_path):

    tiny_model("llama").save_pretrained(tmp_path / "llama")
    common = ["gatenorm", "prune", "-m", tmp_path / "llama", "-k", "1", "-c", "last"]
    result = ok(optimum_cli(*common, "-o", tmp_path / "d", "--fit", "distill", "--distill-steps", "3", "--json"))
    assert json.loads(result.stdout)["replacement"]["fit"] == "distill"
    help_text = " ".join(optimum_cli("gatenorm", "prune", "--help").stdout.split())
    assert "--fit {least-squares,distill}" in help_text and "--distill-steps" in help_text
    for args, message in [
        (["--fit", "weights"], "invalid choice: 'weights'"),
        (["--fit", "distill", "--replacement", "none"], "fits a replacement"),
        (["--distill-steps", "0"], "expected an integer >= 1, got '0'"),
        (["--distill-samples", "1"], "expected an integer >= 2, got '1'"),
    ]:
        result = optimum_cli(*common, "-o", tmp_path / "bad", *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not (tmp_path / "bad").exists()


def test_compare_scores_each_fit_and_records_it():
    from conftest import tiny_tokenizer

    from optimum_gatenorm.evaluation.compare import CompareConfig, compare_criteria

    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    text = "It is a truth universally acknowledged, that a single man. " * 6
    calibration = random_windows(num_samples=8, length=32)
    results = {
        fit: compare_criteria(
            model,
            tokenizer,
            text,
            CompareConfig(
                criteria=["last"], num_layers=[0, 2], window=64, replacement="linear", fit=fit, distill_steps=4
            ),
            calibration=calibration,
        )
        for fit in FITS
    }
    perplexities = {fit: result.points[1].perplexity for fit, result in results.items()}
    for fit, result in results.items():
        assert result.settings["fit"] == fit
        (record,) = result.settings["replacement_fits"].values()
        assert ("distill" in record) == (fit == "distill")
    # distill scores its own maps, which are the least-squares start only if no step beat it on the held-out windows
    kept = record["distill"]["kept_step"]
    assert (perplexities["distill"] == perplexities["least-squares"]) == (kept == 0), (perplexities, kept)
    with pytest.raises(InvalidConfigError, match="fits a replacement; give replacement 'linear'"):
        CompareConfig(replacement="none", fit="distill")


def test_compare_distills_on_sequences_it_samples_once_without_calibration():
    from conftest import tiny_tokenizer

    from optimum_gatenorm.evaluation.compare import CompareConfig, compare_criteria

    text = "It is a truth universally acknowledged, that a single man. " * 6
    config = CompareConfig(criteria=["last"], num_layers=[1, 2], window=64, replacement="linear", fit="distill")
    config.distill_steps = 2
    result = compare_criteria(tiny_model("llama"), tiny_tokenizer(), text, config)
    records = list(result.settings["replacement_fits"].values())
    assert len(records) == 2
    assert {r["distill"]["windows"] for r in records} == {"64 x 127 tokens sampled by the model (seed 0)"}
