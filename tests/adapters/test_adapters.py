"""Every adapter extracts exactly the Q and K its module computes."""

import sys
from dataclasses import replace

import pytest
import torch
from conftest import ALL_TINY, TINY_CONFIGS, tiny_config, tiny_model

from optimum_gatenorm import UnsupportedModelError, get_adapter, supported_model_types
from optimum_gatenorm.adapters import ForTests, HeadDims, Numerics, register_adapter
from optimum_gatenorm.checkpoints.tensors import ModelWeights, layer_weights
from optimum_gatenorm.exporters.onnx import check_onnx_exportable


def test_every_registered_architecture_has_a_tiny_config():
    # TINY_CONFIGS holds the registered adapters' non-empty `tiny_config`s.
    assert sorted(TINY_CONFIGS) == supported_model_types()


def test_every_adapter_module_registers_what_it_defines():
    # A family is one module in adapters/: the package imports every module of the folder, and each registers the
    # adapters it defines, so nothing else lists them (the registry is the one list of supported model types).
    import importlib
    import pkgutil

    import optimum_gatenorm.adapters as package
    from optimum_gatenorm.adapters import ArchitectureAdapter

    names = sorted(info.name for info in pkgutil.iter_modules(package.__path__))
    assert set(names) - {"base", "registry"} == set(package.FAMILY_MODULES) and len(package.FAMILY_MODULES) >= 6
    defined = []
    for name in package.FAMILY_MODULES:
        module = importlib.import_module(f"optimum_gatenorm.adapters.{name}")
        adapters = [value for value in vars(module).values() if isinstance(value, ArchitectureAdapter)]
        assert adapters, f"adapters/{name}.py defines no adapter"
        for adapter in adapters:
            assert all(get_adapter(model_type) is adapter for model_type in adapter.model_types), adapter.model_types
            defined += adapter.model_types
    assert sorted(defined) == supported_model_types()


def _capture_attention(model, monkeypatch):
    """Records (attention input, query, key) per attention module from the model's real eager forward."""
    adapter = get_adapter(model.config)
    records = {}
    for index, layer in enumerate(model.get_submodule(adapter.layers)):
        attention = getattr(layer, adapter.attention)

        def pre_hook(module, args, kwargs, index=index):
            records.setdefault(index, {})["x"] = args[0] if args else kwargs["hidden_states"]

        attention.register_forward_pre_hook(pre_hook, with_kwargs=True)
    modeling = sys.modules[type(getattr(model.get_submodule(adapter.layers)[0], adapter.attention)).__module__]
    original = modeling.eager_attention_forward
    owners = {id(getattr(layer, adapter.attention)): i for i, layer in enumerate(model.get_submodule(adapter.layers))}

    def capture(module, query, key, *args, **kwargs):
        records[owners[id(module)]].update(q=query.detach().clone(), k=key.detach().clone())
        return original(module, query, key, *args, **kwargs)

    monkeypatch.setattr(modeling, "eager_attention_forward", capture)
    return records


@pytest.mark.parametrize("name", sorted(ALL_TINY))
def test_extracted_qk_reproduce_the_modules_projections(name, monkeypatch):
    model = tiny_model(name)
    adapter = get_adapter(model.config)
    with torch.no_grad():  # non-trivial query/key norm gains, so that a wrong gain offset (w vs 1 + w) shows
        for layer in model.get_submodule(adapter.layers):
            for norm in adapter.qk_norms or ():
                getattr(getattr(layer, adapter.attention), norm).weight.uniform_(-0.5, 0.5)
    records = _capture_attention(model, monkeypatch)
    # One token per sequence at position 0: rotary embeddings are the identity there. Two sequences, so the
    # difference of their projections cancels the biases (qwen2, gpt2, gpt_neox have them).
    with torch.no_grad():
        model(torch.tensor([[5], [17]]))
    dims = HeadDims.from_config(model.config)
    source = ModelWeights(model)
    assert len(records) == model.config.num_hidden_layers
    for index, record in records.items():
        weights = layer_weights(source, model.config, index, with_norm=False)
        if adapter.qk_norms:
            # The module normalises each head's query and key (RMS over head_dim, then the gain) before the dot
            # product; no biases here, so compare one sequence directly.
            eps = model.config.rms_norm_eps
            for got, w, gain in ((record["q"], weights.q, weights.q_norm), (record["k"], weights.k, weights.k_norm)):
                raw = torch.einsum("hdn,n->hd", w, record["x"][0].reshape(dims.hidden_size))
                expected = gain * raw * torch.rsqrt(raw.square().mean(dim=-1, keepdim=True) + eps)
                torch.testing.assert_close(got[0][:, 0], expected, rtol=1e-4, atol=1e-5)
            continue
        dx = (record["x"][0] - record["x"][1]).reshape(dims.hidden_size)  # [hidden]
        expected_q = torch.einsum("hdn,n->hd", weights.q, dx)
        expected_k = torch.einsum("gdn,n->gd", weights.k, dx)
        got_q = (record["q"][0] - record["q"][1])[:, 0]  # [heads, head_dim]
        got_k = (record["k"][0] - record["k"][1])[:, 0]  # [kv_heads, head_dim]
        torch.testing.assert_close(got_q, expected_q, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got_k, expected_k, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_type", ["bert", "t5", "mixtral", "qwen2_moe"])
def test_unsupported_model_types_get_a_one_line_error_listing_supported_ones(model_type):
    with pytest.raises(UnsupportedModelError) as error:
        get_adapter(model_type)
    message = str(error.value)
    assert "\n" not in message and model_type in message
    assert all(t in message for t in supported_model_types())


def test_register_adapter_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_adapter(get_adapter("llama"))


def test_gpt2_with_layer_dependent_scale_is_refused():
    config = tiny_model("gpt2").config
    config.scale_attn_by_inverse_layer_idx = True
    with pytest.raises(UnsupportedModelError, match="scale_attn_by_inverse_layer_idx"):
        get_adapter(config)


@pytest.mark.parametrize("name", sorted(ALL_TINY))
def test_adapter_names_modules_the_model_has(name):
    # Catches a misspelt module name in a new adapter before any pruning test does.
    model = tiny_model(name)
    adapter = get_adapter(model.config)
    layer = model.get_submodule(adapter.layers)[0]
    for module in (*adapter.pruned_modules, *adapter.pruned_forward, adapter.input_norm, adapter.post_norm):
        assert isinstance(getattr(layer, module), torch.nn.Module), module
    attention = getattr(layer, adapter.attention)
    for module in (adapter.qk.o, *(adapter.qk_norms or ())):
        assert isinstance(getattr(attention, module), torch.nn.Module), module
    assert isinstance(model.get_submodule(adapter.embedding), torch.nn.Embedding)
    for attribute in (adapter.cost.attention_bias_attr, adapter.cost.mlp_bias_attr):
        assert attribute is None or hasattr(model.config, attribute), attribute


def test_adapter_defaults_and_validation():
    adapter = get_adapter("llama")
    assert adapter.pruned_modules == ("self_attn", "input_layernorm")
    assert adapter.pruned_forward == ("post_attention_layernorm", "mlp")
    assert adapter.pruned_module_prefixes(3) == ("model.layers.3.self_attn", "model.layers.3.input_layernorm")
    assert adapter.attention_norms == 1
    sandwich = replace(
        adapter,
        model_types=("sandwich",),
        pruned_modules=("self_attn", "input_layernorm", "post_attention_layernorm"),
        pruned_forward=("pre_feedforward_layernorm", "mlp", "post_feedforward_layernorm"),
        numerics=Numerics(norm_gain_offset=1.0),
    )
    assert sandwich.attention_norms == 2
    assert sandwich.norm_gain(torch.zeros(2)).tolist() == [1.0, 1.0]
    for bad in (
        dict(pruned_modules=("input_layernorm", "self_attn")),
        dict(pruned_modules=("self_attn",)),
        dict(pruned_forward=("post_attention_layernorm",)),
        dict(pruned_forward=("input_layernorm", "mlp")),
    ):
        with pytest.raises(ValueError):
            replace(adapter, **bad)
    for bad_group in (
        lambda: Numerics(norm_gain_offset=0.5),
        lambda: Numerics(embedding_scale="sqrt"),
        lambda: ForTests({"model_type": "llama"}),
    ):
        with pytest.raises(ValueError):
            bad_group()


def test_onnxruntime_quirks_come_from_the_adapter():
    check_onnx_exportable(tiny_config("llama"))  # GQA: ORTModelForCausalLM reads num_key_value_heads for llama
    with pytest.raises(UnsupportedModelError, match="grouped-query"):
        check_onnx_exportable(tiny_config("phi3"))  # ... but not for phi3
    config = tiny_config("llama")
    config.head_dim = 16
    with pytest.raises(UnsupportedModelError, match="head_dim=16"):
        check_onnx_exportable(config)


def test_bidirectional_gemma3_is_refused():
    config = tiny_config("gemma3_text")
    config.use_bidirectional_attention = True
    with pytest.raises(UnsupportedModelError, match="use_bidirectional_attention"):
        get_adapter(config)


def test_gemma3_wrapper_is_refused_with_a_recipe_that_works(tmp_path):
    from transformers import Gemma3Config, Gemma3ForCausalLM, Gemma3ForConditionalGeneration

    from optimum_gatenorm import GateNormConfig, GateNormPruner

    with pytest.raises(UnsupportedModelError) as error:
        get_adapter("gemma3")
    assert "\n" not in str(error.value) and "Gemma3ForCausalLM(m.config.text_config)" in str(error.value)
    # The recipe: the text model of a (tiny) multimodal checkpoint loads with no missing weights, computes the same
    # logits as the wrapper, and prunes as gemma3_text.
    text = dict(ALL_TINY["gemma3_text"], vocab_size=300)
    text.pop("model_type")
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28)
    config = Gemma3Config(
        text_config=text,
        vision_config=dict(vision, patch_size=14),
        mm_tokens_per_image=4,
        image_token_index=299,
        boi_token_index=297,
        eoi_token_index=298,
    )
    torch.manual_seed(0)
    wrapper = Gemma3ForConditionalGeneration(config).eval()
    wrapper.save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="Gemma3ForCausalLM"):
        GateNormPruner.from_pretrained(tmp_path)
    # The recipe of the message, as written there (the same on transformers 4.57 and 5.x).
    m = Gemma3ForConditionalGeneration.from_pretrained(tmp_path)
    text_model = Gemma3ForCausalLM(m.config.text_config)
    text_model.model, text_model.lm_head = m.model.language_model, m.lm_head
    text_model.save_pretrained(tmp_path / "text")
    text_model, info = Gemma3ForCausalLM.from_pretrained(tmp_path / "text", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids = torch.randint(0, 290, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(text_model.eval()(ids).logits, wrapper(input_ids=ids).logits)
    _, report = GateNormPruner(text_model).prune(GateNormConfig(num_layers=1, replacement="none"))
    assert report.model_type == "gemma3_text" and len(report.removed_layers) == 1


def test_the_architecture_table_comes_from_the_registry():
    from optimum_gatenorm import describe_architectures
    from optimum_gatenorm.exporters.serving import ServingPlan

    rows = describe_architectures()
    assert [row["model_type"] for row in rows] == supported_model_types()
    for row in rows:
        adapter = get_adapter(row["model_type"])
        assert row["notes"] == adapter.notes and row["notes"], row["model_type"]  # every family says what is special
        assert all(name.removesuffix(".weight") in row["query_key"] for name in adapter.qk.tensor_names())
        config = tiny_config(row["model_type"])
        for flag, _ in adapter.serving.unsupported_flags:  # the options the table's notes say are refused
            setattr(config, flag, False if isinstance(getattr(config, flag, None), bool) else None)
        for fmt in ("gguf", "nemotron-nas"):
            takes = row[fmt.replace("-", "_")]
            if takes:
                ServingPlan.from_config(config, fmt)
            else:
                with pytest.raises(UnsupportedModelError):
                    ServingPlan.from_config(config, fmt)
