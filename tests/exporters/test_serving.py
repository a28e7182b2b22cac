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
import llama_cpp  # the engine under test: a missing build must fail here, not skip
import numpy as np
import pytest
import torch
from llama_cpp_support import convert_with_llama_cpp, llama_cpp_greedy, llama_cpp_logits
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

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


# f32 GGUF vs PyTorch float32: largest |logit difference| relative to the largest |logit| (llama.cpp sums in
# another order and uses its own rope/softmax kernels; KV cache in f32: measured ~2e-6 on the tiny model).
F32_TOL = 1e-4
# f16 / q8_0 weights: relative logit error, and the share of positions whose top token agrees. q8_0 also quantizes
# the activations in each matmul; on the tiny random model (large weights, near-tied logits) measured: 0.10 and
# 91% of positions; on SmolLM2 the top token agrees more often.
LOOSE_TOL = {"f16": 0.02, "q8_0": 0.15}
LOOSE_TOP1 = 0.85
NEW_TOKENS = 32
TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
    "of a wife. However little known the feelings or views of such a man may be on his first entering a "
    "neighbourhood, this truth is so well fixed in the minds of the surrounding families."
)


def _byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE (GPT-2 pre-tokenizer, 300 ids, real merges) that llama.cpp's gpt2 vocab can load."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([TEXT] * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def _tiny_llama():
    """Tiny random Llama (GQA 4/2, hidden 64, 4 layers) whose MLP width 256 Nemotron-NAS can express."""
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "llama",
        vocab_size=320,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        # Not the default 10000: a writer reading the default instead (5.x configs keep it in rope_parameters
        # only) would give llama.cpp other logits.
        rope_theta=1000.0,
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.2)
    return model


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """`{"unpruned": dir, "pruned": dir}`: a tiny Llama and the same with attention removed in layers 1 and 2."""
    root = tmp_path_factory.mktemp("serving")
    tokenizer = _byte_level_tokenizer()
    model = _tiny_llama()
    model.save_pretrained(root / "unpruned")
    tokenizer.save_pretrained(root / "unpruned")
    prune_model(model, [1, 2])
    save_pruned(model, root / "pruned", tokenizer_from=root / "unpruned")
    return {"unpruned": root / "unpruned", "pruned": root / "pruned"}


def _prompt(directory) -> list[int]:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(directory)
    return tokenizer(TEXT[:60]).input_ids


def _torch_greedy(model, prompt: list[int]) -> tuple[list[int], np.ndarray]:
    # Exactly NEW_TOKENS argmax steps with nothing masked, as `llama_cpp_greedy` does. (`generate`'s
    # min_new_tokens masks EOS until the minimum length: a pruned model whose greedy choice is EOS then diverges.)
    out = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            next_token = model(out).logits[0, -1].argmax()
            out = torch.cat([out, next_token.view(1, 1)], dim=1)
        logits = model(out).logits[0].float().numpy()
    return out[0, len(prompt) :].tolist(), logits


def _check_parity(model, gguf_file, prompt):
    """llama.cpp's greedy tokens equal PyTorch's and every position's logits agree within F32_TOL."""
    expected_tokens, expected_logits = _torch_greedy(model, prompt)
    tokens, logits = llama_cpp_greedy(gguf_file, prompt, NEW_TOKENS)
    assert tokens == expected_tokens
    assert logits.shape == expected_logits.shape
    error = np.abs(logits - expected_logits).max() / np.abs(expected_logits).max()
    assert error < F32_TOL, error
    return error


def _fields(gguf_file) -> dict:
    reader = gguf.GGUFReader(gguf_file)
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("tokenizer.ggml.t")}


@pytest.mark.parametrize("variant", ["unpruned", "pruned"])
def test_gguf_f32_gives_pytorch_tokens_and_logits_on_llama_cpp(tiny_dirs, variant, tmp_path):
    out = export_gguf(tiny_dirs[variant], tmp_path / "model.gguf", gguf_type="f32", pre_tokenizer="gpt-2")
    fields = _fields(out)
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
    _check_parity(load_pruned(tiny_dirs[variant], dtype=torch.float32), out, _prompt(tiny_dirs[variant]))


@pytest.mark.parametrize("gguf_type", ["f16", "q8_0"])
def test_gguf_f16_and_q8_0_run_close_to_pytorch(tiny_dirs, gguf_type, tmp_path):
    out = export_gguf(tiny_dirs["pruned"], tmp_path / "model.gguf", gguf_type=gguf_type, pre_tokenizer="gpt-2")
    expected = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[gguf_type]
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] == expected and types["blk.0.ffn_norm.weight"] == gguf.GGMLQuantizationType.F32
    model = load_pruned(tiny_dirs["pruned"], dtype=torch.float32)
    ids = _prompt(tiny_dirs["pruned"]) + list(range(3, 3 + NEW_TOKENS))
    with torch.no_grad():
        expected_logits = model(torch.tensor([ids])).logits[0].numpy()
    logits = llama_cpp_logits(out, ids)
    error = np.abs(logits - expected_logits).max() / np.abs(expected_logits).max()
    assert error < LOOSE_TOL[gguf_type], error
    assert (logits.argmax(-1) == expected_logits.argmax(-1)).mean() >= LOOSE_TOP1


def check_quantized(gguf_file, model, prompt: list[int], quantize: str) -> dict:
    """A file from llama.cpp's quantizer: its file type, every weight matrix quantized (norms f32), and llama.cpp
    running it with logits near PyTorch's (q8_0 within LOOSE_TOL; q4_k_m, on the tiny random model, measured 0.44
    relative and 48-51% top-1 agreement, against ~0.3% for unrelated logits). Returns the file's fields."""
    reader = gguf.GGUFReader(gguf_file)
    fields = {name: field.contents() for name, field in reader.fields.items() if name.startswith("general.")}
    assert fields["general.file_type"] == getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quantize.upper()}")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    matrices = {name: kind for name, kind in types.items() if not name.endswith("norm.weight")}
    assert "F16" not in matrices.values() and "F32" not in matrices.values(), matrices
    assert all(types[name] == "F32" for name in types if name.endswith("norm.weight"))
    if quantize == "q4_k_m":
        assert "Q4_K" in matrices.values()  # the k-quant itself, where the rows allow it (the tiny MLP's 256)
    ids = prompt + list(range(3, 3 + NEW_TOKENS))
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    logits = llama_cpp_logits(gguf_file, ids)
    error = np.abs(logits - expected).max() / np.abs(expected).max()
    agreement = (logits.argmax(-1) == expected.argmax(-1)).mean()
    if quantize == "q8_0":
        assert error < LOOSE_TOL["q8_0"] and agreement >= LOOSE_TOP1, (error, agreement)
    else:
        assert error < 0.6 and agreement >= 0.3, (error, agreement)
    tokens, _ = llama_cpp_greedy(gguf_file, prompt, NEW_TOKENS)
    assert len(tokens) == NEW_TOKENS
    return {**fields, **_fields(gguf_file)}


@pytest.mark.parametrize("variant", ["unpruned", "pruned"])
@pytest.mark.parametrize("quantize", ["q8_0", "q4_k_m"])
def test_llama_cpp_quantizer_takes_pruned_and_unpruned_files(tiny_dirs, variant, quantize, tmp_path):
    out = export_gguf(tiny_dirs[variant], tmp_path / "model.gguf", pre_tokenizer="gpt-2", quantize=quantize)
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]  # the f16 intermediate is gone
    model = load_pruned(tiny_dirs[variant], dtype=torch.float32)
    fields = check_quantized(out, model, _prompt(tiny_dirs[variant]), quantize)
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
    assert _fields(out)["deci.attention.head_count"] == [0 if i in removed else 4 for i in range(4)]
    _check_parity(load_pruned(tiny_dirs[variant], dtype=torch.float32), out, _prompt(tiny_dirs[variant]))


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


def test_cli_exports_gguf_and_refuses_existing_output(tiny_dirs, tmp_path):
    out = tmp_path / "model.gguf"
    command = [sys.executable, "-m", "optimum.commands.optimum_cli", "gatenorm", "export"]
    command += ["--model", str(tiny_dirs["pruned"])]
    command += ["--format", "gguf", "--gguf-type", "q8_0", "--gguf-pre-tokenizer", "gpt-2", "-o", str(out)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert _fields(out)["general.architecture"] == "deci"
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 2 and "Traceback" not in again.stderr and "--overwrite" in again.stderr
    with pytest.raises(OutputExistsError):
        export_gguf(tiny_dirs["pruned"], out, pre_tokenizer="gpt-2")


@pytest.fixture(scope="module")
def smollm2():
    return resolve_model("smollm2-135m")


@pytest.mark.slow
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
    fields = _fields(out)
    assert fields["tokenizer.ggml.pre"] == "smollm" and "tokenizer.chat_template" in fields
    heads = fields.get("deci.attention.head_count", fields.get("llama.attention.head_count"))
    assert (heads.count(0) if pruned else 0) == (4 if pruned else 0)
    _check_parity(model, out, prompt)
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
    _check_parity(model, convert_with_llama_cpp(nas, tmp_path / "converted.gguf", pre="smollm"), prompt)

    q8 = export_gguf(source, tmp_path / "q8.gguf", gguf_type="q8_0")
    ids = prompt + llama_cpp_greedy(q8, prompt, NEW_TOKENS)[0]
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    assert (llama_cpp_logits(q8, ids).argmax(-1) == expected.argmax(-1)).mean() >= LOOSE_TOP1


@pytest.mark.slow
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
    fields = _fields(out)
    assert fields["general.architecture"] == "deci"
    # Linear attention: heads kept, no KV heads, in exactly the removed layers.
    assert fields["deci.attention.head_count"].count(0) == 0
    kv = fields["deci.attention.head_count_kv"]
    assert [i for i, n in enumerate(kv) if n == 0] == report.removed_layers
    _check_parity(model, out, prompt)
