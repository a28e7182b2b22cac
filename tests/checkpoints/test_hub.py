"""Hub ids (`--model ORG/NAME[@REVISION]`), resolved from a real Hugging Face cache built here in the hub's own layout.

No hub is reachable in CI: the cache is written as `huggingface_hub` writes it (`models--ORG--NAME/refs/<branch>`
holding a commit hash, `snapshots/<hash>/` holding the files), then every command finds the model there, offline
(`HF_HUB_OFFLINE=1`) and with the network down (an endpoint that refuses connections).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from cli_support import gatenorm, ok
from conftest import tiny_model, tiny_tokenizer

from optimum_gatenorm import GateNormPruner, ModelNotFoundError, resolve_model
from optimum_gatenorm.checkpoints.hub import HUB_FILE_PATTERNS, hub_offline, parse_hub_id


REPO = "testorg/tiny-llama"
MAIN = "a" * 40
TAGGED = "b" * 40


def _snapshot(cache: Path, repo: str, commit: str, source: Path, refs: tuple[str, ...]) -> Path:
    storage = cache / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    shutil.copytree(source, snapshot)
    for ref in refs:
        (storage / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    """A Hugging Face cache holding `testorg/tiny-llama`: `main` (seed 0, with pickled weights beside the
    safetensors, which must never be used) and the tag `v1` (seed 1)."""
    root = tmp_path_factory.mktemp("hub")
    for seed, commit, refs in ((0, MAIN, ("main",)), (1, TAGGED, ("v1",))):
        source = root / f"source-{seed}"
        model = tiny_model("llama", seed=seed, intermediate_size=256)  # a Nemotron-NAS ffn_mult
        model.save_pretrained(source)
        tiny_tokenizer().save_pretrained(source)
        if seed == 0:
            torch.save({}, source / "pytorch_model.bin")
        _snapshot(root / "cache", REPO, commit, source, refs)
    return root / "cache"


@pytest.fixture
def offline_cache(hub_cache, monkeypatch) -> Path:
    """In this process: `HF_HUB_OFFLINE=1` and huggingface_hub's default cache pointed at `hub_cache`."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    return hub_cache


def _cli(*args, cache: Path, offline: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_CACHE=str(cache), PYTHONUNBUFFERED="1")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    else:  # the network is down: nothing listens on port 9 (discard), the connection is refused at once
        env.pop("HF_HUB_OFFLINE", None)
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    return gatenorm(*args, env=env, timeout=timeout)


def _refused(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("HuggingFaceTB/SmolLM2-135M", ("HuggingFaceTB/SmolLM2-135M", None)),
        ("org/name@v1.0", ("org/name", "v1.0")),
        ("org/name@refs/pr/1", ("org/name", "refs/pr/1")),
        ("google/gemma-3-270m@" + MAIN, ("google/gemma-3-270m", MAIN)),
        ("org.x/name_2.5", ("org.x/name_2.5", None)),
        ("./org/name", None),
        ("/abs/name", None),
        ("~/name", None),
        ("a/b/c", None),
        ("org/model.gguf", None),
        ("org--x/name", None),
        ("org/../name", None),
        ("smollm2-135m", None),
        ("org/name@", None),
        ("org/-name", None),
    ],
)
def test_parse_hub_id(text, expected):
    assert parse_hub_id(text) == expected


def test_offline_is_read_when_asked(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not hub_offline()


def test_resolves_from_the_cache_offline_safetensors_only(offline_cache):
    path = resolve_model(REPO)
    assert path == offline_cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / MAIN
    assert (path / "model.safetensors").is_file()
    assert resolve_model(f"{REPO}@v1").name == TAGGED
    assert resolve_model(f"{REPO}@{MAIN}").name == MAIN
    assert "*.bin" not in HUB_FILE_PATTERNS and not any(p.endswith((".bin", ".pt", ".pth")) for p in HUB_FILE_PATTERNS)


def test_python_api_prunes_a_hub_id(offline_cache, tmp_path):
    pruner = GateNormPruner.from_pretrained(REPO)
    local = GateNormPruner.from_pretrained(offline_cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / MAIN)
    assert pruner.score("gate_norm").scores == local.score("gate_norm").scores
    tagged = GateNormPruner.from_pretrained(f"{REPO}@v1")
    assert tagged.score("gate_norm").scores != pruner.score("gate_norm").scores  # another seed, another model


def test_a_local_path_of_that_name_comes_first(offline_cache, tmp_path, monkeypatch):
    local = tmp_path / "testorg" / "tiny-llama"
    tiny_model("llama", seed=3).save_pretrained(local)
    monkeypatch.chdir(tmp_path)
    assert resolve_model(REPO) == Path(REPO)


def test_missing_id_names_what_to_run(offline_cache):
    with pytest.raises(ModelNotFoundError) as error:
        resolve_model("testorg/absent")
    message = str(error.value)
    assert "\n" not in message
    assert "hf download testorg/absent" in message and "HF_HUB_OFFLINE=1" in message
    with pytest.raises(ModelNotFoundError, match="hf download testorg/tiny-llama --revision v9"):
        resolve_model(f"{REPO}@v9")


@pytest.mark.process
def test_cli_prunes_evaluates_and_exports_from_the_cache(hub_cache, tmp_path):
    pruned = tmp_path / "pruned"
    result = ok(_cli("prune", "--model", REPO, "--num-layers", "1", "--output", pruned, "--json", cache=hub_cache))
    assert (pruned / "model.safetensors").is_file() and len(json.loads(result.stdout)["pruned_layers"]) == 1
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert f"--device auto: {device} (" in result.stderr  # the default, and the log says why
    from huggingface_hub import ModelCard

    assert ModelCard.load(pruned / "README.md").data.base_model == REPO  # the model card names its hub origin
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    evaluated = ok(
        _cli("eval", "--model", REPO, "--text", text, "--window", "64", "--format", "json", cache=hub_cache)
    )
    assert '"perplexity"' in evaluated.stdout
    exported = tmp_path / "nas"
    ok(_cli("export", "--model", REPO, "--format", "nemotron-nas", "--output", exported, cache=hub_cache))
    assert (exported / "config.json").is_file()


@pytest.mark.process
@pytest.mark.onnx
def test_cli_exports_onnx_from_the_cache(hub_cache, tmp_path):
    exported = tmp_path / "onnx"
    ok(_cli("export", "--model", REPO, "--output", exported, cache=hub_cache))
    assert (exported / "model.onnx").is_file()


@pytest.mark.process
def test_cli_falls_back_to_the_cache_when_the_network_is_down(hub_cache):
    result = ok(
        _cli("score", "--model", REPO, "--criterion", "gate_norm", "--format", "json", cache=hub_cache, offline=False)
    )
    assert '"gate_norm"' in result.stdout


@pytest.mark.process
def test_cli_revision(hub_cache, offline_cache):
    tagged = ok(
        _cli("score", "--model", REPO, "--revision", "v1", "-c", "gate_norm", "--format", "json", cache=hub_cache)
    )
    scores = json.loads(tagged.stdout)["scores"]
    assert scores == GateNormPruner.from_pretrained(f"{REPO}@v1").score("gate_norm").scores
    assert scores != GateNormPruner.from_pretrained(REPO).score("gate_norm").scores


@pytest.mark.parametrize(
    "model, revision, message",
    [
        ("some/dir", "v1", "--revision applies to a hub id"),
        ("smollm2-135m", "v1", "--revision applies to a hub id"),
        (f"{REPO}@v1", "v1", "names a revision already"),
        (REPO, "bad revision", "is not a branch, tag or commit name"),
    ],
)
def test_revision_refusals(model, revision, message, tmp_path, monkeypatch):
    from optimum_gatenorm.commands.base import _apply_revision
    from optimum_gatenorm.errors import InvalidConfigError

    (tmp_path / "some" / "dir").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidConfigError, match=message):
        _apply_revision(argparse.Namespace(model=model, revision=revision))


@pytest.mark.process
def test_cli_missing_id_is_one_line(hub_cache):
    line = _refused(_cli("score", "--model", "testorg/absent", cache=hub_cache))
    assert "hf download testorg/absent" in line and "no local path" in line
