"""Served speed on llama.cpp: prefill and decode speed-up of attention-pruned GGUFs of real LLaMA shapes.

    # the GPU machine (one command, the llama.cpp build included; benchmarks/gpu_serving/README.md):
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_serving_study.py --device cuda --llama-cpp .gpu-carry/llama.cpp
    # here, once before that: the llama.cpp source it builds, into a folder the device tool's `carry` takes
    python benchmarks/gpu_serving_study.py --prepare-carry .gpu-carry
    # CPU, a tiny shape (tests/studies/test_gpu_serving_study.py): the same code path in seconds, timed against the llama.cpp
    # that llama-cpp-python (the test extra) built
    python benchmarks/gpu_serving_study.py --device cpu --shapes tiny-gqa --prompts 32,64 --gen 8 --rounds 2 \
        --output-dir DIR
    # what would run, with file and memory sizes, without writing or timing anything
    python benchmarks/gpu_serving_study.py --device cuda --plan-only

What is timed. For each shape (Llama-3-8B, then LLaMA-2-13B if the time budget allows; `gpu_study.MODELS`), the
GGUF files our exporter writes (`optimum_gatenorm.exporters.gguf`: `gguf_writer`'s metadata, `gguf_tensors`'
layout, `add_gguf_tensor`'s f16 conversion), with random weights: the unpruned model (llama.cpp's `llama`), and k
attention sublayers removed for k in {L/8, L/4, 0.4 L} (`deci`, attention-free layers), each also with `linear`
replacements (deci's linear-attention layers) where GPU memory allows, plus k = L-1 (the bound probe). Layers are
spread evenly over 1..L-1 (`gpu_study.evenly_spread`; layer 0 stays, as GGUF requires).

Files. All variants of a shape share their tensors: each is a split GGUF (`model-00001-of-000NN.gguf`, as
llama.cpp's gguf-split writes) of 2 + 2 L shards: the metadata (per variant), the model-level tensors, one MLP shard
per layer and one attention shard per layer (the layer's attention, its linear map, or empty). Every shard but the
first is a link into one store, so a shape costs one model's disk and write time, not one per variant.

How. `gpu_serving_bench.cpp` (beside this file), compiled against llama.cpp (CUDA: built here with cmake from the
source of the llama-cpp-python sdist; CPU: llama-cpp-python's own libllama), loads every variant once, gives each
slot its own context, and runs rounds: each round visits every slot once in a rotating order and times, as
llama-bench does (random tokens, synchronized), prompt processing of each `--prompts` length, `--gen` generated
tokens right after the longest prompt (decode at that depth) and `--gen` tokens from an empty cache. A second slot
on the unpruned model (`base-aa`, same weights, its own context) is the A/A control. Speed-up per round =
unpruned time / variant time, reported as the median over rounds with its range. The bound: t_attn = (T(0) -
T(L-1)) / (L-1), the measured time of one attention sublayer on this engine; ideal(k) = T(0) / (T(0) - k t_attn);
efficiency = measured / ideal. With `--llama-bench` (built alongside on CUDA), llama.cpp's own llama-bench times
the unpruned model and k = L/4 once more, as a check of the driver's absolute numbers.

Outputs in `--output-dir` (default benchmarks/gpu_serving): `gpu_serving.json` (everything; rewritten after each
shape), `gpu_serving.md` (the tables), `<shape>.jsonl` (the driver's raw lines) and `build.log`. A time budget
(`--budget-s`, counted from the start) skips what no longer fits instead of overrunning, and says so.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
for _path in (BENCH_DIR, REPO_ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from harness.clock import Clock  # noqa: E402  (shapes, layer choice, clock and machine record shared with gpu_study)
from harness.machine import machine_info as _harness_machine_info  # noqa: E402
from harness.shapes import MODELS, TINY_MODELS, ModelSpec, evenly_spread  # noqa: E402


# A small real shape for a CPU run of the whole method (not part of the GPU default): SmolLM2-135M's geometry, with an
# untied LM head (the real model ties it; the compute is the same).
CPU_MODELS = {
    "smollm2-135m": ModelSpec(
        "smollm2-135m", 576, 30, 9, 3, 1536, 49152, 100000.0, 8192, "SmolLM2-135M shape (GQA, 3 KV heads)"
    ),
}
SCHEMA = "optimum_gatenorm.gpu_serving_study/1"
DRIVER_SOURCE = BENCH_DIR / "gpu_serving_bench.cpp"
# What the CUDA build and the GGUF writing need from llama.cpp's source (`vendor/llama.cpp` of the llama-cpp-python
# sdist): the libraries, llama-bench (with the common library it links) and gguf-py. ggml's other backends, the
# tests, tools, models, docs and the web UI stay behind.
CARRY_PATHS = (
    "CMakeLists.txt",
    "LICENSE",
    "cmake/",
    "include/",
    "src/",
    "common/",
    "vendor/",
    "tools/llama-bench/",
    "gguf-py/",
    "ggml/CMakeLists.txt",
    "ggml/cmake/",
    "ggml/include/",
    "ggml/src/*",
    "ggml/src/ggml-cpu/",
    "ggml/src/ggml-cuda/",
)
HEADER_PATHS = ("include/", "ggml/include/")
ROLE_ORDER = {"base": 0, "aa": 1, "pruned": 2, "bound": 3}
BLOCK_VALUES = 1 << 24  # random f16 values every weight is cut from (32 MiB)
CONTEXT_MARGIN_GIB = 1.0  # per slot: compute buffers and the rest llama.cpp allocates beside the KV cache


@dataclass
class Variant:
    """One model timed in a shape.

    Args:
        label: `base`, `base-aa` (the A/A slot on base's file), `k<k>` or `k<k>-linear`.
        role: `base`, `aa`, `pruned` or `bound` (k = L-1).
        k: Attention sublayers removed.
        removed: Their layer indices.
        replacement: `none` or `linear` for pruned variants, None for base.
        file: First shard of the split GGUF.
        file_bytes: All its shards together.
        n_params: Parameters in its tensors (llama.cpp's count must match).
        head_count: `deci.attention.head_count` per layer as written (None for `llama`).
        head_count_kv: Likewise for the KV heads.
    """

    label: str
    role: str
    k: int
    removed: list[int]
    replacement: str | None
    file: str = ""
    file_bytes: int = 0
    n_params: int = 0
    head_count: list[int] | None = None
    head_count_kv: list[int] | None = None


@dataclass
class ShapeResult:
    """Everything measured on one shape."""

    shape: dict
    variants: list[dict] = field(default_factory=list)
    skipped_variants: list[dict] = field(default_factory=list)
    store_bytes: int = 0
    store_dir: str = ""
    write_s: float = 0.0
    memory_estimate_gib: float = 0.0
    driver: dict = field(default_factory=dict)
    loaded: list[dict] = field(default_factory=list)
    structure_ok: bool = False
    rounds: int = 0
    summary: list[dict] = field(default_factory=list)
    linear_vs_none: list[dict] = field(default_factory=list)
    llama_bench: dict = field(default_factory=dict)
    skipped: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# llama.cpp: source, build, driver


def _installed_llama_cpp_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        return None


def sdist_tarball() -> Path:
    """The sdist of the installed llama-cpp-python (its `vendor/llama.cpp` is the llama.cpp it built): `$LLAMA_CPP_SDIST`
    (.ci/test sets it), else fetched with pip from the package registry into the cache, once."""
    if os.environ.get("LLAMA_CPP_SDIST"):
        return Path(os.environ["LLAMA_CPP_SDIST"])
    pinned = _installed_llama_cpp_version()
    if pinned is None:
        raise SystemExit(
            "gpu_serving_study: llama-cpp-python is not installed, so there is no llama.cpp source to default to; "
            "pass --llama-cpp DIR (a llama.cpp source tree, e.g. one made here with --prepare-carry)"
        )
    from optimum_gatenorm.checkpoints.models import cache_dir

    root = cache_dir() / "sdist"
    tarball = root / f"llama_cpp_python-{pinned}.tar.gz"
    if not tarball.is_file():
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", str(root)]
            + [f"llama-cpp-python=={pinned}"],
            check=True,
        )
    return tarball


def _wanted(relative: str, paths: tuple[str, ...]) -> bool:
    """`relative` is one of `paths`, or under one (`dir/`), or a file directly in one (`dir/*`)."""
    for path in paths:
        if path.endswith("/*"):
            if relative.startswith(path[:-1]) and "/" not in relative[len(path) - 1 :]:
                return True
        elif relative.startswith(path):
            return True
    return False


def extract_source(tarball: Path, paths: tuple[str, ...], dest: Path) -> Path:
    """Extracts the members of the sdist's `vendor/llama.cpp` named by `paths` (`_wanted`) into `dest`."""
    prefix = tarball.name.removesuffix(".tar.gz") + "/vendor/llama.cpp/"
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as archive:
        for member in archive.getmembers():
            relative = member.name.removeprefix(prefix)
            if member.name.startswith(prefix) and _wanted(relative, paths) and (member.isfile() or member.isdir()):
                member.name = relative
                archive.extract(member, dest, filter="data")
    return dest


def llama_cpp_source(arg: str | None, need_build: bool) -> Path:
    """The llama.cpp source tree: `--llama-cpp`, else `$LLAMA_CPP_SOURCE`, else extracted from the sdist (headers
    only for the CPU mode, the build subset for a CMake build)."""
    for candidate in (arg, os.environ.get("LLAMA_CPP_SOURCE")):
        if candidate:
            source = Path(candidate)
            wanted = "ggml/src/ggml-cuda" if need_build else "include/llama.h"
            if not (source / wanted).exists():
                raise SystemExit(f"gpu_serving_study: {source} is not a llama.cpp source tree with {wanted}")
            return source
    tarball = sdist_tarball()
    from optimum_gatenorm.checkpoints.models import cache_dir

    dest = cache_dir() / "sdist" / (tarball.name.removesuffix(".tar.gz") + ("-build" if need_build else "-headers"))
    marker = dest / ("ggml/src/ggml-cuda" if need_build else "ggml/include/ggml-backend.h")
    if not marker.exists():
        extract_source(tarball, CARRY_PATHS if need_build else HEADER_PATHS, dest)
    return dest


def prepare_carry(dest: Path) -> int:
    """Writes the llama.cpp source the GPU machine builds into `dest/llama.cpp` and prints its size."""
    target = dest / "llama.cpp"
    if target.exists():
        shutil.rmtree(target)
    extract_source(sdist_tarball(), CARRY_PATHS, target)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    files = sum(1 for p in target.rglob("*") if p.is_file())
    print(f"{target}: {files} files, {size / 2**20:.1f} MiB (llama-cpp-python {_installed_llama_cpp_version()})")
    return 0


def wheel_lib_dir() -> Path | None:
    """The directory of llama-cpp-python's own libllama (the CPU build the test extra makes), if installed."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    lib = Path(spec.origin).parent / "lib"
    return lib if any(lib.glob("libllama.*")) else None


def _cuda_arch() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True
        ).stdout.split()
        return out[0].replace(".", "") if out else "90"
    except OSError:
        return "90"


def _first(patterns: list[str]) -> Path | None:
    import glob

    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[0])
    return None


def cuda_hints(
    site_roots: list[str] | None = None,
    toolkits: tuple[str, ...] = ("/usr/local/cuda*",),
    driver_dirs: tuple[str, ...] = ("/usr/lib/x86_64-linux-gnu", "/usr/local/nvidia/lib64", "/usr/lib64"),
) -> tuple[list[str], list[str]]:
    """CMake arguments for a CUDA toolkit without cuBLAS or the driver library where CMake looks, and notes saying
    what was chosen. Seen on this project's machines: nvcc without cuBLAS (the GPU machine's PyTorch carries cuBLAS
    as a pip package). cuBLAS is then taken from `nvidia/cu13` (or `cu12`, `cublas`) in site-packages; without any
    libcuda, ggml's CUDA memory pool runs without virtual memory management (`GGML_CUDA_NO_VMM`)."""
    import site

    if site_roots is None:
        site_roots = [*site.getsitepackages(), site.getusersitepackages()]
    args, notes = [], []
    in_toolkit = [f"{t}/lib64/libcublas.so*" for t in toolkits] + [
        f"{t}/targets/*/lib/libcublas.so*" for t in toolkits
    ]
    if _first(in_toolkit) is None:
        subs = ("cu13", "cu12", "cublas")
        lib = _first([f"{root}/nvidia/{sub}/lib/libcublas.so*" for root in site_roots for sub in subs])
        if lib is not None:
            lt = _first([str(lib.parent / "libcublasLt.so*")])
            include = lib.parent.parent / "include"
            args += [f"-DCUDA_cublas_LIBRARY={lib}", f"-DCUDA_cublasLt_LIBRARY={lt}"]
            args += [f"-DCMAKE_CUDA_FLAGS=-I{include}", f"-DCMAKE_CXX_FLAGS=-I{include}"]
            notes.append(f"cuBLAS from {lib.parent} (not in the CUDA toolkit)")
    stubs = [f"{t}/lib64/stubs/libcuda.so" for t in toolkits] + [
        f"{t}/targets/*/lib/stubs/libcuda.so" for t in toolkits
    ]
    if _first(stubs) is None:
        driver = _first([f"{d}/libcuda.so*" for d in driver_dirs])
        if driver is not None:
            args.append(f"-DCUDA_cuda_driver_LIBRARY={driver}")
            notes.append(f"driver library {driver}")
        else:
            args.append("-DGGML_CUDA_NO_VMM=ON")
            notes.append("no libcuda found: GGML_CUDA_NO_VMM=ON")
    return args, notes


def cmake_build(source: Path, build_dir: Path, device: str, cuda_arch: str, llama_bench: bool, log: Path) -> dict:
    """Builds libllama (and llama-bench) from `source` with CMake and Ninja; CUDA for `device == "cuda"`."""
    started = time.monotonic()
    project, targets = source, ["llama"]
    if llama_bench:
        # LLAMA_BUILD_TOOLS=OFF builds no tool: a wrapper project adds llama-bench's directory to the tree.
        project = build_dir / "with-llama-bench"
        project.mkdir(parents=True, exist_ok=True)
        (project / "CMakeLists.txt").write_text(
            "cmake_minimum_required(VERSION 3.14)\nproject(gatenorm_llama_bench C CXX)\n"
            f'add_subdirectory("{source}" llama.cpp)\nadd_subdirectory("{source}/tools/llama-bench" llama-bench)\n'
        )
        targets.append("llama-bench")
    configure = [
        "cmake",
        "-S",
        str(project),
        "-B",
        str(build_dir),
        "-G",
        "Ninja",
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=ON",
        "-DLLAMA_BUILD_COMMON=" + ("ON" if llama_bench else "OFF"),
        "-DLLAMA_BUILD_TOOLS=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_SERVER=OFF",
        "-DLLAMA_BUILD_APP=OFF",
        "-DLLAMA_OPENSSL=OFF",
    ]
    notes = []
    if device == "cuda":
        hints, notes = cuda_hints()
        configure += ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={cuda_arch}", *hints]
    else:
        configure += ["-DGGML_NATIVE=OFF"]
    # Every library and program in one folder, which the driver links against.
    configure += [
        f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={build_dir}/bin",
        f"-DCMAKE_RUNTIME_OUTPUT_DIRECTORY={build_dir}/bin",
    ]
    with open(log, "a") as out:
        subprocess.run(configure, check=True, stdout=out, stderr=subprocess.STDOUT)
        subprocess.run(
            ["cmake", "--build", str(build_dir), "--target", *targets, "-j", str(os.cpu_count() or 2)],
            check=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    bench = build_dir / "bin" / "llama-bench"
    return {
        "seconds": round(time.monotonic() - started, 1),
        "lib_dir": str(build_dir / "bin"),
        "llama_bench": str(bench) if bench.is_file() else None,
        "configure": configure,
        "notes": notes,
    }


def compile_driver(source: Path, lib_dir: Path, out: Path) -> dict:
    """Compiles `gpu_serving_bench.cpp` against llama.cpp's headers in `source` and libllama in `lib_dir`."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise SystemExit("gpu_serving_study: no C++ compiler (c++ or g++) on PATH; install one or set CXX")
    libs = [f"-l{name}" for name in ("llama", "ggml", "ggml-base") if any(lib_dir.glob(f"lib{name}.*"))]
    command = [
        compiler,
        "-O2",
        "-std=c++17",
        str(DRIVER_SOURCE),
        f"-I{source / 'include'}",
        f"-I{source / 'ggml' / 'include'}",
        f"-L{lib_dir}",
        *libs,
        f"-Wl,-rpath,{lib_dir}",
        "-o",
        str(out),
    ]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"gpu_serving_study: compiling {DRIVER_SOURCE.name} failed:\n{result.stderr[-3000:]}")
    return {"seconds": round(time.monotonic() - started, 1), "command": command}


# ---------------------------------------------------------------------------------------------------------------
# Variants and their files


def plan_variants(spec: ModelSpec, replacements: list[str]) -> list[Variant]:
    """base, base-aa, k in {L/8, L/4, 0.4 L} (with each replacement) and the bound probe k = L-1."""
    variants = [Variant("base", "base", 0, [], None), Variant("base-aa", "aa", 0, [], None)]
    ks = spec.ks()
    for k in ks[1:-1]:
        for replacement in replacements:
            label = f"k{k}" if replacement == "none" else f"k{k}-{replacement}"
            variants.append(Variant(label, "pruned", k, evenly_spread(k, spec.num_layers), replacement))
    bound = ks[-1]
    variants.append(Variant(f"k{bound}", "bound", bound, evenly_spread(bound, spec.num_layers), "none"))
    return variants


def _configs(spec: ModelSpec, variant: Variant, max_positions: int):
    """The variant's config with its pruning record (what `ServingPlan` reads), and its tensors' shapes from a
    meta-device model pruned by the product's own `apply_pruned_structure`."""
    import torch
    from transformers import LlamaForCausalLM

    from optimum_gatenorm.checkpoints.record import PrunedAttentionConfig
    from optimum_gatenorm.checkpoints.structure import apply_pruned_structure

    config = spec.config(max_positions, "eager")
    config._name_or_path = f"{spec.name} (random weights)"
    replacements = {layer: variant.replacement for layer in variant.removed if variant.replacement != "none"}
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    if variant.removed:
        apply_pruned_structure(model, variant.removed, replacements)
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    recorded = copy.deepcopy(config)
    if variant.removed:
        recorded.quantization_config = PrunedAttentionConfig(
            variant.removed, spec.num_layers, attention_replacements=replacements
        )
    return recorded, shapes


def _shard_of(tensor, num_layers: int) -> int:
    """Shard index of a tensor: 0 metadata, 1 model-level, 2 + i layer i's MLP, 2 + L + i layer i's attention."""
    if tensor.layer is None:
        return 1
    return 2 + tensor.layer + (0 if ".ffn_" in tensor.name else num_layers)


def _random_weights(name: str, shape: tuple[int, ...], block: np.ndarray) -> np.ndarray:
    """`shape` float16 values cut from `block` at an offset given by the tensor's name (the same in every variant)."""
    count = math.prod(shape)
    offset = zlib.crc32(name.encode()) % len(block)
    reps = -(-(offset + count) // len(block))
    flat = np.tile(block, reps) if reps > 1 else block
    return flat[offset : offset + count].reshape(shape)


def _write_shard(path: Path, index: int, count: int, tensors: list, arrays: list, plan, gguf) -> None:
    from optimum_gatenorm.exporters.gguf import add_gguf_tensor

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_NO, index)
    writer.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_COUNT, count)
    for tensor, data in zip(tensors, arrays, strict=True):
        add_gguf_tensor(writer, tensor, data, plan, "f16")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_variants(
    spec: ModelSpec, variants: list[Variant], store: Path, max_positions: int, seed: int, gguf, log
) -> int:
    """Writes every variant as a split GGUF whose shards after the first are links into `store`; returns the bytes
    the store holds. Fills each variant's `file`, `file_bytes`, `n_params` and head counts."""
    from optimum_gatenorm.exporters.gguf import gguf_tensors, gguf_writer
    from optimum_gatenorm.exporters.serving import ServingPlan

    num_layers = spec.num_layers
    count = 2 + 2 * num_layers
    block = (np.random.default_rng(seed).standard_normal(BLOCK_VALUES, dtype=np.float32) * 0.02).astype(np.float16)
    written: dict[str, Path] = {}
    store.mkdir(parents=True, exist_ok=True)
    for variant in variants:
        if variant.role == "aa":
            continue
        config, shapes = _configs(spec, variant, max_positions)
        plan = ServingPlan.from_config(config, "gguf")
        tensors = gguf_tensors(plan)
        shards: dict[int, list] = {index: [] for index in range(1, count)}
        for tensor in tensors:
            shards[_shard_of(tensor, num_layers)].append(tensor)
        directory = store.parent / "variants" / variant.label
        directory.mkdir(parents=True, exist_ok=True)
        for index, members in shards.items():
            if index == 1:
                key = "globals"
            elif index < 2 + num_layers:
                key = f"ffn-{index - 2}"
            else:
                layer = index - 2 - num_layers
                key = "empty-{}" if not members else ("attn-{}" if plan.kept[layer] else "linear-{}")
                key = key.format(layer)
            if key not in written:
                arrays = [
                    np.ones(shapes[t.key], dtype=np.float32)
                    if t.kind == "norm"
                    else _random_weights(t.name, shapes[t.key], block)
                    for t in members
                ]
                written[key] = store / f"{key}.gguf"
                _write_shard(written[key], index, count, members, arrays, plan, gguf)
            link = directory / f"model-{index + 1:05d}-of-{count:05d}.gguf"
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(written[key])
        first = directory / f"model-00001-of-{count:05d}.gguf"
        writer = gguf_writer(config, plan, first, "f16")
        writer.add_tokenizer_model("no_vocab")  # llama.cpp makes vocab_size dummy tokens; the timing needs no text
        writer.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_NO, 0)
        writer.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_COUNT, count)
        writer.add_int32(gguf.Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT, len(tensors))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        variant.file = str(first)
        variant.file_bytes = sum(p.stat().st_size for p in directory.iterdir())
        variant.n_params = sum(math.prod(shapes[t.key]) for t in tensors if t.key is not None)
        reader = gguf.GGUFReader(str(first))
        for attribute, suffix in (
            ("head_count", "attention.head_count"),
            ("head_count_kv", "attention.head_count_kv"),
        ):
            field_ = reader.get_field(f"deci.{suffix}")
            if field_ is not None:
                setattr(variant, attribute, [int(field_.parts[i][0]) for i in field_.data])
        log(f"  {variant.label}: {len(tensors)} tensors, {variant.file_bytes / 2**30:.2f} GiB")
    for variant in variants:
        if variant.role == "aa":
            base = variants[0]
            variant.file, variant.file_bytes, variant.n_params = base.file, base.file_bytes, base.n_params
    return sum(p.stat().st_size for p in store.iterdir())


def variant_params(spec: ModelSpec, variant: Variant) -> int:
    """Parameters of a variant: the unpruned model, less k attention sublayers, plus their linear maps."""
    h = spec.hidden_size
    attention = 2 * h * h + 2 * h * spec.num_kv_heads * spec.head_dim + h  # q, k, v, o and the input norm
    linear = h * h + h if variant.replacement == "linear" else 0  # the map and the norm it keeps
    return spec.param_count() - variant.k * (attention - linear)


def estimate_bytes(spec: ModelSpec, variant: Variant, n_ctx: int) -> float:
    """Device memory of one slot: f16 weights (none for the A/A slot: it shares base's), f16 KV cache, a margin."""
    kv = 2 * (spec.num_layers - variant.k) * n_ctx * 2 * spec.num_kv_heads * spec.head_dim
    weights = 0 if variant.role == "aa" else 2 * variant_params(spec, variant)
    return weights + kv + CONTEXT_MARGIN_GIB * 2**30


def fit_memory(spec: ModelSpec, variants: list[Variant], n_ctx: int, budget_gib: float | None):
    """Drops `linear` variants, then pruned ones from the largest k down, until the estimate fits `budget_gib`."""
    kept, dropped = list(variants), []
    if budget_gib is None:
        return kept, dropped, sum(estimate_bytes(spec, v, n_ctx) for v in kept) / 2**30
    order = [v for v in reversed(kept) if v.replacement == "linear"] + [
        v for v in reversed(kept) if v.role == "pruned" and v.replacement == "none"
    ]
    while sum(estimate_bytes(spec, v, n_ctx) for v in kept) / 2**30 > budget_gib and order:
        victim = order.pop(0)
        kept.remove(victim)
        dropped.append({"label": victim.label, "reason": f"does not fit the {budget_gib:.0f} GiB memory budget"})
    return kept, dropped, sum(estimate_bytes(spec, v, n_ctx) for v in kept) / 2**30


# ---------------------------------------------------------------------------------------------------------------
# Timing and summary


def run_driver(binary: Path, variants: list[Variant], args, deadline_s: float, raw: Path, log) -> list[dict]:
    """Runs the driver on every variant's slot; returns its JSON lines (also appended to `raw`)."""
    command = [str(binary)]
    for variant in variants:
        command += ["--slot", f"{variant.label}={variant.file}"]
    command += [
        "--prompts",
        ",".join(map(str, args.prompts)),
        "--gen",
        str(args.gen),
        "--rounds",
        str(args.rounds),
        "--warmup",
        str(args.warmup),
        "--n-gpu-layers",
        "999" if args.device == "cuda" else "0",
        "--threads",
        str(args.threads or os.cpu_count() or 1),
        "--flash-attn",
        args.flash_attn,
        "--deadline-s",
        f"{max(deadline_s, 1.0):.1f}",
    ]
    lines = []
    with open(raw, "w") as out, open(raw.with_suffix(".log"), "w") as err:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True)
        assert process.stdout is not None
        for line in process.stdout:
            out.write(line)
            out.flush()
            record = json.loads(line)
            lines.append(record)
            if record["event"] in ("loaded", "round", "stopped"):
                log("  driver: " + ", ".join(f"{k}={v}" for k, v in record.items() if k not in ("event", "file")))
        code = process.wait()
    if code != 0:
        tail = raw.with_suffix(".log").read_text()[-2000:]
        raise RuntimeError(f"the driver exited with {code}: {tail.strip().splitlines()[-1] if tail.strip() else ''}")
    return lines


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(variants: list[Variant], lines: list[dict]) -> tuple[list[dict], list[dict], int]:
    """Per test and variant: median time, tokens/s, paired per-round speed-up over base (median, range), the
    bound's ideal speed-up and the efficiency; and `linear` against `none` at the same k."""
    times: dict[tuple[str, str], dict[int, float]] = {}
    tokens: dict[str, int] = {}
    for record in lines:
        if record["event"] == "measure" and not record["warmup"]:
            times.setdefault((record["test"], record["slot"]), {})[record["round"]] = record["seconds"]
            tokens[record["test"]] = record["n_tokens"]
    rounds = {r["round"] for r in lines if r["event"] == "measure" and not r["warmup"]}
    by_label = {v.label: v for v in variants}
    bound = next((v for v in variants if v.role == "bound"), None)
    rows, linear_rows = [], []
    for test in sorted(tokens, key=lambda t: (t.startswith("tg"), len(t), t)):
        base = times.get((test, "base"), {})
        base_median = _median(list(base.values()))
        t_attn = None
        if bound is not None and base_median is not None and (test, bound.label) in times:
            t_attn = (base_median - _median(list(times[(test, bound.label)].values()))) / bound.k
        for variant in sorted(variants, key=lambda v: (ROLE_ORDER[v.role], v.k, v.replacement == "linear")):
            series = times.get((test, variant.label))
            if not series:
                continue
            ratios = [base[r] / series[r] for r in series if r in base and series[r] > 0]
            median_s = _median(list(series.values()))
            ideal = None
            if t_attn is not None and variant.k and base_median - variant.k * t_attn > 0:
                ideal = base_median / (base_median - variant.k * t_attn)
            speedup = _median(ratios) if variant.role != "base" else None
            rows.append(
                {
                    "test": test,
                    "variant": variant.label,
                    "role": variant.role,
                    "k": variant.k,
                    "replacement": variant.replacement,
                    "median_s": median_s,
                    "tokens_per_s": tokens[test] / median_s if median_s else None,
                    "speedup": speedup,
                    "speedup_min": min(ratios) if ratios and variant.role != "base" else None,
                    "speedup_max": max(ratios) if ratios and variant.role != "base" else None,
                    "ideal": ideal,
                    "efficiency": speedup / ideal if speedup and ideal else None,
                    "rounds": len(series),
                }
            )
        for variant in variants:
            if variant.replacement != "linear":
                continue
            none = by_label.get(f"k{variant.k}")
            if none is None or (test, none.label) not in times or (test, variant.label) not in times:
                continue
            a, b = times[(test, none.label)], times[(test, variant.label)]
            ratios = [a[r] / b[r] for r in b if r in a]
            linear_rows.append(
                {
                    "test": test,
                    "k": variant.k,
                    "linear_vs_none": _median(ratios),
                    "min": min(ratios),
                    "max": max(ratios),
                }
            )
    return rows, linear_rows, len(rounds)


def cross_check(binary: str, variants: list[Variant], args, summary: list[dict], log) -> dict:
    """llama.cpp's own llama-bench on base and the middle pruned variant: its tokens/s against the driver's."""
    chosen = [v for v in variants if v.role == "base"]
    pruned = [v for v in variants if v.role == "pruned" and v.replacement == "none"]
    if pruned:
        chosen.append(pruned[len(pruned) // 2])
    prompt = args.prompts[0]
    rows = []
    for variant in chosen:
        command = [binary, "-m", variant.file, "-p", str(prompt), "-n", str(args.gen), "-r", "3", "-o", "json"]
        command += ["-ngl", "999" if args.device == "cuda" else "0", "-t", str(args.threads or os.cpu_count() or 1)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
        for entry in json.loads(result.stdout):
            test = f"pp{entry['n_prompt']}" if entry["n_prompt"] else f"tg{entry['n_gen']}"
            ours = next((r for r in summary if r["test"] == test and r["variant"] == variant.label), None)
            rows.append(
                {
                    "variant": variant.label,
                    "test": test,
                    "llama_bench_tokens_per_s": entry["avg_ts"],
                    "driver_tokens_per_s": ours["tokens_per_s"] if ours else None,
                    "ratio": ours["tokens_per_s"] / entry["avg_ts"] if ours and entry["avg_ts"] else None,
                }
            )
        log(
            f"  llama-bench {variant.label}: "
            + ", ".join(
                f"{r['test']} {r['llama_bench_tokens_per_s']:.1f} t/s" for r in rows if r["variant"] == variant.label
            )
        )
    return {"binary": binary, "rows": rows}


# ---------------------------------------------------------------------------------------------------------------
# Outputs


def machine_info(args) -> dict:
    """The harness's record of the machine (date, platform, torch, git commit, the GPU), plus llama.cpp's version and
    what `nvidia-smi` says of the GPU and its driver."""
    info = _harness_machine_info(args.device)
    info["llama_cpp_python"] = _installed_llama_cpp_version()
    if args.device == "cuda":
        try:
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,compute_cap", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["nvidia_smi"] = None
    return info


def write_json(study: dict, out_dir: Path) -> None:
    path = out_dir / "gpu_serving.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(study, indent=1, default=str) + "\n")
    tmp.replace(path)


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def write_markdown(study: dict, out_dir: Path) -> None:
    lines = [
        "# Served speed on llama.cpp: attention-pruned GGUFs of real shapes",
        "",
        f"Machine: {study['machine'].get('nvidia_smi') or study['machine']['platform']}; device `{study['machine']['device']}`;"
        f" llama.cpp of llama-cpp-python {study['machine']['llama_cpp_python']}; {study['machine']['date_utc']}.",
        f"Command: `{study['command']}`",
        "",
        "Speed-up = unpruned time / pruned time per round, median over rounds (range); ideal = the bound from the "
        "measured time of one attention sublayer (k = L-1 ablation); efficiency = speed-up / ideal. `base-aa` is the "
        "A/A control (the unpruned model in a second slot).",
    ]
    for shape in study["shapes"]:
        lines += ["", f"## {shape['shape']['name']} ({shape['shape']['note']})", ""]
        if shape.get("skipped"):
            lines.append(f"Skipped: {shape['skipped']}")
            continue
        lines.append(
            f"{shape['rounds']} rounds; store {shape['store_bytes'] / 2**30:.1f} GiB written in {shape['write_s']:.0f} s;"
            f" structure checked: {shape['structure_ok']}."
        )
        for skipped in shape["skipped_variants"]:
            lines.append(f"Not timed: {skipped['label']} ({skipped['reason']}).")
        lines += [
            "",
            "| test | variant | k | tokens/s | speed-up (range) | ideal | efficiency |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in shape["summary"]:
            range_ = f" ({row['speedup_min']:.2f}-{row['speedup_max']:.2f})" if row["speedup_min"] is not None else ""
            speed = "1 (reference)" if row["role"] == "base" else _x(row["speedup"]) + range_
            lines.append(
                f"| {row['test']} | {row['variant']} | {row['k']} | {row['tokens_per_s']:.1f} | {speed} | "
                f"{_x(row['ideal'])} | {_percent(row['efficiency'])} |"
            )
        if shape["linear_vs_none"]:
            lines += ["", "| test | k | linear / none speed (range) |", "|---|---|---|"]
            for row in shape["linear_vs_none"]:
                lines.append(
                    f"| {row['test']} | {row['k']} | {row['linear_vs_none']:.3f} ({row['min']:.3f}-{row['max']:.3f}) |"
                )
        if shape["llama_bench"].get("rows"):
            lines += [
                "",
                "| llama-bench check | test | llama-bench tokens/s | driver tokens/s | driver / llama-bench |",
            ]
            lines.append("|---|---|---|---|---|")
            for row in shape["llama_bench"]["rows"]:
                ours = "n/a" if row["driver_tokens_per_s"] is None else f"{row['driver_tokens_per_s']:.1f}"
                ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.3f}"
                lines.append(
                    f"| {row['variant']} | {row['test']} | {row['llama_bench_tokens_per_s']:.1f} | {ours} | {ratio} |"
                )
    (out_dir / "gpu_serving.md").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    try:
        values = sorted(int(item) for item in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("values must be positive")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    shapes = {**MODELS, **CPU_MODELS, **TINY_MODELS}
    parser = argparse.ArgumentParser(
        description="Served speed on llama.cpp (CUDA or CPU) of attention-pruned GGUFs of real LLaMA shapes: "
        "prefill and decode speed-up, A/A control, measured bound (module docstring).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument(
        "--shapes",
        default=None,
        help=f"comma-separated, in order, from {', '.join(shapes)} "
        "(default: llama3-8b,llama2-13b on cuda, tiny-gqa on cpu)",
    )
    parser.add_argument("--replacements", default="none,linear", help="for the pruned variants: none, linear or both")
    parser.add_argument("--prompts", type=_int_list, default=[512, 4096], help="prompt lengths timed")
    parser.add_argument("--gen", type=int, default=128, help="tokens generated per generation test")
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds (after --warmup)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads (0: all cores)")
    parser.add_argument("--flash-attn", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--budget-s", type=float, default=540.0, help="stop starting work after this many seconds")
    parser.add_argument(
        "--memory-gib", type=float, default=None, help="device memory budget (default: 92%% of the GPU's; none on cpu)"
    )
    parser.add_argument(
        "--llama-cpp",
        default=None,
        help="llama.cpp source tree (default: $LLAMA_CPP_SOURCE, else the llama-cpp-python sdist)",
    )
    parser.add_argument(
        "--lib-dir",
        default=None,
        help="a folder with a built libllama to time against, or 'build' (cpu default: llama-cpp-python's own)",
    )
    parser.add_argument(
        "--build-dir", default=None, help="CMake build directory, kept for a second run (default: in --work-dir)"
    )
    parser.add_argument("--cuda-arch", default=None, help="CUDA architecture (default: the GPU's, from nvidia-smi)")
    parser.add_argument(
        "--llama-bench", default=None, help="'build' (with the CUDA build), a llama-bench binary, or 'off'"
    )
    parser.add_argument(
        "--work-dir",
        default=None,
        help="where the GGUF store goes (default: /dev/shm if it has room, else a temp dir)",
    )
    parser.add_argument("--output-dir", default=str(BENCH_DIR / "gpu_serving"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-files", action="store_true", help="keep the GGUF store and variants in --work-dir")
    parser.add_argument(
        "--min-shape-s",
        type=float,
        default=None,
        help="start a shape only with this much budget left (cuda 150, cpu 5)",
    )
    parser.add_argument(
        "--plan-only", action="store_true", help="print variants, file and memory sizes; write nothing"
    )
    parser.add_argument(
        "--build-only", action="store_true", help="build llama.cpp and the driver into --build-dir, then exit"
    )
    parser.add_argument(
        "--prepare-carry",
        metavar="DIR",
        default=None,
        help="extract the llama.cpp source the GPU machine builds into DIR/llama.cpp, then exit",
    )
    args = parser.parse_args(argv)
    names = (
        args.shapes.split(",")
        if args.shapes
        else (["llama3-8b", "llama2-13b"] if args.device == "cuda" else ["tiny-gqa"])
    )
    unknown = [n for n in names if n not in shapes]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; choose from {', '.join(shapes)}")
    args.specs = [shapes[n] for n in names]
    args.replacement_list = [r.strip() for r in args.replacements.split(",") if r.strip()]
    if (
        not args.replacement_list
        or set(args.replacement_list) - {"none", "linear"}
        or "none" not in args.replacement_list
    ):
        parser.error("--replacements takes none or none,linear (the linear variants are compared with none)")
    if args.llama_bench is None:
        args.llama_bench = "build" if args.device == "cuda" else "off"
    return args


def _work_dir(arg: str | None, needed: int) -> Path:
    if arg:
        return Path(arg)
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 1.2 * needed:
        return Path(tempfile.mkdtemp(prefix="gatenorm-serving-", dir=shm))
    return Path(tempfile.mkdtemp(prefix="gatenorm-serving-"))


def _store_bytes(spec: ModelSpec, variants: list[Variant]) -> int:
    """Bytes of a shape's store: one unpruned model in f16 and every distinct linear map."""
    linear_layers = {layer for v in variants if v.replacement == "linear" for layer in v.removed}
    return 2 * (spec.param_count() + len(linear_layers) * spec.hidden_size**2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.prepare_carry:
        return prepare_carry(Path(args.prepare_carry))
    clock = Clock(args.budget_s)
    n_ctx = args.prompts[-1] + args.gen
    plans = []
    for spec in args.specs:
        variants = plan_variants(spec, args.replacement_list)
        budget = args.memory_gib
        if budget is None and args.device == "cuda":
            budget = 0.92 * _gpu_memory_gib()
        kept, dropped, estimate = fit_memory(spec, variants, n_ctx, budget)
        plans.append((spec, kept, dropped, estimate))
        memory = f"~{estimate:.1f} GiB on the GPU, " if args.device == "cuda" else ""
        clock.log(
            f"{spec.name}: {len(kept)} slots ({', '.join(v.label for v in kept)}), "
            f"{memory}store ~{_store_bytes(spec, kept) / 2**30:.2f} GiB"
            + (f"; not timed: {', '.join(d['label'] for d in dropped)}" if dropped else "")
        )
    if args.plan_only:
        return 0

    try:
        import gguf  # noqa: F401
    except ImportError:
        source = llama_cpp_source(args.llama_cpp, need_build=True)  # gguf-py is in the build subset
        sys.path.insert(0, str(source / "gguf-py"))
    import gguf

    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = _work_dir(args.work_dir, max(_store_bytes(s, v) for s, v, _, _ in plans))
    work.mkdir(parents=True, exist_ok=True)
    study = {
        "schema": SCHEMA,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(args),
        "settings": {k: v for k, v in vars(args).items() if k not in ("specs",)},
        "work_dir": str(work),
        "build": {},
        "shapes": [],
    }

    # 1. llama.cpp and the driver
    if args.lib_dir == "build":
        lib_dir = None
    else:
        lib_dir = Path(args.lib_dir) if args.lib_dir else (wheel_lib_dir() if args.device == "cpu" else None)
    need_build = lib_dir is None
    source = llama_cpp_source(args.llama_cpp, need_build=need_build)
    llama_bench = args.llama_bench if args.llama_bench not in ("build", "off") else None
    if need_build:
        build_dir = Path(args.build_dir) if args.build_dir else work / "build"
        arch = args.cuda_arch or (_cuda_arch() if args.device == "cuda" else "")
        clock.log(f"building llama.cpp ({args.device}{', sm_' + arch if arch else ''}) from {source} in {build_dir}")
        build_log = out_dir / "build.log"
        build_log.write_text("")
        try:
            build = cmake_build(source, build_dir, args.device, arch, args.llama_bench == "build", build_log)
        except subprocess.CalledProcessError as error:
            errors = [line for line in build_log.read_text().splitlines() if "error" in line.lower()]
            raise SystemExit(
                f"gpu_serving_study: the llama.cpp build failed ({' '.join(error.cmd[:3])}); "
                f"{errors[0].strip() if errors else 'no error line'}; the whole log: {build_log}"
            ) from None
        study["build"]["cmake"] = build
        lib_dir = Path(build["lib_dir"])
        llama_bench = build["llama_bench"] or llama_bench
        clock.log(f"built in {build['seconds']:.0f} s")
    binary = (Path(args.build_dir) if args.build_dir else work) / "gpu_serving_bench"
    binary.parent.mkdir(parents=True, exist_ok=True)
    study["build"]["driver"] = compile_driver(source, lib_dir, binary)
    study["build"]["lib_dir"] = str(lib_dir)
    clock.log(f"driver compiled against {lib_dir}")
    write_json(study, out_dir)
    if args.build_only:
        clock.log(f"built: {binary}; llama-bench: {llama_bench}")
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
        return 0

    # 2. each shape: files, timing, summary
    for spec, variants, dropped, estimate in plans:
        result = ShapeResult(shape=asdict(spec), skipped_variants=dropped, memory_estimate_gib=round(estimate, 1))
        study["shapes"].append(result.__dict__)
        needed_s = args.min_shape_s if args.min_shape_s is not None else (150.0 if args.device == "cuda" else 5.0)
        if clock.left() < needed_s:
            result.skipped = f"time budget: {clock.left():.0f} s left of {args.budget_s:.0f} s"
            clock.log(f"{spec.name}: skipped ({result.skipped})")
            write_json(study, out_dir)
            continue
        store = work / spec.name / "store"
        clock.log(f"{spec.name}: writing {len(variants)} variants into {store}")
        started = time.monotonic()
        result.store_bytes = write_variants(spec, variants, store, n_ctx, args.seed, gguf, clock.log)
        result.write_s = round(time.monotonic() - started, 1)
        result.store_dir = str(store)
        result.variants = [asdict(v) for v in variants]
        clock.log(f"{spec.name}: store {result.store_bytes / 2**30:.2f} GiB in {result.write_s:.0f} s; timing")
        reserve = 45.0 if llama_bench and args.device == "cuda" else 5.0
        try:
            lines = run_driver(
                binary, variants, args, clock.left() - reserve, out_dir / f"{spec.name}.jsonl", clock.log
            )
        except RuntimeError as error:
            result.skipped = f"driver failed: {error}"
            clock.log(f"{spec.name}: {result.skipped}")
            write_json(study, out_dir)
            continue
        result.driver = next((r for r in reversed(lines) if r["event"] in ("done", "stopped")), {})
        result.loaded = [r for r in lines if r["event"] in ("loaded", "device")]
        by_label = {v.label: v for v in variants}
        result.structure_ok = all(
            r["n_params"] == by_label[r["slot"]].n_params and r["n_layer"] == spec.num_layers
            for r in lines
            if r["event"] == "loaded"
        ) and len([r for r in lines if r["event"] == "loaded"]) == len(variants)
        result.summary, result.linear_vs_none, result.rounds = summarize(variants, lines)
        if llama_bench and clock.left() > reserve - 5:
            result.llama_bench = cross_check(llama_bench, variants, args, result.summary, clock.log)
        write_json(study, out_dir)
        write_markdown(study, out_dir)
        if not args.keep_files:
            shutil.rmtree(work / spec.name, ignore_errors=True)
        clock.log(f"{spec.name}: done ({result.rounds} rounds)")
    write_markdown(study, out_dir)
    if not args.work_dir and not args.keep_files:
        shutil.rmtree(work, ignore_errors=True)
    clock.log(f"wrote {out_dir / 'gpu_serving.json'} and {out_dir / 'gpu_serving.md'}")
    return 0


def _gpu_memory_gib() -> float:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"], capture_output=True, text=True
        ).stdout.split()
        return float(out[0]) / 1024 if out else 139.0
    except (OSError, ValueError):
        return 139.0  # one H200, for --plan-only where no GPU is present


if __name__ == "__main__":
    sys.exit(main())
