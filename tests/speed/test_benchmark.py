"""`benchmark`: structure and sanity of the measurements (never a speed), bad input, CLI, real model."""

import json
import math
import subprocess

import pytest
import torch
from cli_support import OPTIMUM_CLI
from conftest import HAS_ONNX, tiny_model, tiny_tokenizer

from optimum_gatenorm import InvalidCheckpointError, InvalidConfigError, export_onnx, prune_model
from optimum_gatenorm.speed.throughput import METRICS, BenchmarkSettings, run_benchmark


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    for name, layers in (("base", []), ("pruned", [1, 2])):
        model = tiny_model("llama")
        prune_model(model, layers)
        model.save_pretrained(root / name)
        tiny_tokenizer().save_pretrained(root / name)
        if HAS_ONNX:
            export_onnx(root / name, root / f"{name}-onnx", validate=False)  # from the directory: tokenizer too
    return root


def _check_result(result, settings):
    shapes = len(settings.batch_sizes) * len(settings.prompt_lengths)
    assert len(result.runs) == shapes * settings.runs * 2
    for run in result.runs:
        for value in (run.prefill_s, run.decode_s_per_token, run.decode_tokens_per_s, run.e2e_tokens_per_s):
            assert math.isfinite(value) and value > 0
        assert run.total_s > run.prefill_s and run.memory_growth_mb >= 0
    assert len(result.summary) == shapes
    for row in result.summary:
        for side in ("baseline", "candidate"):
            for metric in METRICS:
                stats = row[side][metric]
                assert stats["min"] <= stats["median"] <= stats["max"]
        assert row["ideal"]["prefill_s"] > 1 and row["ideal"]["decode_tokens_per_s"] > 1  # 2 of 4 removed
        assert row["cost_model"]["decode"]["memory_bound"] < 2  # bounded by 4 / 2 attention layers
        assert all(row["speedup"][m] > 0 for m in ("prefill_s", "decode_tokens_per_s", "e2e_tokens_per_s"))
    json.loads(result.to_json())


@pytest.mark.onnx
def test_onnxruntime_benchmark_structure(models):
    settings = BenchmarkSettings(batch_sizes=[1, 2], prompt_lengths=[8, 16], new_tokens=4, warmup=1, runs=2)
    result = run_benchmark(models / "pruned-onnx", models / "base-onnx", settings)
    _check_result(result, settings)
    assert result.machine["providers"]["candidate"][0] == "CPUExecutionProvider"
    # interleaved: baseline and candidate alternate run by run
    assert [r.model for r in result.runs[:4]] == ["baseline", "candidate", "baseline", "candidate"]
    assert "efficiency" in result.format_table()


def test_pytorch_backend(models):
    settings = BenchmarkSettings(prompt_lengths=[8], new_tokens=3, warmup=0, runs=2, backend="pytorch")
    _check_result(run_benchmark(models / "pruned", models / "base", settings), settings)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(prompt_lengths=[0]),
        dict(batch_sizes=[]),
        dict(new_tokens=1),
        dict(runs=0),
        dict(warmup=-1),
        dict(backend="tensorrt"),
        dict(provider="tpu"),
    ],
)
def test_bad_settings(kwargs):
    with pytest.raises(InvalidConfigError):
        BenchmarkSettings(**kwargs)


@pytest.mark.onnx
def test_wrong_directories_and_vocabularies_are_refused(models, tmp_path):
    settings = BenchmarkSettings(prompt_lengths=[8], new_tokens=2, warmup=0, runs=1)
    with pytest.raises(InvalidCheckpointError, match="not an ONNX export"):
        run_benchmark(models / "pruned", models / "base-onnx", settings)
    with pytest.raises(InvalidCheckpointError, match="is an ONNX export"):
        run_benchmark(models / "pruned-onnx", models / "base", BenchmarkSettings(backend="pytorch"))
    export_onnx(tiny_model("gpt2"), tmp_path / "gpt2", validate=False)
    with pytest.raises(InvalidConfigError, match="differ in model_type"):
        run_benchmark(tmp_path / "gpt2", models / "base-onnx", settings)
    tokenizer = tiny_tokenizer()  # same model, another tokenizer
    tokenizer.add_tokens(["<extra>"])
    export_onnx(tiny_model("llama"), tmp_path / "other", validate=False)
    tokenizer.save_pretrained(tmp_path / "other")
    with pytest.raises(InvalidConfigError, match="tokenizers differ"):
        run_benchmark(tmp_path / "other", models / "base-onnx", settings)


@pytest.mark.onnx
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when CUDA is missing")
def test_cuda_without_cuda_names_the_missing_piece(models):
    with pytest.raises(InvalidConfigError, match="CUDA was asked for"):
        run_benchmark(models / "pruned-onnx", models / "base-onnx", BenchmarkSettings(provider="cuda"))


@pytest.mark.process
@pytest.mark.onnx
def test_cli_writes_json_and_plot(models, tmp_path):
    result = subprocess.run(
        [
            str(OPTIMUM_CLI), "gatenorm", "benchmark", "--model", str(models / "pruned-onnx"),
            "--baseline", str(models / "base-onnx"), "--batch-size", "1", "--batch-size", "2",
            "--prompt-length", "8", "--new-tokens", "3", "--warmup", "0", "--runs", "2",
            "--output", str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png"),
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((tmp_path / "b.json").read_text())
    assert len(data["runs"]) == 2 * 2 * 2 and len(data["summary"]) == 2
    assert data["settings"]["new_tokens"] == 3 and "ideal" in data["summary"][0]
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    assert "efficiency" in result.stdout


@pytest.mark.process
@pytest.mark.onnx
@pytest.mark.parametrize(
    "args, needle",
    [
        (["--prompt-length", "0"], "expected an integer >= 1"),
        (["--new-tokens", "1"], "expected an integer >= 2"),
        (["--runs", "x"], "expected an integer >= 1"),
    ],
)
def test_cli_bad_values_are_one_line(models, args, needle):
    result = subprocess.run(
        [str(OPTIMUM_CLI), "gatenorm", "benchmark", "--model", str(models / "pruned-onnx"),
         "--baseline", str(models / "base-onnx"), *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert needle in result.stderr.strip().splitlines()[-1]


@pytest.mark.onnx
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and onnxruntime-gpu")
def test_cuda_benchmark(models):
    settings = BenchmarkSettings(prompt_lengths=[8], new_tokens=3, warmup=1, runs=2, provider="cuda")
    result = run_benchmark(models / "pruned-onnx", models / "base-onnx", settings)
    assert result.machine["providers"]["candidate"][0] == "CUDAExecutionProvider"


@pytest.mark.onnx
@pytest.mark.real
def test_real_model_benchmark_cli(tmp_path):
    from optimum_gatenorm import GateNormConfig, GateNormPruner, resolve_model

    for k in (0, 4):  # which layers go does not matter for the timing: the weight-only criterion, milliseconds
        model, _ = GateNormPruner.from_pretrained(resolve_model("smollm2-135m")).prune(
            GateNormConfig(num_layers=k, criterion="gate_norm", replacement="none")
        )
        export_onnx(model, tmp_path / f"k{k}", validate=False)
    result = subprocess.run(
        [
            str(OPTIMUM_CLI), "gatenorm", "benchmark", "--model", str(tmp_path / "k4"),
            "--baseline", str(tmp_path / "k0"), "--prompt-length", "16", "--new-tokens", "3",
            "--warmup", "1", "--runs", "2", "--output", str(tmp_path / "b.json"),
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((tmp_path / "b.json").read_text())
    assert len(data["runs"]) == 4
    for run in data["runs"]:
        assert all(
            math.isfinite(run[m]) and run[m] > 0 for m in ("prefill_s", "decode_tokens_per_s", "e2e_tokens_per_s")
        )
    ideal = data["summary"][0]["ideal"]
    assert 1 < ideal["prefill_s"] < 30 / 26 + 1e-9 and 1 < ideal["decode_tokens_per_s"] < 30 / 26 + 1e-9
