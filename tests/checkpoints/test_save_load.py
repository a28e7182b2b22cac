"""Pruned checkpoints: smaller by exactly the removed weights, and never loaded wrongly."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import ALL_TINY, TESTS, tiny_model, tiny_tokenizer
from model_support import run_fresh, save_for_fresh_load
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
from optimum_gatenorm.checkpoints.modeling import _copy_tokenizer, load_tokenizer
from optimum_gatenorm.checkpoints.record import GATENORM_QUANT_METHOD


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
    pruned, report = GateNormPruner(model).prune(GateNormConfig(num_layers=2, protect_first=0, replacement="none"))
    save_pruned(pruned, tmp_path / "pruned")

    removed_prefixes = tuple(f"{p}." for i in report.removed_layers for p in adapter.pruned_module_prefixes(i))
    removed_numel = sum(v.numel() for k, v in original_state.items() if k.startswith(removed_prefixes))
    before, after = _numel(tmp_path / "original"), _numel(tmp_path / "pruned")
    assert sum(before.values()) - sum(after.values()) == removed_numel == report.num_parameters_removed
    assert not any(k.startswith(removed_prefixes) and n for k, n in after.items())  # only the empty tombstone

    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    record = config["quantization_config"]
    assert record["quant_method"] == GATENORM_QUANT_METHOD
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
    GateNormPruner(model).prune(GateNormConfig(num_layers=1, replacement="none"))
    model.save_pretrained(tmp_path)
    loaded = load_pruned(tmp_path)
    assert not loaded.is_quantized
    assert load_pruned(tmp_path).half().dtype == torch.float16
    assert load_pruned(tmp_path, dtype=torch.bfloat16).dtype == torch.bfloat16
    # and a saved-again copy of the loaded model is still a correct pruned checkpoint
    loaded.save_pretrained(tmp_path / "again")
    with torch.no_grad():
        assert torch.equal(load_pruned(tmp_path / "again")(IDS).logits, load_pruned(tmp_path)(IDS).logits)


def test_a_checkpoint_written_under_the_old_method_name_still_loads(tmp_path):
    """Records of 0.6.0 and earlier say `quant_method: "gatenorm"`; that name stays registered."""
    model = tiny_model("llama")
    prune_model(model, [1, 2])
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"]["quant_method"] = "gatenorm"
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded, info = AutoModelForCausalLM.from_pretrained(
        tmp_path, output_loading_info=True, attn_implementation="eager"
    )
    assert all(not v for k, v in info.items() if k != "unexpected_keys"), info
    with torch.no_grad():
        expected = model(IDS).logits
        assert torch.equal(loaded.eval()(IDS).logits, expected)
        assert torch.equal(load_pruned(tmp_path, attn_implementation="eager")(IDS).logits, expected)
    assert loaded.config.quantization_config.pruned_attention_layers == [1, 2]


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


@pytest.fixture(scope="module", params=["llama", "gemma3_text", "qwen3"])
def saved_pruned(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"fresh_{request.param}")
    model = tiny_model(request.param)
    if request.param == "llama":
        GateNormPruner(model).prune(GateNormConfig(num_layers=2, replacement="none"))
    else:  # layers 0 and 2 (S, F, S, S -> F, S): the kept layers' type sequence shifts
        prune_model(model, [0, 2])
    return save_for_fresh_load(model, directory)


@pytest.mark.process
def test_fresh_process_without_the_package_fails_loudly(saved_pruned):
    result = run_fresh(saved_pruned, imports="")
    assert result.returncode == 3, result.stdout + result.stderr
    # 4.57: "size mismatch for weight"; 5.x: "You set `ignore_mismatched_sizes` to `False`" (the tombstone's shape)
    assert "LOAD FAILED: RuntimeError" in result.stdout and "mismatch" in result.stdout.lower(), result.stdout
    # transformers' warning just before names the record's quant_method, which says the fix
    assert "Unknown quantization type, got gatenorm: import optimum_gatenorm" in result.stderr, result.stderr
    assert "IDENTICAL" not in result.stdout and "DIFFERENT" not in result.stdout


@pytest.mark.process
def test_without_the_package_ignore_mismatched_sizes_is_not_silent(saved_pruned):
    """`ignore_mismatched_sizes=True` gets past the tombstone with random attention weights: nothing a checkpoint
    can hold stops it there without stopping our own loader too. It is not silent: the warning names the fix."""
    script = (
        "import sys; from transformers import AutoModelForCausalLM; "
        "AutoModelForCausalLM.from_pretrained(sys.argv[1], ignore_mismatched_sizes=True); "
        "assert 'optimum_gatenorm' not in sys.modules"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(saved_pruned / "model")], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "Unknown quantization type, got gatenorm: import optimum_gatenorm" in result.stderr, result.stderr


@pytest.mark.process
def test_fresh_process_with_the_package_loads_correctly(saved_pruned):
    result = run_fresh(saved_pruned, imports="import optimum_gatenorm")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "IDENTICAL" in result.stdout


# --- checkpoints move between the transformers lines (4.57 and 5.x) -------------------------------------------------
# One process of the other line's python (`other_python`, from conftest) first tries plain `from_pretrained` on the
# checkpoints saved here before anything imported optimum_gatenorm (the tombstone must stop it), then loads them
# with the package and compares logits, then saves pruned checkpoints of its own for this process to load.
# Name -> (config overrides, tolerance). llama's rope_theta is not the default (5.x saves it only inside
# rope_parameters); gpt_neox's tiny rotary_pct likewise; gpt2 and gpt_neox layers return tuples on 4.57 only.
# gpt2's own eager attention differs between the lines by ~4e-6 on an unpruned model too, hence its tolerance.
# The mixed sliding/full models (window 4, prompts of 6 tokens) keep a cache type per kept layer; Gemma 3's
# sliding-layer RoPE base is `rope_local_base_freq` on 4.57 and `rope_parameters["sliding_attention"]` on 5.x.
CROSS_LINE = {
    "llama": ({"rope_theta": 100000.0}, 0.0),
    "gpt2": ({}, 1e-5),
    "gpt_neox": ({}, 0.0),
    "phi3": ({}, 0.0),
    "qwen3": ({"rope_theta": 100000.0}, 0.0),
    "gemma2": ({"rope_theta": 100000.0}, 0.0),
    "gemma3_text": ({"rope_theta": 100000.0, "rope_local_base_freq": 5000.0}, 0.0),
}

TOKENIZER_TEXT = "It is a truth universally acknowledged."
_OTHER_LINE = (
    f"TEXT = {TOKENIZER_TEXT!r}\n"
    + """
import json, sys
from pathlib import Path
import torch, transformers
from transformers import AutoModelForCausalLM
here, there, cases = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
out = {"transformers": transformers.__version__}
for name in cases:
    try:
        AutoModelForCausalLM.from_pretrained(here / name / "model", attn_implementation="eager")
        out[name + "/plain"] = "LOADED"
    except Exception as error:
        out[name + "/plain"] = type(error).__name__ + ": " + " ".join(str(error).split())
# the tokenizer our writer copied next to the checkpoint loads with plain transformers of this line
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(here / "llama" / "model")
out["tokenizer/ids"] = tokenizer(TEXT).input_ids
out["tokenizer/specials"] = [tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token]
out["tokenizer/inputs"] = sorted(tokenizer(TEXT))
assert "optimum_gatenorm" not in sys.modules
sys.path.insert(0, sys.argv[4])  # tests/, for conftest.tiny_model
from conftest import tiny_model, tiny_tokenizer
tiny_tokenizer().save_pretrained(there / "tokenizer")  # plain transformers of this line
out["tokenizer/inputs_there"] = sorted(tiny_tokenizer()(TEXT))
from optimum_gatenorm import GateNormConfig, GateNormPruner, InvalidCheckpointError, load_pruned
for name, (overrides, atol) in cases.items():
    expected = torch.load(here / name / "expected.pt")
    with torch.no_grad():
        logits = load_pruned(here / name / "model", attn_implementation="eager")(expected["ids"]).logits
        out[name + "/max_diff"] = (logits - expected["logits"]).abs().max().item()
        try:  # plain from_pretrained with the package imported: right, or refused; never silently different
            model = AutoModelForCausalLM.from_pretrained(here / name / "model", attn_implementation="eager").eval()
            out[name + "/auto_max_diff"] = (model(expected["ids"]).logits - expected["logits"]).abs().max().item()
        except InvalidCheckpointError as error:
            out[name + "/auto_max_diff"] = 0.0
            out[name + "/auto_refused"] = str(error)
    model = tiny_model(name, seed=1, **overrides)
    GateNormPruner(model).prune(GateNormConfig(num_layers=2, replacement=sys.argv[5]))
    model.save_pretrained(there / name / "model")
    with torch.no_grad():
        torch.save({"ids": expected["ids"], "logits": model(expected["ids"]).logits}, there / name / "expected.pt")
print(json.dumps(out))
"""
)


@pytest.mark.process
@pytest.mark.parametrize("replacement", ["none", "linear"])
def test_checkpoints_move_between_transformers_lines_with_identical_logits(other_python, replacement, tmp_path):
    """Removed plainly or replaced by the default linear map, pruned checkpoints load across the lines exactly."""
    import transformers

    here, there = tmp_path / "here", tmp_path / "there"
    tiny_tokenizer().save_pretrained(tmp_path / "tokenizer")  # plain transformers of this line
    for name, (overrides, _) in CROSS_LINE.items():
        model = tiny_model(name, **overrides)
        GateNormPruner(model).prune(GateNormConfig(num_layers=2, replacement=replacement))
        save_pruned(model, here / name / "model")
        with torch.no_grad():
            torch.save({"ids": IDS, "logits": model(IDS).logits}, here / name / "expected.pt")
    _copy_tokenizer(tmp_path / "tokenizer", here / "llama" / "model")  # as prune and the exporters copy it
    result = subprocess.run(
        [str(other_python), "-c", _OTHER_LINE, str(here), str(there), json.dumps(CROSS_LINE), str(TESTS),
         replacement],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["transformers"].split(".")[0] != transformers.__version__.split(".")[0]
    for name, (_, atol) in CROSS_LINE.items():
        # saved here, loaded there: plain transformers stops at the tombstone; with the package, the same logits
        assert out[f"{name}/plain"].startswith("RuntimeError") and "mismatch" in out[f"{name}/plain"].lower(), out
        assert out[f"{name}/max_diff"] <= atol and out[f"{name}/auto_max_diff"] <= atol, (name, out)
        # saved there (with plain model.save_pretrained), loaded here
        expected = torch.load(there / name / "expected.pt")
        with torch.no_grad():
            logits = load_pruned(there / name / "model", attn_implementation="eager")(expected["ids"]).logits
        assert (logits - expected["logits"]).abs().max().item() <= atol, name
    # tokenizers: ours load on the other line with plain transformers; theirs (saved plainly) load here with ours
    expected = tiny_tokenizer()
    assert out["tokenizer/ids"] == expected(TOKENIZER_TEXT).input_ids, out
    assert out["tokenizer/specials"] == [expected.eos_token, expected.pad_token, expected.unk_token], out
    # no model input appears there that this line's tokenizer does not return (4.57 would add token_type_ids to a
    # 5.x tokenizer, which generate() of a decoder refuses)
    assert set(out["tokenizer/inputs"]) <= set(expected(TOKENIZER_TEXT)), out
    theirs = load_tokenizer(there / "tokenizer")
    assert theirs(TOKENIZER_TEXT).input_ids == expected(TOKENIZER_TEXT).input_ids
    assert set(theirs(TOKENIZER_TEXT)) <= set(out["tokenizer/inputs_there"]), out  # the same, read here
    # and plain transformers of this line, in a process without the package, stops at their tombstone too
    plain = run_fresh(there / "llama", imports="")
    assert plain.returncode == 3 and "mismatch" in plain.stdout.lower(), plain.stdout + plain.stderr
