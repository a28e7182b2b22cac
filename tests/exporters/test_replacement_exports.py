"""Replaced attention sublayers in every export: ONNX (a MatMul or an Add, no attention, no KV), GGUF (llama.cpp's
deci linear-attention layer for `linear`, `mean` refused), Nemotron-NAS (`linear` as replace_with_linear for TensorRT-LLM, refused for vLLM)."""

import json

import pytest
import torch
from cli_support import gatenorm
from conftest import ALL_TINY, HAS_ONNX, SKIP_ONNX, tiny_config
from llama_cpp_support import check_parity, check_quantized, gguf_fields, prompt_ids
from model_support import REPLACED, byte_level_tokenizer, nemotron_llama, replaced_model

from optimum_gatenorm import InvalidConfigError, UnsupportedModelError, prune_model
from optimum_gatenorm.criteria.calibration import Calibration
from optimum_gatenorm.exporters.serving import intermediate_size_for
from optimum_gatenorm.pruning.replacement import fit_replacements


PROMPT = torch.tensor([[3, 9, 27, 81, 115, 12, 40], [0, 0, 0, 7, 21, 63, 101]])
MASK = torch.tensor([[1] * 7, [0, 0, 0, 1, 1, 1, 1]])


# --- ONNX ------------------------------------------------------------------------------------------------------------


def _onnx_exportable(name: str) -> bool:
    if not HAS_ONNX:
        return False
    from optimum_gatenorm.exporters.onnx import check_onnx_exportable

    try:
        check_onnx_exportable(tiny_config(name))
    except UnsupportedModelError:
        return False
    return True


ONNX_EXPORTABLE = [name for name in sorted(ALL_TINY) if _onnx_exportable(name)]


@pytest.fixture(scope="module", params=ONNX_EXPORTABLE or ["none"])
def onnx_exports(request, tmp_path_factory):
    """name -> {kind: (PyTorch model, ONNX dir)} for none / mean / linear."""
    if not HAS_ONNX:
        pytest.skip(SKIP_ONNX)
    from optimum_gatenorm import export_onnx

    name = request.param
    root = tmp_path_factory.mktemp(f"onnx-replaced-{name}")
    out = {}
    for kind in ("none", "mean", "linear"):
        model = replaced_model(name, kind)
        export_onnx(model, root / kind)
        out[kind] = (model, root / kind)
    return name, out


def _ops(directory) -> dict[str, int]:
    import onnx

    graph = onnx.load(str(directory / "model.onnx"), load_external_data=False).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    kv = sorted(i.name for i in graph.input if i.name.startswith("past_key_values."))
    return counts, kv


@pytest.mark.onnx
def test_onnx_graph_holds_a_matmul_or_an_add_per_replaced_layer_and_no_attention(onnx_exports):
    _, exports = onnx_exports
    (plain, plain_kv), (mean, mean_kv), (linear, linear_kv) = (_ops(exports[k][1]) for k in ("none", "mean", "linear"))
    kept = 4 - len(REPLACED)
    expected_kv = sorted(f"past_key_values.{j}.{kv}" for j in range(kept) for kv in ("key", "value"))
    for counts, kv in ((plain, plain_kv), (mean, mean_kv), (linear, linear_kv)):
        assert counts.get("Softmax", 0) + sum(n for op, n in counts.items() if "Attention" in op) == kept
        assert kv == expected_kv
    assert linear.get("MatMul", 0) - plain.get("MatMul", 0) == len(REPLACED)  # one d x d product per replaced layer
    assert mean.get("MatMul", 0) == plain.get("MatMul", 0) and mean["Add"] - plain["Add"] == len(REPLACED)


@pytest.mark.onnx
@pytest.mark.parametrize("kind", ["mean", "linear"])
def test_onnx_logits_and_generation_match_pytorch(onnx_exports, kind):
    from optimum.onnxruntime import ORTModelForCausalLM

    _, exports = onnx_exports
    model, directory = exports[kind]
    for io_binding in (False, True):
        ort = ORTModelForCausalLM.from_pretrained(directory, use_io_binding=io_binding)
        kwargs = dict(
            attention_mask=MASK, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0,
            output_logits=True, return_dict_in_generate=True,
        )  # fmt: skip
        with torch.no_grad():
            torch.testing.assert_close(
                ort(PROMPT, attention_mask=MASK).logits[MASK.bool()],
                model(PROMPT, attention_mask=MASK).logits[MASK.bool()],
                rtol=1e-4,
                atol=1e-4,
            )
            from_ort, from_torch = ort.generate(PROMPT, **kwargs), model.generate(PROMPT, **kwargs)
        assert torch.equal(from_ort.sequences, from_torch.sequences)
        for step_ort, step_torch in zip(from_ort.logits, from_torch.logits, strict=True):
            torch.testing.assert_close(step_ort, step_torch, rtol=1e-4, atol=1e-4)


# --- GGUF (llama.cpp) and Nemotron-NAS --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def serving_dirs(tmp_path_factory):
    """A tiny Llama with a byte-level tokenizer, saved with layers 1 and 2 replaced by each kind (and layer 0 too
    for `linear0`)."""

    from optimum_gatenorm import save_pruned

    root = tmp_path_factory.mktemp("serving-replaced")
    byte_level_tokenizer().save_pretrained(root / "tokenizer")
    windows = Calibration(torch.randint(0, 300, (8, 32), generator=torch.Generator().manual_seed(0)))
    dirs = {}
    for name, kind, layers in (("linear", "linear", [1, 2]), ("linear0", "linear", [0, 2]), ("mean", "mean", [1, 2])):
        model = nemotron_llama()
        fit = fit_replacements(model, layers, kind, windows)
        prune_model(model, layers, replacements=fit.layers)
        save_pruned(model, root / name, tokenizer_from=root / "tokenizer")
        dirs[name] = root / name
    return dirs


@pytest.mark.parametrize("name", ["linear", "linear0"])
def test_gguf_linear_is_llama_cpp_linear_attention_with_pytorch_tokens(serving_dirs, name, tmp_path):
    import gguf

    from optimum_gatenorm import export_gguf, load_pruned

    replaced = [1, 2] if name == "linear" else [0, 2]
    out = export_gguf(serving_dirs[name], tmp_path / "model.gguf", gguf_type="f32", pre_tokenizer="gpt-2")
    fields = gguf_fields(out)
    assert fields["general.architecture"] == "deci"
    assert fields["deci.attention.head_count"] == [4, 4, 4, 4]  # a linear-attention layer keeps its head count ...
    assert fields["deci.attention.head_count_kv"] == [0 if i in replaced else 2 for i in range(4)]  # ... no KV
    assert fields["gatenorm.linear_attention_layers"] == replaced
    tensors = {t.name: [int(n) for n in t.shape] for t in gguf.GGUFReader(out).tensors}
    for i in replaced:
        assert tensors[f"blk.{i}.attn_output.weight"] == [64, 64] and tensors[f"blk.{i}.attn_norm.weight"] == [64]
        assert not any(f"blk.{i}.attn_{x}" in tensors for x in ("q.weight", "k.weight", "v.weight", "output.bias"))
    model = load_pruned(serving_dirs[name], dtype=torch.float32)
    check_parity(model, out, prompt_ids(serving_dirs[name]))  # greedy tokens equal, logits within F32_TOL
    # ... and the replacement matters there: the same GGUF with the maps zeroed (plain removal) gives other logits.
    from llama_cpp_support import llama_cpp_logits

    prompt = prompt_ids(serving_dirs[name])
    with torch.no_grad():
        for i in replaced:
            model.get_submodule(f"model.layers.{i}.attention_replacement.proj").weight.zero_()
        zeroed = model(torch.tensor([prompt])).logits[0].numpy()
    assert abs(llama_cpp_logits(out, prompt) - zeroed).max() > 1e-2


@pytest.mark.parametrize("name", ["linear", "linear0"])
def test_llama_cpp_quantizer_takes_linear_attention_layers(serving_dirs, name, tmp_path):

    from optimum_gatenorm import export_gguf, load_pruned

    replaced = [1, 2] if name == "linear" else [0, 2]
    out = export_gguf(serving_dirs[name], tmp_path / "model.gguf", pre_tokenizer="gpt-2", quantize="q4_k_m")
    model = load_pruned(serving_dirs[name], dtype=torch.float32)
    fields = check_quantized(out, model, prompt_ids(serving_dirs[name]), "q4_k_m")
    assert fields["deci.attention.head_count_kv"] == [0 if i in replaced else 2 for i in range(4)]
    assert fields["gatenorm.linear_attention_layers"] == replaced


def test_gguf_refuses_mean_and_nemotron_nas_for_vllm_refuses_any_replacement(serving_dirs, tmp_path):
    from optimum_gatenorm import export_gguf, export_nemotron_nas

    with pytest.raises(UnsupportedModelError) as error:
        export_gguf(serving_dirs["mean"], tmp_path / "m.gguf", pre_tokenizer="gpt-2")
    assert str(error.value) == (
        "`format='gguf'` cannot hold the mean replacement of layers [1, 2]: llama.cpp's deci graph has no constant "
        "update; prune with `replacement='linear'` (a linear-attention layer) or export `format='onnx'`"
    )
    for name in ("mean", "linear"):
        with pytest.raises(UnsupportedModelError, match="vLLM's Nemotron-NAS reader ignores replace_with_linear") as e:
            export_nemotron_nas(serving_dirs[name], tmp_path / f"n-{name}")
        assert "`engine='tensorrt-llm'`" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UnsupportedModelError, match="TensorRT-LLM's bias-free linear attention has no constant"):
        export_nemotron_nas(serving_dirs["mean"], tmp_path / "n-mean", engine="tensorrt-llm")
    with pytest.raises(InvalidConfigError, match="`engine='sglang'` is not a Nemotron-NAS engine; choose one of vllm"):
        export_nemotron_nas(serving_dirs["linear"], tmp_path / "n-x", engine="sglang")
    assert list(tmp_path.iterdir()) == []


# What TensorRT-LLM's PyTorch backend (`tensorrt_llm/_torch/models/modeling_nemotron_nas.py`) builds for a layer, and
# so the tensors it loads: a kept layer its `input_layernorm` and `NemotronNASAttention` (q/k/v/o); a
# `replace_with_linear` layer its `input_layernorm` and `LinearAttention.linear_attn`, a bias-free hidden x hidden
# `Linear`; a `no_op` layer neither. Every layer keeps `post_attention_layernorm` and the gated MLP.
def _trt_llm_tensors(block: dict, layer: int, hidden: int, heads: int, head_dim: int) -> dict[str, list[int]]:
    prefix, attention = f"model.layers.{layer}", block["attention"]
    tensors = {f"{prefix}.post_attention_layernorm.weight": [hidden]}
    width = intermediate_size_for(block["ffn"]["ffn_mult"], hidden)
    for name, shape in (("gate_proj", [width, hidden]), ("up_proj", [width, hidden]), ("down_proj", [hidden, width])):
        tensors[f"{prefix}.mlp.{name}.weight"] = shape
    if attention["no_op"]:
        return tensors
    tensors[f"{prefix}.input_layernorm.weight"] = [hidden]
    if attention["replace_with_linear"]:
        tensors[f"{prefix}.self_attn.linear_attn.weight"] = [hidden, hidden]
        return tensors
    kv = heads // attention["n_heads_in_group"]
    for name, rows in (("q_proj", heads), ("k_proj", kv), ("v_proj", kv)):
        tensors[f"{prefix}.self_attn.{name}.weight"] = [rows * head_dim, hidden]
    tensors[f"{prefix}.self_attn.o_proj.weight"] = [hidden, heads * head_dim]
    return tensors


@pytest.mark.process
@pytest.mark.parametrize("name", ["linear", "linear0"])
def test_nemotron_nas_for_tensorrt_llm_keeps_the_linear_maps_under_its_reader_names(serving_dirs, name, tmp_path):
    from llama_cpp_support import convert_with_llama_cpp
    from safetensors import safe_open

    from optimum_gatenorm import export_nemotron_nas, load_pruned

    replaced = [1, 2] if name == "linear" else [0, 2]
    nas = export_nemotron_nas(serving_dirs[name], tmp_path / "nas", engine="tensorrt-llm")
    config = json.loads((nas / "config.json").read_text())
    blocks = config["block_configs"]
    assert [b["attention"]["replace_with_linear"] for b in blocks] == [i in replaced for i in range(4)]
    assert not any(b["attention"]["no_op"] for b in blocks)
    assert [b["attention"]["n_heads_in_group"] for b in blocks] == [None if i in replaced else 2 for i in range(4)]
    assert config["gatenorm_linear_attention_layers"] == replaced
    with safe_open(str(nas / "model.safetensors"), framework="pt") as f:
        written = {key: list(f.get_slice(key).get_shape()) for key in f.keys()}
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    expected = {"model.embed_tokens.weight": [config["vocab_size"], hidden], "model.norm.weight": [hidden]}
    if not config.get("tie_word_embeddings"):
        expected["lm_head.weight"] = [config["vocab_size"], hidden]
    for i, block in enumerate(blocks):
        expected.update(_trt_llm_tensors(block, i, hidden, heads, hidden // heads))
    assert written == expected  # every tensor the reader loads, with its shape, and nothing else
    # The maps themselves: the tensors of the pruned checkpoint, renamed.
    model = load_pruned(serving_dirs[name], dtype=torch.float32)
    with safe_open(str(nas / "model.safetensors"), framework="pt") as f:
        for i in replaced:
            replacement = model.get_submodule(f"model.layers.{i}.attention_replacement")
            assert torch.equal(f.get_tensor(f"model.layers.{i}.self_attn.linear_attn.weight"), replacement.proj.weight)
            assert torch.equal(f.get_tensor(f"model.layers.{i}.input_layernorm.weight"), replacement.norm.weight)
    # An independent reader of the same layout: llama.cpp's converter makes it deci's linear attention, and llama.cpp
    # then gives PyTorch's greedy tokens and logits.
    out = convert_with_llama_cpp(nas, tmp_path / "converted.gguf", pre="gpt-2")
    assert gguf_fields(out)["deci.attention.head_count_kv"] == [0 if i in replaced else 2 for i in range(4)]
    check_parity(model, out, prompt_ids(serving_dirs[name]))


@pytest.mark.process
def test_cli_export_refusals_are_one_line(serving_dirs, tmp_path):
    for fmt, name, needle, extra in (
        ("gguf", "mean", "--replacement linear", ()),
        ("nemotron-nas", "linear", "--engine tensorrt-llm", ()),
        ("gguf", "linear", "--engine applies to --format nemotron-nas", ("--engine", "tensorrt-llm")),
        ("onnx", "linear", "--quantize applies to --format gguf", ("--quantize", "q4_k_m")),
        ("gguf", "linear", "not --gguf-type q8_0", ("--quantize", "q4_k_m", "--gguf-type", "q8_0")),
    ):
        output = tmp_path / ("x.gguf" if fmt == "gguf" else "x")
        result = gatenorm("export", "-m", serving_dirs[name], "--format", fmt, "-o", output, *extra)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and needle in result.stderr, result.stderr
        assert not output.exists()
    help_text = " ".join(gatenorm("export", "--help").stdout.split())
    assert "deci's linear-attention layer" in help_text and "vLLM ignores replace_with_linear" in help_text
    assert "--engine tensorrt-llm writes a linear one as replace_with_linear" in help_text
