"""Pruned checkpoints through the lm-evaluation-harness `hf` model, on the local file task of tests/data/lm_eval.

One tiny pruned llama with a character-level tokenizer is shared by the module. lm-eval's CLI runs in subprocesses
(~10 s each): with `python -m optimum_gatenorm.evaluation.lm_eval` it must evaluate the pruned model, and with plain
`python -m lm_eval` (no `optimum_gatenorm` import) it must stop rather than evaluate random attention.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, tiny_model, tiny_tokenizer

from optimum_gatenorm import ModelNotFoundError, get_pruned_layers, load_pruned, prune_model
from optimum_gatenorm.checkpoints.structure import is_attention_pruned


# CI's transformers 4.57 environment installs the `eval` extra (.ci/test); it skips in the transformers 5 one
# (not installed there) and in a development venv without it.
lm_eval = pytest.importorskip("lm_eval", reason='lm-eval is not installed: pip install -e ".[eval]"')

from optimum_gatenorm.evaluation.lm_eval import evaluate_with_lm_eval  # noqa: E402


REPO = ROOT
TASK_DIR = REPO / "tests" / "data" / "lm_eval"
TASK = "gatenorm_tiny_mc"
PRUNED = [1, 2]
LIMIT = 4

# lm-eval passes the checkpoint's own quantization_config back to from_pretrained; transformers notes the duplicate.
pytestmark = pytest.mark.filterwarnings("ignore:You passed `quantization_config`:UserWarning")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("lm_eval") / "pruned-llama"
    model = tiny_model("llama")
    prune_model(model, PRUNED)
    model.save_pretrained(directory)
    tokenizer = tiny_tokenizer()
    assert len(tokenizer) < model.config.vocab_size
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """The checked-in task, with its data file made absolute so that it works from any working directory."""
    config = yaml.safe_load((TASK_DIR / f"{TASK}.yaml").read_text())
    config["dataset_kwargs"]["data_files"]["test"] = str(TASK_DIR / f"{TASK}.jsonl")
    directory = tmp_path_factory.mktemp("tasks")
    (directory / f"{TASK}.yaml").write_text(yaml.safe_dump(config))
    return directory


@pytest.fixture(scope="module")
def results(checkpoint, task_dir) -> dict:
    return evaluate_with_lm_eval(checkpoint, TASK, include_path=task_dir, limit=LIMIT, log_samples=True)


def loglikelihoods(results: dict) -> list[float]:
    return [float(ll) for sample in results["samples"][TASK] for ll, _ in sample["filtered_resps"]]


def run_module(module: str, checkpoint: Path, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [sys.executable, "-m", module, "run", "--model", "hf"]
    command += ["--model_args", f"pretrained={checkpoint},dtype=float32", "--tasks", TASK]
    command += ["--include_path", "tests/data/lm_eval", "--limit", str(LIMIT), "--device", "cpu", *args]
    # From the repository root, where the checked-in task's relative data path resolves.
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=180)


def test_hf_model_has_the_pruned_structure(checkpoint):
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(checkpoint), dtype="float32", device="cpu", batch_size=1)
    model = lm.model
    assert get_pruned_layers(model.config) == PRUNED
    layers = model.model.layers
    assert [i for i, layer in enumerate(layers) if is_attention_pruned(layer)] == PRUNED
    reference = load_pruned(checkpoint, dtype=torch.float32).state_dict()
    state = model.state_dict()
    assert state.keys() == reference.keys()
    assert not any(".layers.1.self_attn." in key for key in state)
    for key, value in reference.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.process
def test_evaluate_with_lm_eval_matches_load_pruned(checkpoint, task_dir, results):
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    acc = results["results"][TASK]["acc,none"]
    assert 0.0 <= acc <= 1.0
    assert len(results["samples"][TASK]) == LIMIT

    # The same evaluation on the model as `load_pruned` loads it (strictly: no missing or mismatched weights).
    reference_lm = HFLM(pretrained=load_pruned(checkpoint, dtype=torch.float32), tokenizer=str(checkpoint))
    reference = lm_eval.simple_evaluate(
        model=reference_lm,
        tasks=[TASK],
        task_manager=TaskManager(include_path=str(task_dir)),
        limit=LIMIT,
        log_samples=True,
    )
    assert reference["results"][TASK]["acc,none"] == acc
    assert loglikelihoods(results) == pytest.approx(loglikelihoods(reference), abs=1e-5)
    assert all(ll < 0 for ll in loglikelihoods(results))


@pytest.mark.process
def test_cli_module_evaluates_pruned_checkpoint(checkpoint, tmp_path, results):
    result = run_module("optimum_gatenorm.evaluation.lm_eval", checkpoint, "--output_path", str(tmp_path))
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert TASK in result.stdout and "acc" in result.stdout
    (results_file,) = tmp_path.rglob("results_*.json")
    cli_results = json.loads(results_file.read_text())["results"][TASK]
    assert cli_results["acc,none"] == results["results"][TASK]["acc,none"]


@pytest.mark.process
def test_plain_lm_eval_refuses_pruned_checkpoint(checkpoint):
    """Without `optimum_gatenorm` imported, lm-eval must stop instead of evaluating random attention."""
    result = run_module("lm_eval", checkpoint)
    assert result.returncode != 0, result.stdout
    assert "gatenorm" in result.stderr, result.stderr
    assert f"|{TASK}" not in result.stdout


def test_missing_checkpoint(tmp_path, task_dir):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        evaluate_with_lm_eval(tmp_path / "missing", TASK, include_path=task_dir, limit=1)


def test_missing_lm_eval_is_one_line(monkeypatch, checkpoint):
    from optimum_gatenorm.evaluation import lm_eval as module

    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[eval\]"'):
        module.evaluate_with_lm_eval(checkpoint, TASK)
    with pytest.raises(SystemExit, match=r'^error: lm-eval is not installed.*\[eval\]"$'):
        module.main(["--help"])
