"""Serving exports verified by an engine that is not ours: llama.cpp (llama-cpp-python, built from PyPI's sdist).

- `--format gguf`: llama.cpp runs the file and gives PyTorch's greedy tokens for 32 steps, with logits within
  `F32_TOL` (f32); f16 and q8_0 run with looser logits.
- `--format nemotron-nas`: llama.cpp's own HF-to-GGUF converter (`DeciModel`, an independent reader of
  `block_configs`) turns it into a GGUF that llama.cpp runs with the same tokens and logits.
- Neither export loads as an unpruned model: transformers refuses both (no `nemotron-nas` config type, no `deci`
  GGUF architecture), and a pruned GGUF is llama.cpp's `deci` with zero heads in the removed layers.
Nothing is mocked. Tiny random models run in seconds; the real SmolLM2-135M tests are marked slow.
"""

from __future__ import annotations

import json
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch
from llama_cpp_support import (
    LOOSE_TOL,
    LOOSE_TOP1,
    NEW_TOKENS,
    check_parity,
    check_quantized,
    convert_with_llama_cpp,
    gguf_fields,
    llama_cpp_greedy,
    llama_cpp_logits,
    prompt_ids,
)
from model_support import TEXT, byte_level_tokenizer, nemotron_llama
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from optimum_gatenorm import (
    GateNormConfig,
    GateNormPruner,
    export_gguf,
    export_nemotron_nas,
    load_pruned,
    resolve_model,
    save_pruned,
)
from optimum_gatenorm.checkpoints.modeling import prune_model
from optimum_gatenorm.errors import InvalidConfigError, OutputExistsError, UnsupportedModelError
from optimum_gatenorm.exporters.serving import ffn_mult_for, intermediate_size_for


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """`{"unpruned": dir, "pruned": dir}`: a tiny Llama and the same with attention removed in layers 1 and 2."""
    root = tmp_path_factory.mktemp("serving")
    tokenizer = byte_level_tokenizer()
    model = nemotron_llama()
    model.save_pretrained(root / "unpruned")
    tokenizer.save_pretrained(root / "unpruned")
    prune_model(model, [1, 2])
    save_pruned(model, root / "pruned", tokenizer_from=root / "unpruned")
    return {"unpruned": root / "unpruned", "pruned": root / "pruned"}


@pytest.mark.parametrize("variant", ["unpruned", "pruned"])
def test_gguf_f32_gives_pytorch_tokens_and_logits_on_llama_cpp(tiny_dirs, variant, tmp_path):
    out = export_gguf(tiny_dirs[variant], tmp_path / "model.gguf", gguf_type="f32", pre_tokenizer="gpt-2")
    fields = gguf_fields(out)
    if variant == "pruned":
        # llama.cpp's deci: zero heads (no attention, no KV cache) in layers 1 and 2, never plain llama.
        assert fields["general.architecture"] == "deci"
        assert fields["deci.attention.head_count"] == [4, 0, 0, 4]
        assert fields["deci.attention.head_count_kv"] == [2, 0, 0, 2]
        names = {t.name for t in gguf.GGUFReader(out).tensors}
        assert "blk.1.attn_q.weight" not in names and "blk.1.attn_norm.weight" not in names
        assert "blk.1.ffn_norm.weight" in names and "blk.3.attn_k.weight" in names
    else:
        assert fields["general.architecture"] == "llama"
        assert fields["llama.attention.head_count"] == 4
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.eos_token_id"] == 0
    check_parity(load_pruned(tiny_dirs[variant], dtype=torch.float32), out, prompt_ids(tiny_dirs[variant]))


@pytest.mark.parametrize("gguf_type", ["f16", "q8_0"])
def test_gguf_f16_and_q8_0_run_close_to_pytorch(tiny_dirs, gguf_type, tmp_path):
    out = export_gguf(tiny_dirs["pruned"], tmp_path / "model.gguf", gguf_type=gguf_type, pre_tokenizer="gpt-2")
    expected = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[gguf_type]
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] == expected and types["blk.0.ffn_norm.weight"] == gguf.GGMLQuantizationType.F32
    model = load_pruned(tiny_dirs["pruned"], dtype=torch.float32)
    ids = prompt_ids(tiny_dirs["pruned"]) + list(range(3, 3 + NEW_TOKENS))
    with torch.no_grad():
        expected_logits = model(torch.tensor([ids])).logits[0].numpy()
    logits = llama_cpp_logits(out, ids)
    error = np.abs(logits - expected_logits).max() / np.abs(expected_logits).max()
    assert error < LOOSE_TOL[gguf_type], error
    assert (logits.argmax(-1) == expected_logits.argmax(-1)).mean() >= LOOSE_TOP1


@pytest.mark.parametrize("variant", ["unpruned", "pruned"])
@pytest.mark.parametrize("quantize", ["q8_0", "q4_k_m"])
def test_llama_cpp_quantizer_takes_pruned_and_unpruned_files(tiny_dirs, variant, quantize, tmp_path):
    out = export_gguf(tiny_dirs[variant], tmp_path / "model.gguf", pre_tokenizer="gpt-2", quantize=quantize)
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]  # the f16 intermediate is gone
    model = load_pruned(tiny_dirs[variant], dtype=torch.float32)
    fields = check_quantized(out, model, prompt_ids(tiny_dirs[variant]), quantize)
    if variant == "pruned":  # still llama.cpp's deci with attention-free layers 1 and 2
        assert fields["general.architecture"] == "deci" and fields["deci.attention.head_count"] == [4, 0, 0, 4]
    else:
        assert fields["general.architecture"] == "llama"


def test_quantize_refusals(tiny_dirs, tmp_path):
    with pytest.raises(InvalidConfigError, match="`quantize='q4_k_xl'` is not a llama.cpp quantization type"):
        export_gguf(tiny_dirs["pruned"], tmp_path / "m.gguf", quantize="q4_k_xl")
    with pytest.raises(InvalidConfigError, match="quantizes the f16 or f32 export, not `gguf_type='q8_0'`"):
        export_gguf(tiny_dirs["pruned"], tmp_path / "m.gguf", gguf_type="q8_0", quantize="q4_k_m")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.process
@pytest.mark.parametrize("variant", ["unpruned", "pruned"])
def test_nemotron_nas_converted_by_llama_cpp_gives_pytorch_tokens(tiny_dirs, variant, tmp_path):
    nas = export_nemotron_nas(tiny_dirs[variant], tmp_path / "nas")
    config = json.loads((nas / "config.json").read_text())
    assert config["architectures"] == ["DeciLMForCausalLM"] and config["model_type"] == "nemotron-nas"
    blocks = config["block_configs"]
    removed = [1, 2] if variant == "pruned" else []
    assert [b["attention"]["no_op"] for b in blocks] == [i in removed for i in range(4)]
    assert [b["attention"]["n_heads_in_group"] for b in blocks] == [None if i in removed else 2 for i in range(4)]
    assert {intermediate_size_for(b["ffn"]["ffn_mult"], 64) for b in blocks} == {256}
    out = convert_with_llama_cpp(nas, tmp_path / "converted.gguf", pre="gpt-2")
    assert gguf_fields(out)["deci.attention.head_count"] == [0 if i in removed else 4 for i in range(4)]
    check_parity(load_pruned(tiny_dirs[variant], dtype=torch.float32), out, prompt_ids(tiny_dirs[variant]))


def test_exports_never_load_as_an_unpruned_model(tiny_dirs, tmp_path):
    nas = export_nemotron_nas(tiny_dirs["pruned"], tmp_path / "nas")
    gguf_file = export_gguf(tiny_dirs["pruned"], tmp_path / "pruned.gguf", pre_tokenizer="gpt-2")
    # transformers has no `nemotron-nas` config type: without remote code it fails instead of building a Llama.
    with pytest.raises((ValueError, KeyError)):
        AutoModelForCausalLM.from_pretrained(nas)
    with pytest.raises((ValueError, KeyError)):
        load_pruned(nas)
    # transformers' GGUF reader has no `deci` architecture either.
    with pytest.raises((ValueError, KeyError, RuntimeError)):
        AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf_file.name)


def test_ffn_mult_is_exact_or_refused():
    assert ffn_mult_for(1536, 576) == 4.0 and intermediate_size_for(4.0, 576) == 1536  # SmolLM2
    assert intermediate_size_for(ffn_mult_for(14336, 4096), 4096) == 14336  # Llama 3 8B
    with pytest.raises(UnsupportedModelError, match="multiple of 256"):
        ffn_mult_for(64, 32)


@pytest.mark.parametrize(
    ("model_type", "extra", "match"),
    [
        ("qwen2", {}, "does not support model_type 'qwen2'"),
        ("gpt2", {}, "does not support model_type 'gpt2'"),
        ("mistral", {"sliding_window": 4096}, "sliding_window=4096"),
        ("llama", {"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "rope_scaling type 'yarn'"),
    ],
)
@pytest.mark.parametrize("fmt", ["gguf", "nemotron-nas"])
def test_unsupported_models_are_refused_in_one_line(model_type, extra, match, fmt, tmp_path):
    from conftest import tiny_model

    model = tiny_model(model_type)
    for key, value in extra.items():
        setattr(model.config, key, value)
    with pytest.raises(UnsupportedModelError, match=match) as error:
        if fmt == "gguf":
            (tmp_path / "tokenizer").mkdir()  # not read: the refusal comes first; never a folder holding the output
            export_gguf(model, tmp_path / "x.gguf", tokenizer_from=tmp_path / "tokenizer")
        else:
            export_nemotron_nas(model, tmp_path / "x")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "x").exists()


def test_pruned_layer_0_is_refused_for_gguf_only(tiny_dirs, tmp_path):
    model = load_pruned(tiny_dirs["unpruned"], dtype=torch.float32)
    prune_model(model, [0])
    with pytest.raises(UnsupportedModelError, match="layer 0"):
        export_gguf(model, tmp_path / "x.gguf", tokenizer_from=tiny_dirs["unpruned"], pre_tokenizer="gpt-2")
    blocks = json.loads((export_nemotron_nas(model, tmp_path / "nas") / "config.json").read_text())["block_configs"]
    assert blocks[0]["attention"]["no_op"] is True


@pytest.mark.process
def test_cli_exports_gguf_and_refuses_existing_output(tiny_dirs, tmp_path):
    out = tmp_path / "model.gguf"
    command = [sys.executable, "-m", "optimum.commands.optimum_cli", "gatenorm", "export"]
    command += ["--model", str(tiny_dirs["pruned"])]
    command += ["--format", "gguf", "--gguf-type", "q8_0", "--gguf-pre-tokenizer", "gpt-2", "-o", str(out)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert gguf_fields(out)["general.architecture"] == "deci"
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 2 and "Traceback" not in again.stderr and "--overwrite" in again.stderr
    with pytest.raises(OutputExistsError):
        export_gguf(tiny_dirs["pruned"], out, pre_tokenizer="gpt-2")


@pytest.fixture(scope="module")
def smollm2():
    return resolve_model("smollm2-135m")


@pytest.mark.real
@pytest.mark.parametrize("pruned", [False, True], ids=["unpruned", "pruned4"])
def test_smollm2_gguf_and_nemotron_nas_give_pytorch_tokens_on_llama_cpp(smollm2, pruned, tmp_path):
    if pruned:
        model, report = GateNormPruner.from_pretrained(smollm2).prune(GateNormConfig(num_layers=4, replacement="none"))
        save_pruned(model, tmp_path / "ckpt", tokenizer_from=smollm2, dtype=torch.float32)
        source = tmp_path / "ckpt"
    else:
        source = smollm2
    model = load_pruned(source, dtype=torch.float32)
    prompt = PreTrainedTokenizerFast.from_pretrained(smollm2)(TEXT[:60]).input_ids

    out = export_gguf(source, tmp_path / "model.gguf", gguf_type="f32")
    fields = gguf_fields(out)
    assert fields["tokenizer.ggml.pre"] == "smollm" and "tokenizer.chat_template" in fields
    heads = fields.get("deci.attention.head_count", fields.get("llama.attention.head_count"))
    assert (heads.count(0) if pruned else 0) == (4 if pruned else 0)
    check_parity(model, out, prompt)
    # The tokenizer metadata alone: llama.cpp tokenizes text as transformers does, specials and the BOS llama.cpp
    # adds by itself (tokenizer.ggml.add_bos_token) included.
    from llama_cpp import Llama

    llm = Llama(model_path=str(out), vocab_only=True, verbose=False)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(smollm2)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": TEXT}], tokenize=False)
    for text in (TEXT, chat):
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == tokenizer(text).input_ids
    llm.close()

    nas = export_nemotron_nas(source, tmp_path / "nas")
    check_parity(model, convert_with_llama_cpp(nas, tmp_path / "converted.gguf", pre="smollm"), prompt)

    q8 = export_gguf(source, tmp_path / "q8.gguf", gguf_type="q8_0")
    ids = prompt + llama_cpp_greedy(q8, prompt, NEW_TOKENS)[0]
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    assert (llama_cpp_logits(q8, ids).argmax(-1) == expected.argmax(-1)).mean() >= LOOSE_TOP1


@pytest.mark.real
@pytest.mark.one_line  # the real default prune (2-3 min); the linear layout is tested on both lines on tiny models
def test_smollm2_default_linear_replacement_gives_pytorch_tokens_on_llama_cpp(smollm2, tmp_path):
    """The default prune (linear replacement) of the real SmolLM2, served as llama.cpp's deci linear attention."""
    model, report = GateNormPruner.from_pretrained(smollm2).prune(GateNormConfig(num_layers=4))
    assert report.config["replacement"] == "linear" and sorted(report.replacement["layers"]) == sorted(
        str(layer) for layer in report.removed_layers
    )
    save_pruned(model, tmp_path / "ckpt", tokenizer_from=smollm2, dtype=torch.float32)
    model = load_pruned(tmp_path / "ckpt", dtype=torch.float32)
    prompt = PreTrainedTokenizerFast.from_pretrained(smollm2)(TEXT[:60]).input_ids
    out = export_gguf(tmp_path / "ckpt", tmp_path / "model.gguf", gguf_type="f32")
    fields = gguf_fields(out)
    assert fields["general.architecture"] == "deci"
    # Linear attention: heads kept, no KV heads, in exactly the removed layers.
    assert fields["deci.attention.head_count"].count(0) == 0
    kv = fields["deci.attention.head_count_kv"]
    assert [i for i, n in enumerate(kv) if n == 0] == report.removed_layers
    check_parity(model, out, prompt)
