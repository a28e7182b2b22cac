"""Bad input: one-line error, exit status 2, no traceback, nothing half-written; the API raises the right class.

Every CLI call goes through the real `optimum-cli` executable. Calls that reach the library cost ~3 s each
(torch + transformers imports); argument errors are caught by argparse before that and cost ~0.1 s.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from cli_support import gatenorm
from conftest import save_sharded, tiny_config, tiny_model
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

from optimum_gatenorm import (
    GateNormConfig,
    GateNormError,
    GateNormPruner,
    InvalidCheckpointError,
    InvalidConfigError,
    ModelNotFoundError,
    OutputExistsError,
    UnsupportedModelError,
    convert_gguf,
    load_pruned,
    prune_model,
    save_pruned,
    select_layers,
    supported_model_types,
)
from optimum_gatenorm.outputs import OUTPUT_MARKER, atomic_output_dir, atomic_write_text, check_output_path
from optimum_gatenorm.report import PruningReport


SUPPORTED = tuple(supported_model_types())
ERROR_LINE = re.compile(r"^(error: |optimum-cli gatenorm (score|prune|convert|criteria): error: )\S")


def leftovers(path: Path) -> list[str]:
    """Temporary files/directories that writing `path` would create beside it."""
    return sorted(p.name for p in path.parent.glob(f".{path.name}.*"))


def assert_nothing_written(path: Path) -> None:
    assert not path.exists(), f"{path} was written"
    assert leftovers(path) == [], leftovers(path)


def assert_refused(result: subprocess.CompletedProcess, *needles: str, output: Path | None = None) -> str:
    """Exit 2, no traceback, and the error as the last stderr line, starting `error:`; returns that line."""
    where = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, where
    assert "Traceback" not in result.stderr, where
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, where
    line = lines[-1]
    assert ERROR_LINE.match(line), where  # a message spanning lines would leave its tail last
    assert sum("error:" in other for other in lines) == 1, where
    for needle in needles:
        assert needle.lower() in line.lower(), f"{needle!r} not in {line!r}"
    assert result.stdout.strip() == "", where
    if output is not None:
        assert_nothing_written(output)
    return line


def score_cli(model, tmp_path: Path, *extra) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "scores.json"
    return gatenorm("score", "--model", model, "--format", "json", "--output", out, *extra, cwd=tmp_path), out


def prune_cli(model, tmp_path: Path, *extra) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "pruned"
    return gatenorm("prune", "--model", model, "--output", out, *extra, cwd=tmp_path), out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """One tiny llama saved as safetensors, as pytorch_model.bin only, and pruned (2 of 4)."""
    root = tmp_path_factory.mktemp("bad_input")
    model = tiny_model("llama")
    model.save_pretrained(root / "llama")
    # Pickled weights written by hand: transformers 5's save_pretrained writes safetensors only.
    model.config.save_pretrained(root / "llama_bin")
    torch.save(model.state_dict(), root / "llama_bin" / "pytorch_model.bin")
    pruned = tiny_model("llama")
    prune_model(pruned, [1, 3])
    pruned.save_pretrained(root / "pruned")
    return {"llama": root / "llama", "llama_bin": root / "llama_bin", "pruned": root / "pruned"}


def copy_checkpoint(source: Path, target: Path, **config_changes) -> Path:
    shutil.copytree(source, target)
    if config_changes:
        config = json.loads((target / "config.json").read_text())
        config.update(config_changes)
        (target / "config.json").write_text(json.dumps(config))
    return target


# --- the exception classes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, builtin",
    [
        (ModelNotFoundError, FileNotFoundError),
        (InvalidCheckpointError, ValueError),
        (UnsupportedModelError, ValueError),
        (InvalidConfigError, ValueError),
        (OutputExistsError, FileExistsError),
    ],
)
def test_error_classes_subclass_gatenorm_error_and_builtin(cls, builtin):
    assert issubclass(cls, GateNormError) and issubclass(cls, builtin)


# --- the model path ---------------------------------------------------------------------------------------------


@pytest.mark.process
def test_missing_path(tmp_path):
    missing = tmp_path / "no-such-model"
    result, out = score_cli(missing, tmp_path)
    assert_refused(result, "not found", str(missing), output=out)
    with pytest.raises(ModelNotFoundError, match="not found"):
        GateNormPruner.from_pretrained(missing)
    with pytest.raises(FileNotFoundError):
        load_pruned(missing)


@pytest.mark.process
def test_file_that_is_not_a_model(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model")
    result, out = score_cli(notes, tmp_path)
    assert_refused(result, "is a file", output=out)
    with pytest.raises(InvalidCheckpointError, match="is a file"):
        GateNormPruner.from_pretrained(notes)


@pytest.mark.process
def test_directory_without_config(tmp_path, checkpoints):
    folder = tmp_path / "weights_only"
    folder.mkdir()
    shutil.copy(checkpoints["llama"] / "model.safetensors", folder)
    result, out = prune_cli(folder, tmp_path, "-k", "1")
    assert_refused(result, "no config.json", output=out)
    with pytest.raises(InvalidCheckpointError, match="no config.json"):
        GateNormPruner.from_pretrained(folder)


@pytest.mark.process
def test_directory_with_config_but_no_weights(tmp_path, checkpoints):
    folder = tmp_path / "config_only"
    folder.mkdir()
    shutil.copy(checkpoints["llama"] / "config.json", folder)
    result, out = score_cli(folder, tmp_path)
    assert_refused(result, "no weights", output=out)
    with pytest.raises(InvalidCheckpointError, match="no weights"):
        GateNormPruner.from_pretrained(folder)
    with pytest.raises(InvalidCheckpointError, match="no weights"):
        load_pruned(folder)


@pytest.mark.process
def test_pickle_checkpoint_is_refused_without_allow_pickle(tmp_path, checkpoints):
    assert not list(checkpoints["llama_bin"].glob("*.safetensors"))
    result, out = prune_cli(checkpoints["llama_bin"], tmp_path, "-k", "1")
    assert_refused(result, "--allow-pickle", output=out)
    with pytest.raises(InvalidCheckpointError, match="allow_pickle"):
        GateNormPruner.from_pretrained(checkpoints["llama_bin"])
    with pytest.raises(InvalidCheckpointError, match="allow_pickle"):
        load_pruned(checkpoints["llama_bin"])


@pytest.mark.process
def test_pickle_checkpoint_works_with_allow_pickle(tmp_path, checkpoints):
    result, out = score_cli(checkpoints["llama_bin"], tmp_path, "--allow-pickle")
    assert result.returncode == 0, result.stderr
    from_bin = json.loads(out.read_text())["scores"]
    reference = GateNormPruner.from_pretrained(checkpoints["llama"]).score().scores
    assert from_bin == pytest.approx(reference, rel=1e-6)
    assert GateNormPruner.from_pretrained(checkpoints["llama_bin"], allow_pickle=True).score().scores == pytest.approx(
        reference, rel=1e-6
    )
    model = load_pruned(checkpoints["llama_bin"], allow_pickle=True)
    assert torch.equal(
        model.model.layers[2].self_attn.q_proj.weight, tiny_model("llama").model.layers[2].self_attn.q_proj.weight
    )


# --- quantized, corrupt, truncated ------------------------------------------------------------------------------

QUANTIZATION = {
    "gptq": {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True},
    "awq": {"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm", "zero_point": True},
    "bitsandbytes": {"load_in_4bit": True, "quant_method": "bitsandbytes"},
}


@pytest.mark.parametrize("method", sorted(QUANTIZATION))
def test_quantized_checkpoint_is_refused(method, tmp_path, checkpoints):
    folder = copy_checkpoint(checkpoints["llama"], tmp_path / method, quantization_config=QUANTIZATION[method])
    with pytest.raises(UnsupportedModelError, match=f"quantized \\({method}\\)"):
        GateNormPruner.from_pretrained(folder)
    with pytest.raises(UnsupportedModelError, match="quantized"):
        load_pruned(folder)


@pytest.mark.process
def test_quantized_checkpoint_is_refused_by_cli(tmp_path, checkpoints):
    # one CLI run for the three methods above: the same check; bitsandbytes is the one named from load_in_4bit
    folder = copy_checkpoint(checkpoints["llama"], tmp_path / "bnb", quantization_config=QUANTIZATION["bitsandbytes"])
    result, out = prune_cli(folder, tmp_path, "-k", "1")
    assert_refused(result, "quantized (bitsandbytes)", "unquantized checkpoint", output=out)


def _with_bad_value(source: Path, folder: Path, value: str, tensor: str) -> Path:
    copy_checkpoint(source, folder)
    weights = load_file(folder / "model.safetensors")
    weights[f"model.layers.2.self_attn.{tensor}.weight"][3, 5] = float(value)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("value, tensor", [("nan", "q_proj"), ("inf", "k_proj"), ("-inf", "q_proj")])
def test_non_finite_qk_weight_is_refused_naming_the_layer(value, tensor, tmp_path, checkpoints):
    folder = _with_bad_value(checkpoints["llama"], tmp_path / value, value, tensor)
    with pytest.raises(InvalidCheckpointError, match="layer 2.*NaN or Inf"):
        GateNormPruner.from_pretrained(folder).score()
    with pytest.raises(InvalidCheckpointError, match="layer 2"):
        GateNormPruner.from_pretrained(folder).prune(GateNormConfig(num_layers=1, replacement="none"))


@pytest.mark.process
def test_non_finite_qk_weight_is_refused_by_cli(tmp_path, checkpoints):
    folder = _with_bad_value(checkpoints["llama"], tmp_path / "nan", "nan", "k_proj")
    result, out = score_cli(folder, tmp_path)
    assert_refused(result, "layer 2", "key weights", "NaN or Inf", output=out)


@pytest.mark.process
def test_truncated_safetensors_is_refused(tmp_path, checkpoints):
    folder = copy_checkpoint(checkpoints["llama"], tmp_path / "truncated")
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    result, out = score_cli(folder, tmp_path)
    assert_refused(result, "truncated", output=out)
    with pytest.raises(InvalidCheckpointError, match="truncated"):
        GateNormPruner.from_pretrained(folder)
    with pytest.raises(InvalidCheckpointError, match="truncated"):
        load_pruned(folder)


@pytest.mark.process
def test_sharded_checkpoint_with_missing_shard_is_refused(tmp_path):
    folder = save_sharded(tiny_model("llama"), tmp_path / "sharded", num_shards=3)
    assert GateNormPruner.from_pretrained(folder).score().scores  # complete, it works
    (folder / "model-00002-of-00003.safetensors").unlink()
    result, out = prune_cli(folder, tmp_path, "-k", "1")
    assert_refused(result, "model-00002-of-00003.safetensors", "missing", output=out)
    with pytest.raises(ModelNotFoundError, match="missing"):
        GateNormPruner.from_pretrained(folder)


# --- unsupported architectures and remote code ------------------------------------------------------------------

UNSUPPORTED = {
    "bert": dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    "t5": dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4),
    "mixtral": dict(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=2, num_experts_per_tok=1,
    ),
}  # fmt: skip


def _unsupported(model_type: str, folder: Path) -> Path:
    AutoConfig.for_model(model_type, **UNSUPPORTED[model_type]).save_pretrained(folder)
    save_file({"weight": torch.zeros(2, 2)}, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("model_type", sorted(UNSUPPORTED))
def test_unsupported_model_type_lists_supported_types(model_type, tmp_path):
    folder = _unsupported(model_type, tmp_path / model_type)
    with pytest.raises(UnsupportedModelError, match="not supported") as info:
        GateNormPruner.from_pretrained(folder)
    assert all(name in str(info.value) for name in SUPPORTED)
    with pytest.raises(UnsupportedModelError):
        load_pruned(folder)


@pytest.mark.process
def test_unsupported_model_type_is_refused_by_cli(tmp_path):
    # one CLI run for the three types above (the same check): the decoder-only one a user is most likely to try
    folder = _unsupported("mixtral", tmp_path / "mixtral")
    result, out = score_cli(folder, tmp_path)
    assert_refused(result, "'mixtral' is not supported", *SUPPORTED, output=out)


@pytest.mark.process
def test_gpt2_with_scale_attn_by_inverse_layer_idx_is_refused(tmp_path):
    config = tiny_config("gpt2")
    config.scale_attn_by_inverse_layer_idx = True
    folder = tmp_path / "gpt2"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    result, out = prune_cli(folder, tmp_path, "-k", "1")
    assert_refused(result, "scale_attn_by_inverse_layer_idx", output=out)
    with pytest.raises(UnsupportedModelError, match="scale_attn_by_inverse_layer_idx"):
        GateNormPruner.from_pretrained(folder)
    with pytest.raises(UnsupportedModelError, match="scale_attn_by_inverse_layer_idx"):
        GateNormPruner(AutoModelForCausalLM.from_config(config))


def _with_remote_code(source: Path, folder: Path, model_type: str) -> Path:
    """A checkpoint whose config points (`auto_map`) at code that leaves a marker file if it is ever imported."""
    marker = folder.parent / f"{folder.name}-REMOTE-CODE-RAN"
    copy_checkpoint(
        source,
        folder,
        model_type=model_type,
        architectures=["EvilForCausalLM"],
        auto_map={"AutoConfig": "modeling_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"},
    )
    (folder / "modeling_evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('remote code ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        f"class EvilConfig(LlamaConfig):\n    model_type = {model_type!r}\n"
        "class EvilForCausalLM(LlamaForCausalLM):\n    config_class = EvilConfig\n"
    )
    return marker


@pytest.mark.process
def test_auto_map_with_custom_model_type_is_refused_without_running_code(tmp_path, checkpoints):
    folder = tmp_path / "evil"
    marker = _with_remote_code(checkpoints["llama"], folder, "evil_llama")
    result, out = prune_cli(folder, tmp_path, "-k", "1")
    assert_refused(result, "'evil_llama' is not supported", output=out)
    with pytest.raises(UnsupportedModelError, match="evil_llama"):
        GateNormPruner.from_pretrained(folder)
    with pytest.raises(UnsupportedModelError, match="evil_llama"):
        load_pruned(folder, trust_remote_code=True)  # ignored: remote code never runs
    assert not marker.exists()


def test_auto_map_on_a_supported_model_type_never_runs_the_code(tmp_path, checkpoints):
    folder = tmp_path / "llama_with_auto_map"
    marker = _with_remote_code(checkpoints["llama"], folder, "llama")
    scores = GateNormPruner.from_pretrained(folder).score().scores
    assert scores == GateNormPruner.from_pretrained(checkpoints["llama"]).score().scores
    model = load_pruned(folder, trust_remote_code=True)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not marker.exists()


# --- bad options ------------------------------------------------------------------------------------------------

ARGPARSE_ERRORS = {
    "num_layers_negative": (["--num-layers", "-1"], "--num-layers", dict(num_layers=-1)),
    "num_layers_not_int": (["--num-layers", "abc"], "'abc'", dict(num_layers="abc")),
    "ratio_one": (["--ratio", "1.0"], "--ratio", dict(ratio=1.0)),
    "ratio_negative": (["--ratio", "-0.1"], "--ratio", dict(ratio=-0.1)),
    "ratio_not_number": (["--ratio", "x"], "'x'", dict(ratio="x")),
    "exclude_not_int": (["-k", "1", "--exclude-layers", "a,b"], "--exclude-layers", dict(num_layers=1, exclude_layers=("a", "b"))),
    "exclude_negative": (["-k", "1", "--exclude-layers", "-1"], "--exclude-layers", dict(num_layers=1, exclude_layers=(-1,))),
    "num_layers_and_ratio": (["--num-layers", "1", "--ratio", "0.5"], "not allowed with", dict(num_layers=1, ratio=0.5)),
    "neither_num_layers_nor_ratio": ([], "one of the arguments", dict()),
    "protect_first_negative": (["-k", "1", "--protect-first", "-2"], "--protect-first", dict(num_layers=1, protect_first=-2)),
    "min_gap_zero": (["-k", "1", "--min-gap", "0"], "--min-gap", dict(num_layers=1, min_gap=0)),
}  # fmt: skip


@pytest.mark.process
@pytest.mark.parametrize("case", sorted(ARGPARSE_ERRORS))
def test_bad_option_value_is_refused(case, tmp_path, checkpoints):
    args, needle, config_kwargs = ARGPARSE_ERRORS[case]
    result, out = prune_cli(checkpoints["llama"], tmp_path, *args)
    line = assert_refused(result, needle, output=out)
    assert line.startswith("optimum-cli gatenorm prune: error: ")
    assert len(result.stderr.strip().splitlines()) == 1  # no usage block
    with pytest.raises(InvalidConfigError):  # the library refuses the same request, at the latest when it prunes
        GateNormConfig(**config_kwargs).resolve_num_layers(4)


@pytest.mark.process
def test_prune_without_output_is_refused(tmp_path, checkpoints):
    result = gatenorm("prune", "--model", checkpoints["llama"], "-k", "1", cwd=tmp_path)
    assert_refused(result, "--output")
    assert list(tmp_path.iterdir()) == []


CANDIDATE_ERRORS = {
    "all_four": (["-k", "4", "--protect-first", "0"], dict(num_layers=4, protect_first=0), "cannot remove 4"),
    "three_of_two_candidates": (
        ["-k", "3", "--protect-first", "1", "--protect-last", "1"],
        dict(num_layers=3, protect_first=1, protect_last=1),
        "cannot remove 3",
    ),
    "exclude_out_of_range": (
        ["-k", "1", "--exclude-layers", "4"],
        dict(num_layers=1, exclude_layers=(4,)),
        "exclude_layers [4] out of range",
    ),
}


@pytest.mark.parametrize("case", sorted(CANDIDATE_ERRORS))
def test_request_the_model_cannot_meet_is_refused(case, tmp_path, checkpoints):
    _, config_kwargs, needle = CANDIDATE_ERRORS[case]
    config = GateNormConfig(**config_kwargs)  # valid on its own; only the 4-layer model makes it impossible
    with pytest.raises(InvalidConfigError, match=re.escape(needle)):
        select_layers(GateNormPruner.from_pretrained(checkpoints["llama"]).score("gate_trace").scores, config)
    pruner = GateNormPruner.from_pretrained(checkpoints["llama"])
    with pytest.raises(InvalidConfigError, match=re.escape(needle)):
        pruner.prune(config)  # the default criterion, cosine_self, would load the model to score
    assert pruner._model is None  # refused before the model was loaded


@pytest.mark.process
@pytest.mark.parametrize("case", ["three_of_two_candidates", "exclude_out_of_range"])
def test_request_the_model_cannot_meet_is_refused_by_cli(case, tmp_path, checkpoints):
    args, _, needle = CANDIDATE_ERRORS[case]
    result, out = prune_cli(checkpoints["llama"], tmp_path, *args)
    assert_refused(result, needle, output=out)


def test_ratio_rounding_to_all_layers_is_refused():
    # 0.9 of 4 layers rounds to 4: impossible, whatever is protected
    with pytest.raises(InvalidConfigError, match="cannot remove 4"):
        select_layers([1.0, 2.0, 3.0, 4.0], GateNormConfig(ratio=0.9, protect_first=0))


@pytest.mark.process
@pytest.mark.parametrize("command", ["score", "prune"])
def test_unknown_criterion_is_refused(command, tmp_path, checkpoints):
    if command == "score":
        result, out = score_cli(checkpoints["llama"], tmp_path, "--criterion", "gate_nrom")
    else:
        result, out = prune_cli(checkpoints["llama"], tmp_path, "-k", "1", "--criterion", "gate_nrom")
    assert_refused(result, "unknown criterion 'gate_nrom'", "gate_norm_head", output=out)
    with pytest.raises(InvalidConfigError, match="unknown criterion"):
        GateNormConfig(num_layers=1, criterion="gate_nrom")
    with pytest.raises(InvalidConfigError, match="unknown criterion"):
        GateNormPruner.from_pretrained(checkpoints["llama"]).score("gate_nrom")


BAD_DIMENSIONS = {
    "kv_heads_not_a_divisor": (dict(num_key_value_heads=3), "not a multiple of num_key_value_heads=3"),
    "zero_kv_heads": (dict(num_key_value_heads=0), "num_key_value_heads must be a positive integer"),
    "layers_not_int": (dict(num_hidden_layers="four"), "num_hidden_layers must be a positive integer"),
    "zero_heads": (dict(num_attention_heads=0), "num_attention_heads must be a positive integer"),
}


@pytest.mark.parametrize("case", sorted(BAD_DIMENSIONS))
def test_config_with_impossible_dimensions_is_refused(case, tmp_path, checkpoints):
    changes, needle = BAD_DIMENSIONS[case]
    folder = copy_checkpoint(checkpoints["llama"], tmp_path / case, **changes)
    with pytest.raises(InvalidCheckpointError, match=needle):
        GateNormPruner.from_pretrained(folder)
    with pytest.raises(InvalidCheckpointError, match=needle):
        load_pruned(folder)


@pytest.mark.process
def test_config_with_impossible_dimensions_is_refused_by_cli(tmp_path, checkpoints):
    folder = copy_checkpoint(checkpoints["llama"], tmp_path / "kv3", num_key_value_heads=3)
    result, out = prune_cli(folder, tmp_path, "-k", "1")
    assert_refused(result, "config.json", "not a multiple of num_key_value_heads=3", output=out)


@pytest.mark.process
def test_unknown_device_is_refused(tmp_path, checkpoints):
    result, out = prune_cli(checkpoints["llama"], tmp_path, "-k", "1", "--device", "bogus")
    assert_refused(result, "--device bogus is not usable", output=out)


@pytest.mark.parametrize(
    "content, error, needle",
    [
        (b"PK\x03\x04 not a gguf file", InvalidCheckpointError, "bad magic"),
        # A header that the GGUF reader cannot parse is named as such (it used to surface as "cannot convert").
        (b"GGUF" + bytes(64), InvalidCheckpointError, "truncated or corrupt"),
    ],
)
def test_bad_gguf_file_is_refused_and_nothing_is_cached(content, error, needle, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("OPTIMUM_GATENORM_CACHE", str(cache))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(content)
    with pytest.raises(error, match=needle):
        GateNormPruner.from_pretrained(gguf)
    models = cache / "models"
    assert not models.exists() or list(models.iterdir()) == []
    with pytest.raises(error, match=needle):
        convert_gguf(gguf, tmp_path / "converted")
    assert_nothing_written(tmp_path / "converted")


# --- existing output --------------------------------------------------------------------------------------------


def _existing_dir(path: Path) -> Path:
    path.mkdir()
    (path / "keep.txt").write_text("precious")
    return path


@pytest.mark.process
def test_prune_into_existing_directory_is_refused(tmp_path, checkpoints):
    out = _existing_dir(tmp_path / "pruned")
    result, _ = prune_cli(checkpoints["llama"], tmp_path, "-k", "1")
    assert_refused(result, "already exists", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"
    assert leftovers(out) == []
    model, _ = GateNormPruner(tiny_model("llama")).prune(GateNormConfig(num_layers=1, replacement="none"))
    with pytest.raises(OutputExistsError):
        save_pruned(model, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.process
def test_prune_into_existing_directory_with_overwrite_replaces_it(tmp_path, checkpoints):
    # --overwrite replaces only an output of ours (its marker; docs/safety.md); a user's directory is
    # refused (tests/commands/test_bad_input_table.py).
    out = _existing_dir(tmp_path / "pruned")
    (out / OUTPUT_MARKER).write_text('{"writer": "optimum-gatenorm", "files": ["keep.txt"]}')  # ours, listed
    result, _ = prune_cli(checkpoints["llama"], tmp_path, "-k", "1", "--overwrite")
    assert result.returncode == 0, result.stderr
    assert not (out / "keep.txt").exists()
    assert (out / "config.json").is_file() and (out / "gatenorm_report.json").is_file()
    assert len(load_pruned(out).config.quantization_config.pruned_attention_layers) == 1
    assert leftovers(out) == []


@pytest.mark.process
def test_score_into_existing_file_is_refused(tmp_path, checkpoints):
    out = tmp_path / "scores.json"
    out.write_text("precious")
    result, _ = score_cli(checkpoints["llama"], tmp_path)
    assert_refused(result, "already exists", "--overwrite")
    assert out.read_text() == "precious" and leftovers(out) == []
    with pytest.raises(OutputExistsError):
        atomic_write_text(out, "new")
    assert out.read_text() == "precious"


@pytest.mark.process
def test_score_into_existing_file_with_overwrite_replaces_it(tmp_path, checkpoints):
    out = tmp_path / "scores.json"
    out.write_text("precious")
    result, _ = score_cli(checkpoints["llama"], tmp_path, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(out.read_text())["scores"]) == 4
    assert leftovers(out) == []


def test_output_below_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidConfigError, match="not a directory"):
        check_output_path(tmp_path / "file" / "out", overwrite=False)


# --- inconsistent pruning records -------------------------------------------------------------------------------

BAD_RECORDS = {
    "wrong_num_attention_layers": (dict(num_attention_layers=3), "inconsistent"),
    "index_out_of_range": (dict(pruned_attention_layers=[1, 7], num_attention_layers=2), "out of range"),
    "all_layers_pruned": (dict(pruned_attention_layers=[0, 1, 2, 3], num_attention_layers=0), "all 4"),
    "wrong_num_hidden_layers": (dict(num_hidden_layers=6, num_attention_layers=4), "inconsistent"),
    "not_integers": (dict(pruned_attention_layers=["1", "3"]), "integers"),
    "no_pruned_attention_layers": (dict(pruned_attention_layers=None), "lacks pruned_attention_layers"),
    "no_num_hidden_layers": (dict(num_hidden_layers=None), "lacks num_hidden_layers"),
}


def _bad_record(checkpoints, tmp_path: Path, case: str) -> Path:
    folder = copy_checkpoint(checkpoints["pruned"], tmp_path / case)
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization_config"]["pruned_attention_layers"] == [1, 3]
    config["quantization_config"].update(BAD_RECORDS[case][0])
    config["quantization_config"] = {k: v for k, v in config["quantization_config"].items() if v is not None}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_consistent_pruned_checkpoint_loads(checkpoints):
    assert load_pruned(checkpoints["pruned"]).config.quantization_config.pruned_attention_layers == [1, 3]
    assert GateNormPruner.from_pretrained(checkpoints["pruned"]).score().pruned_layers == [1, 3]


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_inconsistent_pruning_record_is_refused_by_api(case, tmp_path, checkpoints):
    folder = _bad_record(checkpoints, tmp_path, case)
    needle = BAD_RECORDS[case][1]
    with pytest.raises(InvalidCheckpointError, match=needle):
        load_pruned(folder)
    with pytest.raises(InvalidCheckpointError, match=needle):
        GateNormPruner.from_pretrained(folder).score()


@pytest.mark.process
@pytest.mark.parametrize("case", ["all_layers_pruned", "no_pruned_attention_layers"])
def test_inconsistent_pruning_record_is_refused_by_cli(case, tmp_path, checkpoints):
    folder = _bad_record(checkpoints, tmp_path, case)
    result, out = score_cli(folder, tmp_path)
    assert_refused(result, "pruning record", BAD_RECORDS[case][1], output=out)


# --- nothing half-written ---------------------------------------------------------------------------------------


def test_failure_inside_atomic_output_dir_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output_dir(out) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".out.tmp-")
            (tmp / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("boom")
    assert_nothing_written(out)
    assert list(tmp_path.iterdir()) == []


def test_failure_inside_atomic_output_dir_keeps_the_old_output(tmp_path):
    out = _existing_dir(tmp_path / "out")
    (out / OUTPUT_MARKER).write_text('{"writer": "optimum-gatenorm", "files": ["keep.txt"]}')  # ours to replace
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == sorted([OUTPUT_MARKER, "keep.txt"]) and leftovers(out) == []


def test_save_pruned_failing_after_the_weights_leaves_nothing(tmp_path):
    model, report = GateNormPruner(tiny_model("llama")).prune(GateNormConfig(num_layers=1, replacement="none"))
    report.extra["unserialisable"] = object()  # the report is written last, after the weights
    out = tmp_path / "pruned"
    with pytest.raises(TypeError):
        save_pruned(model, out, report=report)
    assert_nothing_written(out)
    assert list(tmp_path.iterdir()) == []
    report.extra.clear()
    save_pruned(model, out, report=report)  # the same call succeeds once the report can be written
    assert PruningReport.from_json(out / "gatenorm_report.json").removed_layers == report.removed_layers
