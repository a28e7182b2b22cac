"""`optimum_gatenorm.compat`: what differs between the transformers lines, checked on the installed one."""

import json
import warnings

import pytest
import torch
from conftest import TINY_CONFIGS, tiny_model
from packaging.version import Version

from optimum_gatenorm import GateNormError, MissingExtraError, get_adapter
from optimum_gatenorm.compat import (
    TRANSFORMERS_5,
    TRANSFORMERS_VERSION,
    cache_kwargs,
    has_onnx,
    layer_returns_tuple,
    legacy_rope_config,
    require_onnx,
    require_onnxruntime,
    returned_cache,
    rope_settings,
    write_portable_config,
)


def test_the_installed_line_is_one_we_support():
    assert (4, 57) <= (TRANSFORMERS_VERSION.major, TRANSFORMERS_VERSION.minor) < (6, 0)
    assert TRANSFORMERS_5 == (TRANSFORMERS_VERSION.major == 5)


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_layer_return_type_is_what_the_installed_transformers_returns(name):
    model = tiny_model(name)
    adapter = get_adapter(model.config)
    seen = []
    layer = model.get_submodule(adapter.layers)[0]
    layer.register_forward_hook(lambda module, args, output: seen.append(output))
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))
    assert isinstance(seen[0], tuple) == layer_returns_tuple(adapter), type(seen[0])


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_cached_forward_passes_the_cache_under_the_installed_lines_name(name):
    model = tiny_model(name)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        cache = returned_cache(model(torch.tensor([[1, 2, 3]]), use_cache=True, **cache_kwargs(model, None)))
        step = model(torch.tensor([[4]]), use_cache=True, **cache_kwargs(model, cache))
    assert cache.get_seq_length() == 4 and returned_cache(step).get_seq_length() == 4
    # transformers 5.24 renamed past_key_values to cache (the old name warns, and goes in 5.40)
    assert list(cache_kwargs(model, None)) == (
        ["cache"] if TRANSFORMERS_VERSION >= Version("5.24") else ["past_key_values"]
    )
    assert not [str(w.message) for w in caught if "deprecated" in str(w.message)]


def test_missing_extra_error_is_a_user_error_and_an_import_error():
    assert issubclass(MissingExtraError, GateNormError) and issubclass(MissingExtraError, ImportError)


@pytest.mark.no_onnx
def test_without_the_onnx_extra_the_refusal_names_it():
    assert not has_onnx()
    with pytest.raises(MissingExtraError, match=r"the ONNX export needs the \[onnx\] extra .*pip install"):
        require_onnx("the ONNX export")
    with pytest.raises(MissingExtraError, match=r"\[onnxruntime\].*, or pass --backend pytorch$"):
        require_onnxruntime("the benchmark", "pass --backend pytorch")


@pytest.mark.onnx
def test_with_the_onnx_extra_nothing_is_refused():
    assert has_onnx()
    require_onnx("the ONNX export")
    require_onnxruntime("the benchmark")


def test_rope_settings_read_the_config_on_either_line():
    from transformers import AutoConfig

    linear = {"rope_type": "linear", "factor": 2.0}
    config = AutoConfig.for_model("llama", rope_theta=1e5, rope_scaling=linear)
    assert not TRANSFORMERS_5 or not hasattr(config, "rope_theta")  # why the helper exists
    settings = rope_settings(config)
    assert settings["rope_theta"] == 1e5 and settings["rope_scaling"]["factor"] == 2.0
    assert settings["rope_scaling"].get("rope_type", settings["rope_scaling"].get("type")) == "linear"
    assert rope_settings(AutoConfig.for_model("llama", rope_theta=1e5))["rope_scaling"] is None
    gemma = rope_settings(AutoConfig.for_model("gemma3_text", rope_theta=1e6, rope_local_base_freq=5e3))
    assert gemma["rope_theta"] == 1e6 and gemma["rope_local_base_freq"] == 5e3


def test_legacy_rope_names_per_architecture():
    llama = {"model_type": "llama", "rope_parameters": {"rope_theta": 1e5, "rope_type": "default"}}
    assert legacy_rope_config(llama) == {"rope_theta": 1e5, "rope_scaling": None}
    scaled = {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}
    assert legacy_rope_config({"model_type": "llama", "rope_parameters": scaled}) == {
        "rope_theta": 5e5,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0},
    }
    neox = {"model_type": "gpt_neox", "rope_parameters": {"rope_theta": 1e4, "partial_rotary_factor": 0.5}}
    assert legacy_rope_config(neox) == {"rotary_emb_base": 1e4, "rotary_pct": 0.5, "rope_scaling": None}
    nested = {
        "model_type": "llama",
        "rope_parameters": {"full_attention": {"rope_theta": 1e6}, "sliding_attention": {"rope_theta": 1e4}},
    }
    assert legacy_rope_config(nested)["rope_theta"] == 1e6  # 4.57 keeps the full-attention values
    assert legacy_rope_config({"model_type": "gpt2"}) == {} and legacy_rope_config({"model_type": "nope"}) == {}


def test_saved_configs_carry_the_rope_names_of_both_lines(tmp_path):
    model = tiny_model("llama", rope_theta=100000.0)
    model.save_pretrained(tmp_path)
    before = json.loads((tmp_path / "config.json").read_text())
    write_portable_config(tmp_path)
    after = json.loads((tmp_path / "config.json").read_text())
    assert after["rope_theta"] == 100000.0  # what 4.57 reads
    if TRANSFORMERS_5:
        assert "rope_theta" not in before and after["rope_parameters"]["rope_theta"] == 100000.0
    else:
        assert after == before
