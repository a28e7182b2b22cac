"""Pruned checkpoints: smaller by exactly the removed weights, and never loaded wrongly."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import ALL_TINY, tiny_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from optimum_gatenorm import (
    GateNormConfig,
    GateNormPruner,
    PrunedAttentionConfig,
    PruningReport,
    get_adapter,
    load_pruned,
    prune_model,
    save_pruned,
)


IDS = torch.tensor([[3, 9, 27, 81, 115, 12], [7, 21, 63, 101, 45, 8]])


def _numel(directory) -> dict[str, int]:
    out = {}
    for file in directory.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                out[name] = f.get_slice(name).get_shape()
    return {name: int(torch.Size(shape).numel()) for name, shape in out.items()}


@pytest.mark.parametrize("name", sorted(ALL_TINY))
def test_roundtrip_is_exact_and_checkpoint_smaller_by_removed_weights(name, tmp_path):
    model = tiny_model(name)
    model.save_pretrained(tmp_path / "original")
    adapter = get_adapter(model.config)
    original_state = model.state_dict()
    pruned, report = GateNormPruner(model).prune(GateNormConfig(num_layers=2, protect_first=0))
    save_pruned(pruned, tmp_path / "pruned")

    removed_prefixes = tuple(f"{p}." for i in report.removed_layers for p in adapter.pruned_module_prefixes(i))
    removed_numel = sum(v.numel() for k, v in original_state.items() if k.startswith(removed_prefixes))
    before, after = _numel(tmp_path / "original"), _numel(tmp_path / "pruned")
    assert sum(before.values()) - sum(after.values()) == removed_numel == report.num_parameters_removed
    assert not any(k.startswith(removed_prefixes) and n for k, n in after.items())  # only the empty tombstone

    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    record = config["quantization_config"]
    assert record["quant_method"] == "gatenorm"
    assert record["pruned_attention_layers"] == report.removed_layers
    assert record["num_attention_layers"] == 2 and record["num_hidden_layers"] == 4
    assert config["model_type"] == model.config.model_type
    assert config["architectures"] == [type(model).__name__]
    # Per-layer attention types are stored as they were (the cache's per-slot view is never written).
    assert config.get("layer_types") == tiny_model(name).config.to_dict().get("layer_types")
    assert not any(key.startswith("_gatenorm") for key in config)
    saved_report = PruningReport.from_json(tmp_path / "pruned" / "gatenorm_report.json")
    assert saved_report.removed_layers == report.removed_layers and saved_report.scores == report.scores

    # (eager attention like the in-memory tiny models, so that logits can be compared bit for bit)
    loaded, info = AutoModelForCausalLM.from_pretrained(
        tmp_path / "pruned", output_loading_info=True, attn_implementation="eager"
    )
    assert all(not v for v in info.values()), info  # 0 missing, unexpected, mismatched keys, no errors
    again = load_pruned(tmp_path / "pruned", attn_implementation="eager")
    with torch.no_grad():
        expected = pruned(IDS).logits
        assert torch.equal(loaded.eval()(IDS).logits, expected)
        assert torch.equal(again(IDS).logits, expected)


def test_loaded_model_is_not_marked_quantized_and_casts(tmp_path):
    model = tiny_model("llama")
    GateNormPruner(model).prune(GateNormConfig(num_layers=1))
    model.save_pretrained(tmp_path)
    loaded = load_pruned(tmp_path)
    assert not loaded.is_quantized
    assert load_pruned(tmp_path).half().dtype == torch.float16
    assert load_pruned(tmp_path, dtype=torch.bfloat16).dtype == torch.bfloat16
    # and a saved-again copy of the loaded model is still a correct pruned checkpoint
    loaded.save_pretrained(tmp_path / "again")
    with torch.no_grad():
        assert torch.equal(load_pruned(tmp_path / "again")(IDS).logits, load_pruned(tmp_path)(IDS).logits)


def test_unpruned_checkpoint_pruned_on_load_with_a_record(tmp_path):
    model = tiny_model("qwen2")
    model.save_pretrained(tmp_path)
    record = PrunedAttentionConfig([1, 3], num_hidden_layers=4)
    loaded, info = AutoModelForCausalLM.from_pretrained(
        tmp_path, quantization_config=record, output_loading_info=True, attn_implementation="eager"
    )
    assert all(not v for v in info.values()), info
    prune_model(model, [1, 3])
    with torch.no_grad():
        assert torch.equal(loaded.eval()(IDS).logits, model(IDS).logits)


_FRESH = """
import sys, torch
{imports}
from transformers import AutoModelForCausalLM
try:
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], attn_implementation="eager").eval()
except Exception as error:
    print("LOAD FAILED:", type(error).__name__, str(error).splitlines()[-1])
    sys.exit(3)
expected = torch.load(sys.argv[2])
with torch.no_grad():
    same = torch.equal(model(expected["ids"]).logits, expected["logits"])
    tokens = model.generate(expected["ids"], max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
    same = same and torch.equal(tokens, expected["tokens"])
print("IDENTICAL" if same else "DIFFERENT")
"""

# Prompts longer than the sliding windows of the tiny mixed-type models (4), so the cached generation after
# reloading crosses them.
LONG_IDS = torch.tensor([[3, 9, 27, 81, 115, 12, 40, 5, 77, 2], [7, 21, 63, 101, 45, 8, 90, 14, 33, 66]])


@pytest.fixture(scope="module", params=["llama", "gemma3_text", "qwen3"])
def saved_pruned(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"fresh_{request.param}")
    model = tiny_model(request.param)
    if request.param == "llama":
        GateNormPruner(model).prune(GateNormConfig(num_layers=2))
    else:  # layers 0 and 2 (S, F, S, S -> F, S): the kept layers' type sequence shifts
        prune_model(model, [0, 2])
    model.save_pretrained(directory / "model")
    with torch.no_grad():
        # Expected tokens from generation without the cache: the reloaded model's cache must reproduce them.
        tokens = model.generate(LONG_IDS, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=0)
        torch.save({"ids": LONG_IDS, "logits": model(LONG_IDS).logits, "tokens": tokens}, directory / "expected.pt")
    return directory


def _run_fresh(saved, imports: str):
    script = textwrap.dedent(_FRESH.format(imports=imports))
    return subprocess.run(
        [sys.executable, "-c", script, str(saved / "model"), str(saved / "expected.pt")],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_fresh_process_without_the_package_fails_loudly(saved_pruned):
    result = _run_fresh(saved_pruned, imports="")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "LOAD FAILED" in result.stdout and "size mismatch" in result.stdout
    assert "IDENTICAL" not in result.stdout and "DIFFERENT" not in result.stdout


def test_fresh_process_with_the_package_loads_correctly(saved_pruned):
    result = _run_fresh(saved_pruned, imports="import optimum_gatenorm")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "IDENTICAL" in result.stdout
