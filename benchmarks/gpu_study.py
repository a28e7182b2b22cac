"""GPU speed study: prefill and decode speed-up of attention-pruned LLaMA models, against a measured bound.

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_study.py [--budget-s 420] [--output-dir DIR]
    python benchmarks/gpu_study.py --tiny --device cpu --output-dir DIR      # the same code path, seconds on CPU
    python benchmarks/gpu_study.py --plan-only --device cpu --output-dir DIR # real shapes on the meta device

Models of real shapes with random weights (speed does not depend on the values), built directly on the device in
bf16: LLaMA-2-13B (the paper's model: MHA, 40 layers) and Llama-3-8B (GQA, 32 layers). For each, k attention
sublayers are removed with the project's own `optimum_gatenorm.checkpoints.structure.apply_pruned_structure`, k in {0, L/8,
L/4, 0.4L} rounded, plus k = L-1 (the bound probe). Every pruned variant is a second model object built on the
meta device that shares the baseline's parameter tensors, so all variants live on the GPU at once and runs are
interleaved (A B C ... A B C ...), warm-up excluded.

Per cell (batch x context): prefill = one forward over the prompt with `use_cache=True`; decode = time per token
of N greedy single-token steps on that KV cache (fixed N, no EOS), in HF eager mode (launch-bound at small batch).
The bound comes from timed ablation on the same backend: t_attn = (T(0) - T(L-1)) / (L-1) is the measured time of
one attention sublayer, ideal(k) = T(0) / (T(0) - k t_attn) the speed-up if the removed sublayers' time vanished
and nothing else changed, efficiency = measured / ideal.

Writes `gpu_study.json` after every cell (a kill still leaves results), then `gpu_study.md` and `gpu_study.png`.
A time budget (`--budget-s`, counted from the start of `main()`, after importing torch) skips the remaining cells
instead of overrunning; skipped cells are recorded with their reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import importlib
import importlib.util
import inspect
import json
import math
import os
import signal
import statistics
import sys
import time
import traceback
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers
from harness.clock import Clock
from harness.machine import machine_info
from harness.shapes import MODELS, TINY_MODELS, ModelSpec, evenly_spread
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM


REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "optimum_gatenorm.gpu_study/1"
# transformers 5.24 renamed forward's `past_key_values` to `cache` (the old name goes in 5.40); this script may run
# without the package installed, so it does not use optimum_gatenorm.compat.cache_kwargs.
CACHE_KWARG = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"
DECODE_MODE = "eager (launch-bound at small batch)"
LAYER_CHOICE = (
    "removed layers are spread evenly over layers 1..L-1 (layer 0 kept); all decoder layers of a model have the "
    "same shapes, so which layers go does not matter for speed"
)
PAPER_CLAIM = {
    "text": "up to 1.30x throughput, LLaMA-13B, 8-16 of 40 attention sublayers removed (arXiv:2512.20636)",
    "model": "LLaMA-13B",
    "removed": [8, 16],
    "of_layers": 40,
    "max_speedup": 1.30,
}
NOTES = (
    "random weights: output quality is irrelevant to speed",
    "prefill: one forward over the prompt with use_cache=True and logits_to_keep=1 (as generate does)",
    "decode: greedy argmax steps on a transformers DynamicCache, which concatenates (copies) every kept layer's K/V "
    "at each step; removing a sublayer removes that work too",
    "CUDA graphs not used: capturing HF's eager decode step (host-side mask and cache bookkeeping) could not be "
    "verified without a GPU before this run; eager is what model.generate runs by default",
    "variants share the baseline's weight tensors (meta build + load_state_dict(assign=True)); only one KV cache "
    "exists at a time; each round runs every variant once, the order rotating by one each round",
    "k0-clone is the pruning path with nothing removed: its speed-up is an A/A control of the noise",
)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class VariantInfo:
    """One pruned structure of a model, checked after building it.

    Args:
        label: `base` (the model as built), `k0-clone` (the pruning path with nothing removed: an A/A control)
            or `k<k>`; the largest k is the bound probe (k = L-1).
        k: Attention sublayers removed.
        removed_layers: Their indices.
        attention_modules: Decoder layers that still have an attention module (must be L - k).
        input_norms: Decoder layers that still have their pre-attention norm (must be L - k).
        layer_idx_ok: Kept attention modules are numbered 0..L-k-1 (the KV-cache slots).
        shares_base_weights: Every parameter tensor is one of the baseline's (no copy).
        structure_ok: All of the above hold.
    """

    label: str
    k: int
    removed_layers: list[int]
    attention_modules: int = 0
    input_norms: int = 0
    layer_idx_ok: bool = False
    shares_base_weights: bool = False
    structure_ok: bool = False


@dataclass
class VariantTiming:
    """Raw timings of one variant in one cell (one entry per timed round, warm-up excluded).

    Args:
        label: The variant's label.
        k: Attention sublayers removed.
        prefill_s: Seconds of one forward over the whole prompt, per round.
        decode_s_per_token: Seconds per greedy decode step, per round.
        cache_layers: Layers of the KV cache after prefill (`len(cache.layers)`).
        cache_layers_filled: Cache layers holding keys after prefill (must be L - k).
        cache_seq_len: Cache length after decoding (must be context + decode steps).
    """

    label: str
    k: int
    prefill_s: list[float] = field(default_factory=list)
    decode_s_per_token: list[float] = field(default_factory=list)
    cache_layers: int | None = None
    cache_layers_filled: int | None = None
    cache_seq_len: int | None = None


@dataclass
class CellResult:
    """One (model, batch, context) cell.

    Args:
        model: Model name.
        batch: Batch size.
        context: Prompt length (tokens).
        status: `planned`, `pending`, `ok`, `partial` (budget cut the rounds short), `skipped` or `error`.
        reason: Why a cell was skipped, cut short or failed.
        est_memory_gib: Estimated peak memory (weights + KV cache + prefill activations + overhead).
        peak_memory_gib: Measured peak allocated memory (CUDA only).
        decode_steps: Greedy steps per decode measurement.
        warmup_rounds: Untimed rounds (every variant once, with 2 decode steps).
        rounds_planned: Timed rounds asked for.
        rounds_done: Timed rounds completed.
        decode_mode: How decode ran.
        wall_s: Wall time of the cell.
        variants: Raw timings per variant.
        error: Traceback tail when the cell failed.
    """

    model: str
    batch: int
    context: int
    status: str = "pending"
    reason: str = ""
    est_memory_gib: float = 0.0
    peak_memory_gib: float | None = None
    decode_steps: int = 0
    warmup_rounds: int = 0
    rounds_planned: int = 0
    rounds_done: int = 0
    decode_mode: str = DECODE_MODE
    wall_s: float = 0.0
    variants: list[VariantTiming] = field(default_factory=list)
    error: str = ""


@dataclass
class SummaryRow:
    """Speed-up of one variant in one cell, with the measured bound.

    Args:
        model: Model name.
        batch: Batch size.
        context: Prompt length.
        k: Attention sublayers removed.
        label: Variant label.
        rounds: Timed rounds behind the medians.
        prefill_speedup: median T_prefill(base) / median T_prefill(k).
        prefill_speedup_range: [min, max] of the per-round paired ratios.
        prefill_bound: ideal(k) = T0 / (T0 - k t_attn) from the timed ablation (k = L-1).
        prefill_efficiency: prefill_speedup / prefill_bound.
        decode_speedup: The same for time per decoded token.
        decode_speedup_range: [min, max] of the per-round paired ratios.
        decode_bound: ideal(k) for decode.
        decode_efficiency: decode_speedup / decode_bound.
        bound_probe: This row is the k = L-1 probe (efficiency 1 by construction).
    """

    model: str
    batch: int
    context: int
    k: int
    label: str
    rounds: int
    prefill_speedup: float
    prefill_speedup_range: list[float]
    prefill_bound: float
    prefill_efficiency: float
    decode_speedup: float
    decode_speedup_range: list[float]
    decode_bound: float
    decode_efficiency: float
    bound_probe: bool = False


@dataclass
class ModelRecord:
    """What was built for one model.

    Args:
        name: Model name.
        spec: The shape.
        config: The `LlamaConfig` as a dict (non-default fields).
        param_count: Parameters of the baseline as built.
        param_count_expected: Parameters computed from the shape.
        build_s: Seconds to build the baseline (random init on the device).
        variants_build_s: Seconds to build every pruned variant.
        extra_memory_gib_for_variants: Allocated memory added by the variants (CUDA; ~0 when weights are shared).
        attn_implementation: The attention implementation the model reports.
        variants: Structure of every variant.
        status: `pending`, `built`, `skipped` or `error`.
        error: Traceback tail when building failed.
    """

    name: str
    spec: dict
    config: dict = field(default_factory=dict)
    param_count: int = 0
    param_count_expected: int = 0
    build_s: float = 0.0
    variants_build_s: float = 0.0
    extra_memory_gib_for_variants: float | None = None
    attn_implementation: str = ""
    variants: list[VariantInfo] = field(default_factory=list)
    status: str = "pending"
    error: str = ""


@dataclass
class Study:
    """Everything the study writes to `gpu_study.json`."""

    schema: str
    status: str
    started: str
    machine: dict
    settings: dict
    pruning_import: dict
    layer_choice: str = LAYER_CHOICE
    paper_claim: dict = field(default_factory=lambda: dict(PAPER_CLAIM))
    bound_definition: str = (
        "t_attn = (T(k=0) - T(k=L-1)) / (L-1) from timed ablation on this backend (clamped at 0; raw value kept); "
        "ideal(k) = T0 / (T0 - k t_attn); efficiency = measured speed-up / ideal (<= 1 up to noise)"
    )
    notes: list[str] = field(default_factory=lambda: list(NOTES))
    elapsed_s: float = 0.0
    models: list[ModelRecord] = field(default_factory=list)
    cells: list[CellResult] = field(default_factory=list)
    bounds: list[dict] = field(default_factory=list)
    summary: list[SummaryRow] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------------
# Environment


def import_pruning(mode: str) -> tuple[Callable, dict]:
    """The project's `apply_pruned_structure`, and a record of how it was imported.

    `package` imports `optimum_gatenorm.checkpoints.structure` normally (running the package `__init__`). `file` loads
    `optimum_gatenorm/checkpoints/structure.py` (and the modules it imports relatively) under a bare package object, without
    the package `__init__`, for a machine where an `__init__` import is unavailable. `auto` tries `package`, then
    `file`, recording the error.

    Raises:
        ImportError: When neither way works.
    """
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    record: dict = {"requested": mode, "package_error": None}
    if mode in ("auto", "package"):
        try:
            from optimum_gatenorm.checkpoints.structure import apply_pruned_structure

            record["mode"] = "package"
            record["module_file"] = sys.modules["optimum_gatenorm.checkpoints.structure"].__file__
            return apply_pruned_structure, record
        except Exception as err:  # any import-time failure of the package __init__
            if mode == "package":
                raise
            record["package_error"] = f"{type(err).__name__}: {err}"
            record["package_traceback"] = traceback.format_exc(limit=4)[-2000:]
    for name in [m for m in sys.modules if m == "optimum_gatenorm" or m.startswith("optimum_gatenorm.")]:
        del sys.modules[name]
    package = types.ModuleType("optimum_gatenorm")
    package.__path__ = [str(REPO_ROOT / "optimum_gatenorm")]
    sys.modules["optimum_gatenorm"] = package
    module = importlib.import_module("optimum_gatenorm.checkpoints.structure")
    record["mode"] = "file (optimum_gatenorm/checkpoints/structure.py without the package __init__)"
    record["module_file"] = module.__file__
    return module.apply_pruned_structure, record


def device_memory_gib(device: str, override: float | None) -> float:
    if override is not None:
        return override
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / 2**30
    if device == "cuda":
        return 139.0  # H200, for --plan-only where no GPU is present
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return 8.0


def estimate_memory_gib(spec: ModelSpec, batch: int, context: int, steps: int, dtype_bytes: int) -> float:
    """Peak memory of one cell: weights, KV cache (+1 layer copied by `torch.cat`), prefill activations, overhead.

    Variants share the weights and only one KV cache exists at a time, so the baseline's cell is the peak.
    """
    weights = spec.param_count() * dtype_bytes
    kv_per_token = 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * dtype_bytes
    kv = kv_per_token * batch * (context + steps) * (1 + 1 / spec.num_layers)
    activations = 1.25 * batch * context * (8 * spec.hidden_size + 4 * spec.intermediate_size) * dtype_bytes
    logits = 2 * batch * spec.vocab_size * 4
    return (weights + kv + activations + logits) / 2**30 + 2.0


# ----------------------------------------------------------------------------------------------------------------
# Models


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_base(config: LlamaConfig, device: str, dtype: torch.dtype) -> LlamaForCausalLM:
    """Random weights, initialised directly on the device in `dtype` (no CPU init, no copy)."""
    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):
        model = LlamaForCausalLM(config)
    return model.eval()


def _borrow_meta_tensors(variant: torch.nn.Module, base: torch.nn.Module) -> None:
    """Non-persistent buffers (rotary `inv_freq`) and tensor attributes that `load_state_dict` does not fill."""
    for name, buffer in list(variant.named_buffers()):
        if buffer.is_meta:
            module_name, _, attr = name.rpartition(".")
            variant.get_submodule(module_name)._buffers[attr] = base.get_buffer(name)
    for module_name, module in variant.named_modules():
        for attr, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and value.is_meta:
                setattr(module, attr, getattr(base.get_submodule(module_name), attr))


def build_variant(
    base: LlamaForCausalLM, config: LlamaConfig, layers: list[int], apply_pruned_structure: Callable
) -> LlamaForCausalLM:
    """A pruned model object whose parameters are the baseline's tensors (no copy, no extra memory).

    Built on the meta device, pruned with the project's `apply_pruned_structure`, then given the baseline's
    tensors for the parameters it kept (`load_state_dict(..., assign=True, strict=True)`).
    """
    with torch.device("meta"):
        variant = LlamaForCausalLM(config)
    apply_pruned_structure(variant, layers)
    state = base.state_dict()
    variant.load_state_dict({name: state[name] for name in variant.state_dict()}, assign=True, strict=True)
    _borrow_meta_tensors(variant, base)
    return variant.eval()


def inspect_variant(info: VariantInfo, model: LlamaForCausalLM, base: LlamaForCausalLM, num_layers: int) -> None:
    layers = model.model.layers
    with_attention = [i for i, layer in enumerate(layers) if hasattr(layer, "self_attn")]
    info.attention_modules = len(with_attention)
    info.input_norms = sum(hasattr(layer, "input_layernorm") for layer in layers)
    info.layer_idx_ok = [layers[i].self_attn.layer_idx for i in with_attention] == list(range(len(with_attention)))
    # assign=True wraps each tensor in a new Parameter; sharing means the same storage, shape and dtype
    base_tensors = {(p.data_ptr(), tuple(p.shape), p.dtype) for p in base.parameters()}
    info.shares_base_weights = all((p.data_ptr(), tuple(p.shape), p.dtype) in base_tensors for p in model.parameters())
    removed = [i for i in range(num_layers) if i not in with_attention]
    info.structure_ok = (
        info.attention_modules == num_layers - info.k
        and info.input_norms == num_layers - info.k
        and info.layer_idx_ok
        and info.shares_base_weights
        and removed == info.removed_layers
    )


def cache_layer_counts(cache) -> tuple[int, int]:
    """(layers, layers holding keys) of a transformers cache (4.57 and 5.x `layers`; older `key_cache`)."""
    if hasattr(cache, "layers"):
        layers = list(cache.layers)
        filled = sum(getattr(layer, "keys", None) is not None and layer.keys.numel() > 0 for layer in layers)
        return len(layers), filled
    keys = list(cache.key_cache)
    return len(keys), sum(k is not None and k.numel() > 0 for k in keys)


# ----------------------------------------------------------------------------------------------------------------
# Measurement


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure_once(model, ids: torch.Tensor, steps: int, device: str) -> tuple[float, float, tuple[int, int], int]:
    """(prefill s, decode s per token, cache layer counts after prefill, cache length after decode)."""
    cache = DynamicCache()
    synchronize(device)
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{CACHE_KWARG: cache})
    synchronize(device)
    prefill = time.perf_counter() - t0
    cache = getattr(out, "cache", None) or out.past_key_values
    counts = cache_layer_counts(cache)
    token = out.logits[:, -1:].argmax(-1)
    del out
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = model(input_ids=token, use_cache=True, **{CACHE_KWARG: cache})
        token = out.logits[:, -1:].argmax(-1)
    synchronize(device)
    decode = (time.perf_counter() - t0) / max(steps, 1)
    return prefill, decode, counts, cache.get_seq_length()


def run_cell(
    cell: CellResult,
    variants: list[tuple[VariantInfo, LlamaForCausalLM]],
    vocab_size: int,
    args: argparse.Namespace,
    clock: Clock,
    soft_deadline: float,
) -> None:
    """Warm-up round, then timed rounds; every round runs each variant once, the order rotating each round."""
    device = args.device
    start = time.perf_counter()
    cell.decode_steps, cell.warmup_rounds, cell.rounds_planned = args.decode_steps, args.warmup, args.runs
    cell.variants = [VariantTiming(info.label, info.k) for info, _ in variants]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    generator = torch.Generator(device="cpu").manual_seed(cell.batch * 100003 + cell.context)
    ids = torch.randint(0, vocab_size, (cell.batch, cell.context), generator=generator).to(device)
    gc.collect()
    gc.disable()
    try:
        round_s = 0.0
        for _ in range(args.warmup):
            t0 = time.perf_counter()
            estimate = 0.0
            for _info, model in variants:
                prefill, decode, _, _ = measure_once(model, ids, min(2, args.decode_steps), device)
                estimate += prefill + args.decode_steps * decode
            round_s = max(estimate, time.perf_counter() - t0)
        for index in range(args.runs):
            now = time.perf_counter()
            if now + round_s > clock.deadline:
                cell.reason = f"time budget: stopped before round {index + 1} (~{round_s:.1f}s per round)"
                break
            if index > 0 and now + round_s > soft_deadline:
                cell.reason = f"model's share of the time budget: stopped after {index} rounds"
                break
            t0 = time.perf_counter()
            order = list(range(len(variants)))
            order = order[index % len(order) :] + order[: index % len(order)]
            for position in order:
                _info, model = variants[position]
                prefill, decode, counts, seq_len = measure_once(model, ids, args.decode_steps, device)
                timing = cell.variants[position]
                timing.prefill_s.append(prefill)
                timing.decode_s_per_token.append(decode)
                timing.cache_layers, timing.cache_layers_filled = counts
                timing.cache_seq_len = seq_len
            round_s = time.perf_counter() - t0
            cell.rounds_done += 1
            gc.collect()  # outside the timed region; collection is off inside it
    finally:
        gc.enable()
        del ids
        if device == "cuda":
            cell.peak_memory_gib = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            torch.cuda.empty_cache()
        cell.wall_s = round(time.perf_counter() - start, 2)
    if cell.rounds_done == 0:
        cell.status = "skipped"
    elif cell.rounds_done < cell.rounds_planned:
        cell.status = "partial"
    else:
        cell.status = "ok"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _ratios(base: list[float], other: list[float]) -> list[float]:
    pairs = [b / o for b, o in zip(base, other, strict=False) if o > 0]
    return [round(min(pairs), 4), round(max(pairs), 4)] if pairs else []


def summarize(cell: CellResult, num_layers: int) -> tuple[dict, list[SummaryRow]]:
    """The measured bound of a cell and one summary row per variant."""
    timings = {t.label: t for t in cell.variants}
    base = timings["base"]
    probe = max(cell.variants, key=lambda t: t.k)
    bound: dict = {"model": cell.model, "batch": cell.batch, "context": cell.context, "probe_k": probe.k}
    t_attn = {}
    for phase, attr in (("prefill", "prefill_s"), ("decode", "decode_s_per_token")):
        t0, t_probe = _median(getattr(base, attr)), _median(getattr(probe, attr))
        raw = (t0 - t_probe) / max(probe.k, 1)
        t_attn[phase] = max(raw, 0.0)
        bound[phase] = {
            "T0_s": t0,
            "T_probe_s": t_probe,
            "t_attn_raw_s": raw,
            "t_attn_s": t_attn[phase],
            "attention_share": t_attn[phase] * num_layers / t0 if t0 > 0 else float("nan"),
        }
    rows = []
    for timing in cell.variants:
        if timing.label == "base":
            continue
        values = {}
        for phase, attr in (("prefill", "prefill_s"), ("decode", "decode_s_per_token")):
            t0, tk = _median(getattr(base, attr)), _median(getattr(timing, attr))
            speedup = t0 / tk if tk > 0 else float("nan")
            remaining = t0 - timing.k * t_attn[phase]
            ideal = t0 / remaining if remaining > 0 else float("inf")
            values[phase] = (speedup, _ratios(getattr(base, attr), getattr(timing, attr)), ideal, speedup / ideal)
        rows.append(
            SummaryRow(
                model=cell.model,
                batch=cell.batch,
                context=cell.context,
                k=timing.k,
                label=timing.label,
                rounds=len(timing.prefill_s),
                prefill_speedup=round(values["prefill"][0], 4),
                prefill_speedup_range=values["prefill"][1],
                prefill_bound=round(values["prefill"][2], 4),
                prefill_efficiency=round(values["prefill"][3], 4),
                decode_speedup=round(values["decode"][0], 4),
                decode_speedup_range=values["decode"][1],
                decode_bound=round(values["decode"][2], 4),
                decode_efficiency=round(values["decode"][3], 4),
                bound_probe=timing is probe,
            )
        )
    return bound, rows


# ----------------------------------------------------------------------------------------------------------------
# Output


def _finite(value):
    """NaN/inf become None so the JSON stays standard."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def write_json(study: Study, out_dir: Path, clock: Clock) -> None:
    study.elapsed_s = round(clock.elapsed(), 1)
    path = out_dir / "gpu_study.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_finite(asdict(study)), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _fmt(value: float | None, suffix: str = "x") -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.3f}{suffix}" if suffix == "x" else f"{100 * value:.0f}%"


def write_markdown(study: Study, out_dir: Path) -> None:
    machine = study.machine
    lines = [
        "# GPU speed study: attention-pruned LLaMA shapes",
        "",
        f"- Machine: {machine.get('gpu', machine.get('device'))}, torch {machine['torch']} (CUDA "
        f"{machine['cuda_runtime']}), transformers {machine['transformers']}, {machine['date_utc']}",
        f"- Settings: dtype {study.settings['dtype']}, attention {study.settings['attn_implementation']}, decode "
        f"{study.settings['decode_steps']} greedy steps in {DECODE_MODE}, {study.settings['warmup']} warm-up + "
        f"{study.settings['runs']} timed rounds, variants interleaved; random weights; status `{study.status}`, "
        f"{study.elapsed_s:.0f} s",
        f"- Pruning code: `apply_pruned_structure` imported as {study.pruning_import.get('mode')}",
        f"- Bound: {study.bound_definition}",
        f"- Paper's claim: {PAPER_CLAIM['text']}",
        f"- Layer choice: {LAYER_CHOICE}",
        "",
        "| model | batch | context | k | prefill speed-up | bound | eff. | decode speed-up | bound | eff. |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in study.summary:
        k = f"{row.k} (probe)" if row.bound_probe else f"{row.k} (A/A)" if row.label == "k0-clone" else str(row.k)
        lines.append(
            f"| {row.model} | {row.batch} | {row.context} | {k} | {_fmt(row.prefill_speedup)} | "
            f"{_fmt(row.prefill_bound)} | {_fmt(row.prefill_efficiency, '%')} | {_fmt(row.decode_speedup)} | "
            f"{_fmt(row.decode_bound)} | {_fmt(row.decode_efficiency, '%')} |"
        )
    lines += ["", "Attention share of the measured time (timed ablation, k = L-1):", ""]
    for bound in study.bounds:
        lines.append(
            f"- {bound['model']} b{bound['batch']} c{bound['context']}: prefill "
            f"{_fmt(bound['prefill']['attention_share'], '%')}, decode {_fmt(bound['decode']['attention_share'], '%')}"
        )
    other = [c for c in study.cells if c.status not in ("ok",)]
    if other:
        lines += ["", "Cells not measured in full:", ""]
        lines += [f"- {c.model} b{c.batch} c{c.context}: {c.status}: {c.reason or c.error[-200:]}" for c in other]
    (out_dir / "gpu_study.md").write_text("\n".join(lines) + "\n")


def write_plot(study: Study, out_dir: Path) -> str | None:
    """speed-up vs k per (model, cell), measured and bound; returns why it was skipped, if it was."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        return f"matplotlib missing: {err}"
    groups: dict[tuple[str, int, int], list[SummaryRow]] = {}
    for row in study.summary:
        groups.setdefault((row.model, row.batch, row.context), []).append(row)
    if not groups:
        return "no measured cells"
    models = list(dict.fromkeys(key[0] for key in groups))
    columns = max(sum(key[0] == model for key in groups) for model in models)
    fig, axes = plt.subplots(len(models), columns, figsize=(3.2 * columns, 2.8 * len(models)), squeeze=False)
    for r, model in enumerate(models):
        keys = [key for key in groups if key[0] == model]
        for c in range(columns):
            ax = axes[r][c]
            if c >= len(keys):
                ax.axis("off")
                continue
            rows = sorted(groups[keys[c]], key=lambda row: row.k)
            ks = [0] + [row.k for row in rows]
            for phase, color in (("prefill", "tab:blue"), ("decode", "tab:orange")):
                measured = [1.0] + [getattr(row, f"{phase}_speedup") for row in rows]
                bound = [1.0] + [getattr(row, f"{phase}_bound") for row in rows]
                ax.plot(ks, measured, "o-", color=color, label=f"{phase} measured")
                ax.plot(ks, bound, "--", color=color, alpha=0.7, label=f"{phase} bound")
            if "13b" in model:
                ax.axhline(PAPER_CLAIM["max_speedup"], color="gray", linestyle=":", label="paper: up to 1.30x")
            ax.set_title(f"{model} b{keys[c][1]} c{keys[c][2]}", fontsize=9)
            ax.set_xlabel("attention sublayers removed (k)", fontsize=8)
            ax.grid(alpha=0.3)
            if c == 0:
                ax.set_ylabel("speed-up vs k = 0", fontsize=8)
            if c == 0:
                ax.legend(fontsize=7)
    fig.suptitle(f"{study.machine.get('gpu', study.machine.get('device'))}, {DECODE_MODE} decode", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "gpu_study.png", dpi=110)
    plt.close(fig)
    return None


# ----------------------------------------------------------------------------------------------------------------
# Driver


def parse_cells(text: str) -> list[tuple[int, int]]:
    cells = []
    for item in text.split(","):
        batch, _, context = item.strip().lower().partition("x")
        cells.append((int(batch), int(context)))
    return cells


def plan_cells(spec: ModelSpec, args: argparse.Namespace, dtype_bytes: int, memory_gib: float) -> list[CellResult]:
    """Every batch x context combination, skipped up front when it cannot fit or is too slow for the budget."""
    cells = []
    for batch, context in parse_cells(args.cells):
        cell = CellResult(model=spec.name, batch=batch, context=context)
        cell.est_memory_gib = round(estimate_memory_gib(spec, batch, context, args.decode_steps, dtype_bytes), 1)
        if cell.est_memory_gib > args.memory_fraction * memory_gib:
            cell.status = "skipped"
            cell.reason = (
                f"memory: estimated {cell.est_memory_gib} GiB > {args.memory_fraction:.0%} of {memory_gib:.0f} GiB"
            )
        elif batch * context > args.max_tokens:
            cell.status = "skipped"
            cell.reason = f"cost: {batch * context} prompt tokens per forward > --max-tokens {args.max_tokens}"
        cells.append(cell)
    cells.sort(key=lambda cell: (cell.batch * cell.context, cell.context))
    return cells


def _error_text(err: BaseException) -> str:
    return (f"{type(err).__name__}: {err}\n" + traceback.format_exc(limit=6))[-3000:]


def free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def run_model(
    spec: ModelSpec,
    record: ModelRecord,
    cells: list[CellResult],
    study: Study,
    apply_pruned_structure: Callable,
    args: argparse.Namespace,
    clock: Clock,
    soft_deadline: float,
    save: Callable[[], None],
) -> None:
    device, dtype = args.device, DTYPES[args.dtype]
    max_positions = max(cell.context for cell in cells) + args.decode_steps + 8
    config = spec.config(max_positions, args.attn_implementation)
    record.config = config.to_diff_dict()
    record.param_count_expected = spec.param_count()
    build_device = "meta" if args.plan_only else device
    clock.log(f"{spec.name}: building on {build_device} ({spec.param_count() / 1e9:.2f}B parameters, {args.dtype})")
    t0 = time.perf_counter()
    base = build_base(config, build_device, dtype)
    synchronize(device if build_device == device else "cpu")
    record.build_s = round(time.perf_counter() - t0, 2)
    record.param_count = sum(p.numel() for p in base.parameters())
    record.attn_implementation = str(base.config._attn_implementation)
    allocated = torch.cuda.memory_allocated() if device == "cuda" and build_device == "cuda" else None
    t0 = time.perf_counter()
    variants: list[tuple[VariantInfo, LlamaForCausalLM]] = []
    for label, k in [("base", 0), ("k0-clone", 0)] + [(f"k{k}", k) for k in spec.ks() if k > 0]:
        info = VariantInfo(label=label, k=k, removed_layers=evenly_spread(k, spec.num_layers))
        model = base if label == "base" else build_variant(base, config, info.removed_layers, apply_pruned_structure)
        inspect_variant(info, model, base, spec.num_layers)
        record.variants.append(info)
        variants.append((info, model))
    record.variants_build_s = round(time.perf_counter() - t0, 2)
    if allocated is not None:
        record.extra_memory_gib_for_variants = round((torch.cuda.memory_allocated() - allocated) / 2**30, 3)
    record.status = "built"
    bad = [info.label for info in record.variants if not info.structure_ok]
    clock.log(
        f"{spec.name}: built in {record.build_s:.1f}s, {len(variants)} variants in {record.variants_build_s:.1f}s "
        f"(k = {[info.k for info in record.variants]}); structure {'OK' if not bad else 'WRONG for ' + str(bad)}"
    )
    save()
    if args.plan_only:
        for cell in cells:
            if cell.status == "pending":
                cell.status = "planned"
        return
    rate = None  # best prompt tokens/s and decode s/step seen so far, to predict whether a cell fits
    step_s = None
    for cell in cells:
        if cell.status != "pending":
            continue
        if rate is not None:
            predicted = len(variants) * (cell.batch * cell.context / rate + args.decode_steps * step_s)
            predicted *= args.warmup + 1
            now = time.perf_counter()
            if now + predicted > clock.deadline or now + predicted > soft_deadline:
                cell.status = "skipped"
                which = "time budget" if now + predicted > clock.deadline else "model's share of the time budget"
                cell.reason = (
                    f"{which}: warm-up + 1 round predicted ~{predicted:.1f}s, {soft_deadline - now:.1f}s left"
                )
                clock.log(f"{spec.name} b{cell.batch} c{cell.context}: skipped ({cell.reason})")
                save()
                continue
        clock.log(f"{spec.name} b{cell.batch} c{cell.context}: measuring (est. {cell.est_memory_gib} GiB)")
        try:
            with torch.inference_mode():
                run_cell(cell, variants, spec.vocab_size, args, clock, soft_deadline)
        except Exception as err:  # one failed cell must not end the study
            cell.status, cell.error = "error", _error_text(err)
            cell.reason = f"{type(err).__name__}: {str(err)[:300]}"
        if cell.status == "error":
            free_memory(device)  # after the except block: its traceback no longer holds the cell's tensors
        if cell.rounds_done:
            bound, rows = summarize(cell, spec.num_layers)
            study.bounds.append(bound)
            study.summary.extend(rows)
            base_timing = cell.variants[0]
            rate = max(rate or 0.0, cell.batch * cell.context / _median(base_timing.prefill_s))
            step_s = _median(base_timing.decode_s_per_token)
            best = max((row for row in rows if not row.bound_probe), key=lambda row: row.k)
            clock.log(
                f"{spec.name} b{cell.batch} c{cell.context}: {cell.status} in {cell.wall_s:.1f}s, "
                f"{cell.rounds_done} rounds; prefill T0 {1000 * bound['prefill']['T0_s']:.1f} ms, decode T0 "
                f"{1000 * bound['decode']['T0_s']:.2f} ms/token; k={best.k}: prefill {best.prefill_speedup:.3f}x "
                f"(bound {best.prefill_bound:.3f}x), decode {best.decode_speedup:.3f}x (bound {best.decode_bound:.3f}x)"
            )
        else:
            clock.log(f"{spec.name} b{cell.batch} c{cell.context}: {cell.status}: {cell.reason}")
        save()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=os.environ.get("OUT") or "gpu_study_out")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny configs and cells (CPU test of the code path)")
    parser.add_argument("--plan-only", action="store_true", help="build on the meta device and plan; time nothing")
    parser.add_argument("--models", default=None, help="comma-separated; default: all of the mode's models")
    parser.add_argument("--cells", default=None, help="BATCHxCONTEXT,... (default 1x512,16x512,64x512,...)")
    parser.add_argument("--max-tokens", type=int, default=None, help="skip cells with more prompt tokens")
    parser.add_argument("--decode-steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3, help="timed rounds per cell (each runs every variant)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="time budget from the start of main()")
    parser.add_argument("--memory-gib", type=float, default=None, help="device memory (default: measured)")
    parser.add_argument("--memory-fraction", type=float, default=0.9)
    parser.add_argument("--attn-implementation", default="sdpa")
    parser.add_argument("--pruning-import", choices=("auto", "package", "file"), default="auto")
    parser.add_argument("--num-layers", type=int, default=None, help="override L (dry runs of real widths)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on --device cpu)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.cells = args.cells or "1x16,4x16,1x64,4x64"
        args.max_tokens = args.max_tokens or 128
        args.decode_steps = args.decode_steps or 4
    else:
        contexts, batches = (512, 4096, 32768), (1, 16, 64)
        args.cells = args.cells or ",".join(f"{b}x{c}" for c in contexts for b in batches)
        args.max_tokens = args.max_tokens or 65536
        args.decode_steps = args.decode_steps or 16
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    # One thread on CPU: tiny models gain nothing from more, and a shared machine oversubscribed is far noisier
    args.threads = args.threads or (1 if args.device == "cpu" else torch.get_num_threads())
    catalogue = TINY_MODELS if args.tiny else MODELS
    names = args.models.split(",") if args.models else list(catalogue)
    unknown = [name for name in names if name not in catalogue]
    if unknown:
        parser.error(f"unknown --models {unknown}; choose from {sorted(catalogue)}")
    args.model_specs = [catalogue[name] for name in names]
    if args.num_layers:
        if args.num_layers < 2:
            parser.error(f"--num-layers must be at least 2, got {args.num_layers}")
        args.model_specs = [
            dataclasses.replace(spec, num_layers=args.num_layers, name=f"{spec.name}-L{args.num_layers}")
            for spec in args.model_specs
        ]
    if args.device == "cuda" and not args.plan_only and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False; use --device cpu (with --tiny)")
    return args


def main(argv: list[str] | None = None) -> int:
    # Decode grows every layer's K/V by one token per step (torch.cat): without expandable segments the caching
    # allocator can fragment to ~2x the KV cache at batch 16 x 4k. Read when CUDA initialises, i.e. after this.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    args = parse_args(argv)
    clock = Clock(args.budget_s)
    if args.device == "cuda" and torch.cuda.is_available():
        try:
            torch.cuda.memory._set_allocator_settings(os.environ["PYTORCH_CUDA_ALLOC_CONF"])
        except (AttributeError, RuntimeError) as err:
            clock.log(f"allocator settings not applied: {err}")
    torch.set_num_threads(args.threads)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` still writes the md and png
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    apply_pruned_structure, pruning_import = import_pruning(args.pruning_import)
    settings = {key: value for key, value in vars(args).items() if key != "model_specs" and not key.startswith("_")}
    settings.update(models=[spec.name for spec in args.model_specs], logits_to_keep=1, cache="DynamicCache")
    study = Study(
        schema=SCHEMA,
        status="running",
        started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        machine=machine_info(args.device),
        settings=settings,
        pruning_import=pruning_import,
    )
    memory_gib = device_memory_gib(args.device, args.memory_gib)
    dtype_bytes = torch.finfo(DTYPES[args.dtype]).bits // 8
    plans = {spec.name: plan_cells(spec, args, dtype_bytes, memory_gib) for spec in args.model_specs}
    for spec in args.model_specs:
        study.models.append(ModelRecord(name=spec.name, spec=asdict(spec)))
        study.cells.extend(plans[spec.name])

    def save() -> None:
        write_json(study, out_dir, clock)

    clock.log(
        f"pruning code: {pruning_import['mode']} ({pruning_import['module_file']}); torch {torch.__version__}, "
        f"transformers {transformers.__version__}, device {study.machine.get('gpu', args.device)}"
    )
    for spec in args.model_specs:
        for cell in plans[spec.name]:
            note = cell.reason if cell.status == "skipped" else "planned"
            clock.log(f"  {spec.name} b{cell.batch} c{cell.context}: est. {cell.est_memory_gib} GiB, {note}")
    save()
    try:
        for index, (spec, record) in enumerate(zip(args.model_specs, study.models, strict=True)):
            cells = plans[spec.name]
            remaining = args.model_specs[index:]
            share = spec.param_count() / sum(other.param_count() for other in remaining)
            soft_deadline = time.perf_counter() + max(clock.left(), 0.0) * share
            if clock.left() < 0.05 * args.budget_s:
                record.status = "skipped"
                for cell in cells:
                    if cell.status == "pending":
                        cell.status, cell.reason = "skipped", "time budget exhausted before the model was built"
                clock.log(f"{spec.name}: skipped (time budget exhausted)")
                save()
                continue
            try:
                run_model(spec, record, cells, study, apply_pruned_structure, args, clock, soft_deadline, save)
            except Exception as err:  # a model that fails to build must not end the study
                record.status, record.error = "error", _error_text(err)
                for cell in cells:
                    if cell.status == "pending":
                        cell.status, cell.reason = "error", f"model failed: {type(err).__name__}: {str(err)[:300]}"
                clock.log(f"{spec.name}: FAILED: {type(err).__name__}: {err}")
            finally:
                free_memory(args.device)
                save()
        study.status = "complete"
    except BaseException:
        study.status = "interrupted"
        raise
    finally:
        for cell in study.cells:
            if cell.status == "pending":
                cell.status = "skipped"
                cell.reason = cell.reason or "not reached (interrupted or time budget)"
        if study.status == "complete" and any(
            c.reason.startswith(("time budget", "model's", "not reached")) for c in study.cells
        ):
            study.status = "complete (time budget cut some cells)"
        save()
        write_markdown(study, out_dir)
        plot_note = None if args.plan_only else write_plot(study, out_dir)
        if plot_note:
            clock.log(f"plot skipped: {plot_note}")
        clock.log(f"done: {study.status}; wrote {sorted(p.name for p in out_dir.glob('gpu_study*'))} to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
