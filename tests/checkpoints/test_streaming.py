"""Pruning a checkpoint larger than memory (`checkpoints.streaming`, `prune --max-memory`): the streamed checkpoint
is the one the loaded path writes, tensor for tensor, and the process that writes it stays far below the model's
size, measured by the kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_support import OPTIMUM_CLI
from conftest import TINY_CONFIGS, save_sharded, tiny_model
from safetensors import safe_open

import optimum_gatenorm.pipeline as pipeline
from optimum_gatenorm import GateNormConfig, load_pruned, prune_and_save, save_pruned
from optimum_gatenorm.checkpoints import streaming
from optimum_gatenorm.checkpoints.streaming import format_bytes, parse_size
from optimum_gatenorm.errors import InvalidConfigError
from optimum_gatenorm.pruning.pruner import GateNormPruner


DATA_FREE = dict(criterion="gate_norm", replacement="none")


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            out.update({name: handle.get_tensor(name) for name in handle.keys()})
    return out


def _assert_same_checkpoint(loaded: Path, streamed: Path, tied_copy: bool = False) -> None:
    """Same tensors (names, dtypes, values) and the same pruning record; `tied_copy`: the source stored the tied
    output embeddings, which the streamed checkpoint keeps as stored."""
    a, b = _tensors(loaded), _tensors(streamed)
    extra = set(b) - set(a)
    assert set(a) <= set(b) and extra <= ({"lm_head.weight"} if tied_copy else set()), set(a) ^ set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    record = [json.loads((d / "config.json").read_text())["quantization_config"] for d in (loaded, streamed)]
    assert record[0] == record[1]


def _prune_both(source: Path, tmp_path: Path, config: GateNormConfig):
    model, loaded_report = GateNormPruner.from_pretrained(source).prune(config, progress=False)
    save_pruned(model, tmp_path / "loaded")
    (tmp_path / "streamed").mkdir()
    streamed_report = GateNormPruner.from_pretrained(source).prune_streamed(config, tmp_path / "streamed")
    return model, loaded_report, streamed_report


@pytest.mark.parametrize("sharded", [False, True], ids=["one-file", "sharded"])
@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_the_streamed_checkpoint_is_the_loaded_paths(name, sharded, tmp_path):
    model = tiny_model(name)
    if sharded:
        save_sharded(model, tmp_path / "source")  # stores tied output embeddings too, unlike save_pretrained
    else:
        model.save_pretrained(tmp_path / "source")
    config = GateNormConfig(num_layers=2, **DATA_FREE)
    pruned, loaded_report, streamed_report = _prune_both(tmp_path / "source", tmp_path, config)
    _assert_same_checkpoint(tmp_path / "loaded", tmp_path / "streamed", tied_copy=sharded)
    a, b = loaded_report.to_dict(), streamed_report.to_dict()
    assert {k: (a[k], b[k]) for k in a if a[k] != b[k] and k != "scoring_seconds"} == {}
    assert streamed_report.removed_layers and streamed_report.num_parameters_after < a["num_parameters_before"]
    ids = torch.arange(12)[None]
    with torch.no_grad():
        assert torch.equal(load_pruned(tmp_path / "streamed")(ids).logits, pruned(ids).logits)


def test_a_pruned_checkpoint_prunes_again_streamed_keeping_its_replacements(tmp_path):
    """Layers removed earlier keep their fitted replacements and record; the tombstone moves to the new first
    removed layer, as the loaded path writes it."""
    tiny_model("llama").save_pretrained(tmp_path / "source")
    prune_and_save(
        tmp_path / "source", tmp_path / "once", GateNormConfig(exclude_layers=(1,), num_layers=1, protect_first=1)
    )
    once = json.loads((tmp_path / "once" / "config.json").read_text())["quantization_config"]
    assert once["attention_replacements"]  # the default linear replacement, fitted
    first = once["pruned_attention_layers"][0]
    assert first > 1
    config = GateNormConfig(exclude_layers=tuple(i for i in range(1, 4) if i != 1), num_layers=1, **DATA_FREE)
    _prune_both(tmp_path / "once", tmp_path, config)
    _assert_same_checkpoint(tmp_path / "loaded", tmp_path / "streamed")
    record = json.loads((tmp_path / "streamed" / "config.json").read_text())["quantization_config"]
    assert record["pruned_attention_layers"] == [1, first]
    assert record["attention_replacements"] == once["attention_replacements"]
    assert record["layer_criteria"] == {"1": "gate_norm", str(first): once["layer_criteria"][str(first)]}
    names = set(_tensors(tmp_path / "streamed"))
    assert "model.layers.1.self_attn.q_proj.weight" in names  # the tombstone, now at layer 1
    assert f"model.layers.{first}.self_attn.q_proj.weight" not in names
    assert any(name.startswith(f"model.layers.{first}.attention_replacement.") for name in names)


def test_copying_without_the_kernels_copy_gives_the_same_files(tmp_path, monkeypatch):
    save_sharded(tiny_model("qwen3"), tmp_path / "source")
    config = GateNormConfig(num_layers=1, **DATA_FREE)
    (tmp_path / "kernel").mkdir()
    GateNormPruner.from_pretrained(tmp_path / "source").prune_streamed(config, tmp_path / "kernel", progress=False)
    monkeypatch.setattr(streaming, "_copy_range", lambda *args: 0)
    (tmp_path / "buffered").mkdir()
    GateNormPruner.from_pretrained(tmp_path / "source").prune_streamed(config, tmp_path / "buffered", progress=False)
    files = sorted(path.name for path in (tmp_path / "kernel").glob("*.safetensors"))
    assert len(files) == 3
    for file in files:
        assert (tmp_path / "kernel" / file).read_bytes() == (tmp_path / "buffered" / file).read_bytes()


def test_prune_and_save_streams_past_the_budget_and_writes_a_whole_checkpoint(tmp_path, caplog):
    from conftest import tiny_tokenizer

    tiny_model("llama").save_pretrained(tmp_path / "source")
    tiny_tokenizer().save_pretrained(tmp_path / "source")
    with caplog.at_level("INFO", logger="optimum_gatenorm"):
        result = prune_and_save(
            tmp_path / "source", tmp_path / "out", GateNormConfig(num_layers=1, **DATA_FREE), max_memory="10kB"
        )
    assert "exceed `max_memory='10kB'`: pruning it file to file" in caplog.text
    files = {path.name for path in (tmp_path / "out").iterdir()}
    assert {"config.json", "model.safetensors", "gatenorm_report.json", "README.md", "tokenizer.json"} <= files
    assert (
        result.report.removed_layers
        == json.loads((tmp_path / "out" / "gatenorm_report.json").read_text())["removed_layers"]
    )
    load_pruned(tmp_path / "out")
    caplog.clear()
    with caplog.at_level("INFO", logger="optimum_gatenorm"):  # a budget the weights fit in: loaded as usual
        prune_and_save(
            tmp_path / "source", tmp_path / "out2", GateNormConfig(num_layers=1, **DATA_FREE), max_memory="1GB"
        )
    assert "file to file" not in caplog.text


def test_without_a_budget_the_available_memory_is_the_limit(tmp_path, monkeypatch):
    tiny_model("llama").save_pretrained(tmp_path / "source")
    monkeypatch.setattr(pipeline, "available_memory", lambda: 1000)
    with pytest.raises(InvalidConfigError, match=r"exceed the 1,000 bytes of memory available: `criterion="):
        prune_and_save(tmp_path / "source", tmp_path / "out", GateNormConfig(num_layers=1))
    assert not (tmp_path / "out").exists()
    prune_and_save(tmp_path / "source", tmp_path / "out", GateNormConfig(num_layers=1, **DATA_FREE))
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_pickled_weights_are_refused_before_any_work(tmp_path):
    model = tiny_model("llama")
    model.config.save_pretrained(tmp_path / "source")  # transformers 5 saves safetensors only: pickle by hand
    torch.save(model.state_dict(), tmp_path / "source" / "pytorch_model.bin")
    with pytest.raises(InvalidConfigError, match="reads safetensors only"):
        prune_and_save(
            tmp_path / "source",
            tmp_path / "out",
            GateNormConfig(num_layers=1, **DATA_FREE),
            allow_pickle=True,
            max_memory=1,
        )
    assert not (tmp_path / "out").exists()
    pruner = GateNormPruner.from_pretrained(tmp_path / "source", allow_pickle=True)
    with pytest.raises(InvalidConfigError, match="stores pickled weights; pruning without loading reads safetensors"):
        pruner.prune_streamed(GateNormConfig(num_layers=1, **DATA_FREE), tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["source"]


def test_an_in_memory_model_is_not_streamed(tmp_path):
    with pytest.raises(InvalidConfigError, match="GateNormPruner.from_pretrained"):
        GateNormPruner(tiny_model("llama")).prune_streamed(GateNormConfig(num_layers=1, **DATA_FREE), tmp_path)


@pytest.mark.parametrize(
    ("text", "size"),
    [("24GB", 24 * 10**9), ("512MiB", 512 << 20), ("1.5 tb", 15 * 10**11), ("4096", 4096), (100, 100), ("2kib", 2048)],
)
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "-1GB", "0", "GB", "1XB", "nan", "inf", True, 0])
def test_bad_sizes(text):
    with pytest.raises(InvalidConfigError, match="is not a size"):
        parse_size(text)


def test_format_bytes():
    assert [format_bytes(n) for n in (999, 538_090_408, 4_400_216_288, 2 * 10**12)] == [
        "999 bytes",
        "538 MB",
        "4.4 GB",
        "2 TB",
    ]


# The kernel's peak RSS of a process starts from its parent's at fork and survives exec, so a command forked from
# this (large) test process would report at least this process's peak: a small Python in between starts it.
_MEASURE = """
import os, subprocess, sys
process = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
output = process.stdout.read().decode()
_, status, usage = os.wait4(process.pid, 0)
print(output)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024)
"""


def _peak_rss(args: list[str]) -> int:
    """Runs `optimum-cli gatenorm ARGS`; its peak resident set size (bytes), from the kernel when it is reaped."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(OPTIMUM_CLI), "gatenorm", *args],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    code, peak = result.stdout.split()[-2:]
    assert code == "0", result.stdout + result.stderr
    return int(peak)


@pytest.mark.process
def test_pruning_under_a_memory_budget_smaller_than_the_model(tmp_path):
    """A 264 MB model pruned under `--max-memory 64MB`: the process grows by far less than the model over the same
    command on a tiny model; loaded, the same prune grows by at least the model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "llama", vocab_size=32000, hidden_size=512, intermediate_size=2048, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "large", max_shard_size="100MB")
    tiny_model("llama").save_pretrained(tmp_path / "tiny")
    size = sum(path.stat().st_size for path in (tmp_path / "large").glob("*.safetensors"))
    assert size > 250e6
    common = ["--num-layers", "2", "--criterion", "gate_norm", "--replacement", "none", "--device", "cpu"]
    floor = _peak_rss(["prune", "-m", str(tmp_path / "tiny"), "-o", str(tmp_path / "a"), "--max-memory", "1", *common])
    streamed = _peak_rss(
        ["prune", "-m", str(tmp_path / "large"), "-o", str(tmp_path / "b"), "--max-memory", "64MB", *common]
    )
    loaded = _peak_rss(["prune", "-m", str(tmp_path / "large"), "-o", str(tmp_path / "c"), *common])
    _assert_same_checkpoint(tmp_path / "c", tmp_path / "b")
    assert streamed - floor < size / 4, (format_bytes(floor), format_bytes(streamed), format_bytes(size))
    assert loaded - floor > 0.8 * size, (format_bytes(floor), format_bytes(loaded), format_bytes(size))
