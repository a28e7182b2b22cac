"""A local directory beats a built-in alias of the same name, as in transformers and every hub tool.

`--model smollm2-135m` run in a directory holding `./smollm2-135m/` (say, the user's own pruned copy) means that
directory: `resolve_model`, `model_inputs`, `eval --reference`, `convert`, the model card and the CLI agree, and
nothing is converted.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import pytest
from cli_support import ENV, gatenorm
from conftest import tiny_model, tiny_tokenizer

from optimum_gatenorm import BUILTIN_MODELS, GateNormPruner, resolve_model
from optimum_gatenorm.checkpoints.card import _metadata
from optimum_gatenorm.checkpoints.models import builtin_alias, model_inputs
from optimum_gatenorm.evaluation.divergence import resolve_reference


ALIAS = "smollm2-135m"  # 30 layers; the tiny model has 4


@pytest.fixture
def local_copy(tmp_path, monkeypatch) -> Path:
    """A tiny model saved as `./smollm2-135m/` in a fresh working directory, and an empty conversion cache."""
    work = tmp_path / "work"
    tiny_model("llama").save_pretrained(work / ALIAS)
    tiny_tokenizer().save_pretrained(work / ALIAS)
    monkeypatch.chdir(work)
    monkeypatch.setenv("OPTIMUM_GATENORM_CACHE", str(tmp_path / "cache"))
    return work


def test_the_alias_means_the_built_in_model_where_no_such_path_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPTIMUM_GATENORM_CACHE", str(tmp_path / "cache"))
    assert builtin_alias(ALIAS) is BUILTIN_MODELS[ALIAS]
    assert builtin_alias(tmp_path) is None and builtin_alias(object()) is None
    assert model_inputs(ALIAS) == [("model", tmp_path / "cache" / "models" / ALIAS)]
    assert any("base_model" in line for line in _metadata(ALIAS))


def test_a_local_directory_of_the_alias_name_is_used_and_logged(local_copy, tmp_path, caplog):
    assert builtin_alias(ALIAS) is None
    with caplog.at_level(logging.INFO, logger="optimum_gatenorm"):
        assert resolve_model(ALIAS) == Path(ALIAS)
    assert f"Using the local directory {local_copy / ALIAS}, not the built-in model of that name" in caplog.text
    assert model_inputs(ALIAS) == [("model", Path(ALIAS))]
    assert resolve_reference(ALIAS) == Path(ALIAS)
    pruner = GateNormPruner.from_pretrained(ALIAS)
    assert len(pruner.score("gate_norm").scores) == 4
    assert not any("base_model" in line for line in _metadata(ALIAS))  # the card claims no origin
    assert not (tmp_path / "cache").exists()  # nothing converted


def _cli(cwd: Path, cache: Path, *args) -> subprocess.CompletedProcess:
    return gatenorm(*args, cwd=cwd, env=dict(ENV, OPTIMUM_GATENORM_CACHE=str(cache)))


@pytest.mark.process
def test_cli_scores_the_local_directory(local_copy, tmp_path):
    result = _cli(local_copy, tmp_path / "cache", "score", "--model", ALIAS, "-c", "gate_norm", "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(json.loads(result.stdout)["scores"]) == 4, result.stdout
    assert "not the built-in model of that name" in result.stderr
    assert not (tmp_path / "cache").exists()


@pytest.mark.process
def test_cli_convert_says_the_local_directory_shadows_the_alias(local_copy, tmp_path):
    result = _cli(local_copy, tmp_path / "cache", "convert", "--model", ALIAS, "--output", tmp_path / "out")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "the local path of that name, which comes before the built-in alias" in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
