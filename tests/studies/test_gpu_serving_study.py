"""The served-speed study (`benchmarks/gpu_serving_study.py`) in its CPU mode: the code path the GPU machine runs.

A tiny LLaMA shape, timed by the study's own llama.cpp driver (`benchmarks/gpu_serving_bench.cpp`) compiled against
the llama.cpp that llama-cpp-python (the test extra) built. What is checked is what the GPU run relies on: the split
GGUF files our exporter's layout produces load in llama.cpp with the pruned structure, variants share one store,
every slot is timed in every round, and the summary holds the A/A control, the bound and the linear comparison.
Speeds are not asserted (benchmarks, not tests, judge speed).
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT


pytest.importorskip("llama_cpp", reason="the test extra's llama-cpp-python provides the CPU llama.cpp")

BENCHMARKS = ROOT / "benchmarks"
STUDY = BENCHMARKS / "gpu_serving_study.py"
LABELS = ["base", "base-aa", "k1", "k1-linear", "k2", "k2-linear", "k3", "k3-linear", "k7"]


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(STUDY), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-serving")
    work = out / "work"
    done = _run(
        "--device",
        "cpu",
        "--shapes",
        "tiny-gqa",
        "--prompts",
        "16,48",
        "--gen",
        "6",
        "--rounds",
        "2",
        "--threads",
        "1",
        "--output-dir",
        str(out),
        "--work-dir",
        str(work),
        "--keep-files",
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return out, work, json.loads((out / "gpu_serving.json").read_text())


@pytest.mark.process
def test_every_variant_loads_in_llama_cpp_with_its_pruned_structure(study):
    _, _, record = study
    (shape,) = record["shapes"]
    assert shape["skipped"] is None
    assert [v["label"] for v in shape["variants"]] == LABELS
    assert shape["structure_ok"] is True
    variants = {v["label"]: v for v in shape["variants"]}
    loaded = {r["slot"]: r for r in shape["loaded"] if r.get("event") == "loaded"}
    assert set(loaded) == set(LABELS)
    for label, variant in variants.items():
        assert loaded[label]["n_params"] == variant["n_params"], label
        assert loaded[label]["n_layer"] == 8
    # Unpruned: llama.cpp's `llama`; pruned: `deci`, heads 0 where the attention went, and a linear replacement
    # keeps its query heads but no KV heads (llama.cpp's linear-attention layer).
    assert loaded["base"]["desc"].startswith("llama") and loaded["k2"]["desc"].startswith("deci")
    assert variants["base"]["head_count"] is None
    assert variants["k2"]["removed"] == [1, 7]
    assert variants["k2"]["head_count"] == [0 if i in (1, 7) else 4 for i in range(8)]
    assert variants["k2"]["head_count_kv"] == [0 if i in (1, 7) else 2 for i in range(8)]
    assert variants["k2-linear"]["head_count"] == [4] * 8
    assert variants["k2-linear"]["head_count_kv"] == variants["k2"]["head_count_kv"]
    assert variants["k7"]["removed"] == list(range(1, 8))
    # Removing attention removes parameters; a linear map puts back fewer than it took (GQA: q, k, v, o > one d x d).
    params = [variants[label]["n_params"] for label in ("base", "k1", "k2", "k3", "k7")]
    assert params == sorted(params, reverse=True) and len(set(params)) == 5
    assert variants["k2"]["n_params"] < variants["k2-linear"]["n_params"] < variants["base"]["n_params"]
    # The A/A slot is the unpruned model itself in a second context.
    assert variants["base-aa"]["file"] == variants["base"]["file"]
    assert loaded["base-aa"]["shared_model"] is True and loaded["base"]["shared_model"] is False


@pytest.mark.process
def test_variants_share_one_store_of_tensors(study):
    _, work, record = study
    (shape,) = record["shapes"]
    store = Path(shape["store_dir"])
    own = [v for v in shape["variants"] if v["role"] != "aa"]
    assert shape["store_bytes"] == sum(p.stat().st_size for p in store.iterdir())
    # Eight models on the disk of about one: every shard but the metadata is a link into the store.
    assert shape["store_bytes"] < sum(v["file_bytes"] for v in own) / 4
    for variant in own:
        first = Path(variant["file"])
        assert first.name == "model-00001-of-00018.gguf" and not first.is_symlink()
        shards = sorted(first.parent.glob("model-*-of-00018.gguf"))
        assert len(shards) == 18
        assert all(p.is_symlink() and p.resolve().parent == store.resolve() for p in shards[1:])
    assert work.is_dir()


@pytest.mark.process
def test_every_slot_is_timed_in_every_round_with_an_a_a_control_and_a_bound(study):
    out, _, record = study
    (shape,) = record["shapes"]
    assert shape["rounds"] == 2
    lines = [json.loads(line) for line in (out / "tiny-gqa.jsonl").read_text().splitlines()]
    measured = [r for r in lines if r["event"] == "measure" and not r["warmup"]]
    tests = {"pp16", "pp48", "tg6", "tg6@d48"}
    assert {r["test"] for r in measured} == tests
    assert len(measured) == len(LABELS) * len(tests) * 2
    # Each round visits the slots in a rotated order.
    firsts = [next(r["slot"] for r in lines if r["event"] == "measure" and r["round"] == n) for n in (0, 1, 2)]
    assert firsts == LABELS[:3]
    rows = {(r["test"], r["variant"]): r for r in shape["summary"]}
    assert len(rows) == len(LABELS) * len(tests)
    for (_, label), row in rows.items():
        assert row["rounds"] == 2 and math.isfinite(row["tokens_per_s"]) and row["tokens_per_s"] > 0
        if label == "base":
            assert row["speedup"] is None
        else:
            assert row["speedup_min"] <= row["speedup"] <= row["speedup_max"]
        if row["role"] == "pruned":
            assert (
                row["ideal"] is not None
                and row["ideal"] > 1
                and row["efficiency"] == pytest.approx(row["speedup"] / row["ideal"])
            )
    assert rows[("pp48", "base-aa")]["role"] == "aa" and rows[("pp48", "base-aa")]["ideal"] is None
    assert {(r["test"], r["k"]) for r in shape["linear_vs_none"]} == {(t, k) for t in tests for k in (1, 2, 3)}
    table = (out / "gpu_serving.md").read_text()
    assert "| pp48 | base-aa | 0 |" in table and "linear / none" in table


@pytest.mark.process
def test_the_driver_and_the_study_refuse_bad_input_in_one_line(study, tmp_path):
    _, work, _ = study
    done = _run("--shapes", "llama-70b", "--plan-only")
    assert done.returncode == 2 and "unknown shape(s) ['llama-70b']" in done.stderr
    done = _run("--replacements", "linear", "--plan-only")
    assert done.returncode == 2 and "--replacements takes none or none,linear" in done.stderr
    driver = work / "gpu_serving_bench"
    for args, message in (
        ([], "no --slot LABEL=FILE given"),
        (["--slot", "nolabel"], "--slot takes LABEL=FILE, got 'nolabel'"),
        (["--slot", f"a={tmp_path / 'missing.gguf'}"], "could not load"),
        (["--slot", "a=b", "--rounds", "x"], "--rounds takes an integer, got 'x'"),
    ):
        done = subprocess.run([str(driver), *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, args
        assert done.stderr.strip().splitlines()[-1] == f"gpu_serving_bench: {message}" or message in done.stderr


@pytest.mark.process
def test_plan_only_sizes_the_gpu_run_to_the_h200(tmp_path):
    done = _run("--device", "cuda", "--plan-only", "--memory-gib", "127.9")
    assert done.returncode == 0, done.stderr
    eight, thirteen = done.stdout.strip().splitlines()
    # Llama-3-8B: every variant, linear ones included; LLaMA-2-13B: its linear variants do not fit beside the rest.
    assert "llama3-8b: 9 slots (base, base-aa, k4, k4-linear, k8, k8-linear, k13, k13-linear, k31)" in eight
    assert "llama2-13b: 6 slots (base, base-aa, k5, k10, k16, k39)" in thirteen and "not timed: k16-linear" in thirteen
    assert not list(tmp_path.iterdir())


@pytest.mark.process
def test_prepare_carry_takes_only_what_the_gpu_build_needs(tmp_path):
    done = _run("--prepare-carry", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    tree = tmp_path / "llama.cpp"
    for needed in (
        "CMakeLists.txt",
        "ggml/src/ggml-cuda/CMakeLists.txt",
        "ggml/src/ggml-cpu/CMakeLists.txt",
        "ggml/src/ggml.c",
        "src/llama.cpp",
        "include/llama.h",
        "common/CMakeLists.txt",
        "tools/llama-bench/llama-bench.cpp",
        "gguf-py/gguf/__init__.py",
    ):
        assert (tree / needed).is_file(), needed
    assert not (tree / "ggml/src/ggml-vulkan").exists() and not (tree / "models").exists()
    size = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
    assert size < 40 * 2**20  # the device tool carries at most 64 MiB with the repository
    assert f"{size / 2**20:.1f} MiB" in done.stdout


def _study_module():
    """The study script as a module (it puts benchmarks/ on sys.path for `gpu_study`; restored after)."""
    import importlib.util

    path = list(sys.path)
    spec = importlib.util.spec_from_file_location("gpu_serving_study", STUDY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
        del sys.modules[spec.name]
    return module


def test_cuda_build_finds_cublas_where_pytorch_keeps_it(tmp_path):
    hints = _study_module().cuda_hints
    toolkit, site = tmp_path / "cuda-13.0", tmp_path / "site-packages"
    (toolkit / "lib64").mkdir(parents=True)
    (toolkit / "lib64" / "libcudart.so.13").touch()
    lib = site / "nvidia" / "cu13" / "lib"
    lib.mkdir(parents=True)
    for name in ("libcublas.so.13", "libcublasLt.so.13"):
        (lib / name).touch()
    driver = tmp_path / "driver"
    driver.mkdir()
    # nvcc's toolkit without cuBLAS (as on this project's machines), PyTorch's pip cuBLAS, no libcuda anywhere.
    args, notes = hints([str(site)], (str(toolkit),), (str(driver),))
    assert args == [
        f"-DCUDA_cublas_LIBRARY={lib / 'libcublas.so.13'}",
        f"-DCUDA_cublasLt_LIBRARY={lib / 'libcublasLt.so.13'}",
        f"-DCMAKE_CUDA_FLAGS=-I{site / 'nvidia' / 'cu13' / 'include'}",
        f"-DCMAKE_CXX_FLAGS=-I{site / 'nvidia' / 'cu13' / 'include'}",
        "-DGGML_CUDA_NO_VMM=ON",
    ]
    assert len(notes) == 2
    # The driver library where the GPU machine mounts it; a toolkit with its own cuBLAS and stubs needs nothing.
    (driver / "libcuda.so.1").touch()
    assert (
        hints([str(site)], (str(toolkit),), (str(driver),))[0][-1]
        == f"-DCUDA_cuda_driver_LIBRARY={driver / 'libcuda.so.1'}"
    )
    (toolkit / "lib64" / "libcublas.so.13").touch()
    (toolkit / "lib64" / "stubs").mkdir()
    (toolkit / "lib64" / "stubs" / "libcuda.so").touch()
    assert hints([str(site)], (str(toolkit),), (str(driver),)) == ([], [])
