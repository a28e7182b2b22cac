"""`ModelHandle`: a model resolved once, its weights loaded once, on first use."""

import pytest
import torch
from conftest import tiny_model

from optimum_gatenorm import GateNormConfig, GateNormPruner, ModelNotFoundError, UnsupportedModelError, get_adapter
from optimum_gatenorm.checkpoints.handle import ModelHandle
from optimum_gatenorm.checkpoints.modeling import load_pruned, save_pruned
from optimum_gatenorm.checkpoints.record import get_pruned_layers


def test_a_pruned_checkpoint_opens_without_loading_and_loads_once_with_its_structure(tmp_path):
    model, _ = GateNormPruner(tiny_model("llama")).prune(GateNormConfig(num_layers=2, criterion="gate_norm"))
    save_pruned(model, tmp_path / "pruned")
    handle = ModelHandle.open(tmp_path / "pruned")
    assert handle.source == tmp_path / "pruned" and handle._model is None  # nothing loaded yet
    assert handle.adapter is get_adapter("llama") and handle.checkpoint.format == "safetensors"
    assert get_pruned_layers(handle.config) == get_pruned_layers(model.config) and get_pruned_layers(model.config)
    loaded = handle.load()
    assert handle.load() is loaded  # loaded once
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, load_pruned(tmp_path / "pruned")(ids).logits)
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-5)


def test_an_in_memory_model_and_a_handle_pass_through():
    model = tiny_model("gpt2")
    handle = ModelHandle.open(model)
    assert handle.source is None and handle.checkpoint is None and handle.load() is model
    assert ModelHandle.open(handle) is handle


def test_a_bad_path_is_refused_before_anything_loads(tmp_path):
    with pytest.raises(ModelNotFoundError):
        ModelHandle.open(tmp_path / "missing")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(UnsupportedModelError):
        ModelHandle.open(tmp_path / "bert")
