"""`cosine_self`: `cosine` on text the model samples itself from its start token (no user data)."""

import math

import pytest
import torch
from conftest import ALL_TINY, tiny_model

from optimum_gatenorm import (
    GateNormConfig,
    GateNormPruner,
    InvalidCheckpointError,
    UnsupportedModelError,
    get_criterion,
    prune_model,
)
from optimum_gatenorm.criteria import Calibration
from optimum_gatenorm.criteria.selfcal import SELF_LENGTH, SELF_SAMPLES, self_generated, self_length, start_token


def _sampled_without_cache(model, seed: int, num_samples: int, length: int) -> torch.Tensor:
    """The same sampling as `self_generated`, recomputing the whole sequence at every step (no KV cache)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.full((num_samples, 1), start_token(model), dtype=torch.long)
    with torch.no_grad():
        for _ in range(length):
            probs = torch.softmax(model(input_ids=ids, use_cache=False).logits[:, -1, :].float(), dim=-1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=generator)], dim=1)
    return ids


@pytest.mark.parametrize("name", ["cosine_self", "attn_norm_self"])
def test_registered_as_data_free_model_level_and_seeded(name):
    c = get_criterion(name)
    assert c.model_level and c.needs_model and c.data_free and not c.needs_data and c.uses_seed


@pytest.mark.parametrize("name", ["llama", "gpt2", "gemma3_text"])
def test_kv_cache_sampling_matches_sampling_without_cache(name):
    model = tiny_model(name)
    state = torch.random.get_rng_state()
    ids = self_generated(model, num_samples=3, length=20, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)  # its own generator: the global RNG is untouched
    assert ids.shape == (3, 21) and (ids[:, 0] == start_token(model)).all()
    assert int(ids.min()) >= 0 and int(ids.max()) < model.config.vocab_size
    assert torch.equal(ids, _sampled_without_cache(model, 4, 3, 20))
    assert not torch.equal(ids, self_generated(model, num_samples=3, length=20, seed=5))
    assert not model.training


def test_sampling_on_a_pruned_model_uses_its_shrunk_cache():
    model = tiny_model("llama")
    prune_model(model, [1, 3])
    ids = self_generated(model, num_samples=2, length=24, seed=0)
    assert torch.equal(ids, _sampled_without_cache(model, 0, 2, 24))


def test_length_fits_the_position_table_and_start_token_falls_back_to_eos():
    model = tiny_model("gpt2")  # n_positions 128
    assert self_length(model) == 127 and self_length(model, 40) == 40
    assert SELF_LENGTH == 256 and SELF_SAMPLES == 16
    model.config.bos_token_id = 50256  # GPT-2's own, outside the tiny vocabulary of 128
    model.generation_config.bos_token_id = 5
    assert start_token(model) == 5  # the config's 50256 does not fit: the generation config's BOS does
    model.config.bos_token_id, model.config.eos_token_id = None, 7
    model.generation_config.bos_token_id = model.generation_config.eos_token_id = None
    assert start_token(model) == 7
    model.config.eos_token_id = None
    with pytest.raises(UnsupportedModelError, match="no bos_token_id or eos_token_id inside the vocabulary of 128"):
        start_token(model)


@pytest.mark.parametrize("name", sorted(ALL_TINY))
def test_scores_every_architecture_as_cosine_on_the_sampled_text(name):
    model = tiny_model(name)
    pruner = GateNormPruner(model)
    report = pruner.score("cosine_self", seed=2)
    assert report.data_free and report.seed == 2 and report.calibration is None
    assert len(report.scores) == model.config.num_hidden_layers
    assert all(isinstance(s, float) and math.isfinite(s) for s in report.scores)
    windows = self_generated(model, seed=2)
    assert windows.shape == (SELF_SAMPLES, self_length(model) + 1)
    reference = pruner.score("cosine", calibration=Calibration(windows)).scores
    assert report.scores == pytest.approx(reference, abs=1e-6)  # the same text again: the seed fixes it
    norms = pruner.score("attn_norm_self", seed=2).scores
    assert norms == pytest.approx(pruner.score("attn_norm", calibration=Calibration(windows)).scores, abs=1e-6)


def test_prune_from_a_checkpoint_needs_no_calibration_text(tmp_path):
    tiny_model("qwen2").save_pretrained(tmp_path / "ckpt")
    pruner = GateNormPruner.from_pretrained(tmp_path / "ckpt")
    pruned, report = pruner.prune(GateNormConfig(num_layers=2, criterion="cosine_self", seed=1, replacement="none"))
    assert len(report.removed_layers) == 2 and 0 not in report.removed_layers
    assert report.data_free and report.config["seed"] == 1
    expected = GateNormPruner(tiny_model("qwen2")).score("cosine_self", seed=1).ranking
    assert report.removed_layers == sorted([layer for layer in expected if layer != 0][:2])


def test_non_finite_weights_are_refused_before_sampling():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(InvalidCheckpointError, match=r"model\.layers\.1\.mlp\.down_proj\.weight holds NaN or Inf"):
        GateNormPruner(model).score("cosine_self")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = 0.0
        model.model.layers[2].self_attn.v_proj.weight[0, 0] = float("inf")
    with pytest.raises(InvalidCheckpointError, match="layer 2: the value weights hold NaN or Inf"):
        GateNormPruner(model).score("attn_norm_self")
