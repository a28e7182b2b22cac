"""Measuring attention's share of a model's time on a backend: timed ablation of whole attention sublayers.

The unpruned model (n attention sublayers) and the model with n - 1 of them removed (`prepare_variant`) are timed,
interleaved, at each (batch, context) by `throughput.run_benchmark`; `attention_shares_from_benchmark` turns the two
timings into one attention sublayer's measured time and attention's share of the whole (`shares.AttentionShares`),
which `planning` turns into predicted speed-ups without measuring anything itself.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..checkpoints.modeling import save_pruned
from ..checkpoints.models import resolve_model
from ..checkpoints.record import get_pruned_layers
from ..errors import InvalidConfigError
from ..exporters.onnx import export_onnx
from ..pruning.configuration import GateNormConfig
from ..pruning.pruner import GateNormPruner
from ..validation import check_choice, check_int, check_int_list
from .shares import BACKENDS, PROVIDERS, AttentionShares, ShareCell
from .throughput import BenchmarkSettings, run_benchmark


if TYPE_CHECKING:
    from collections.abc import Iterable

    from transformers import PretrainedConfig

    from .throughput import BenchmarkResult

__all__ = ["attention_shares_from_benchmark", "measure_attention_shares", "prepare_variant"]


def _median_runs(result: BenchmarkResult, model: str, batch: int, context: int, attr: str) -> tuple[float, list]:
    values = [
        getattr(r, attr)
        for r in result.runs
        if r.model == model and r.batch_size == batch and r.prompt_length == context
    ]
    assert values, f"no {model} runs at batch {batch}, context {context}"
    return statistics.median(values), [min(values), max(values)]


def attention_shares_from_benchmark(
    result: BenchmarkResult, *, model: str, config: PretrainedConfig, ablated: int
) -> AttentionShares:
    """The shares from a `run_benchmark` of the ablated model (candidate) against the unpruned one (baseline).

    Args:
        result: The benchmark; every shape in it becomes a cell.
        model: Name of the measured model, for the record.
        config: The baseline's config.
        ablated: Attention sublayers the candidate lacks (n - 1 for the bound; any k >= 1 gives an estimate).

    Raises:
        InvalidConfigError: If `ablated` is not in 1..n-1.
    """

    n = config.num_hidden_layers - len(get_pruned_layers(config))
    check_int("ablated", ablated, 1)
    if ablated > n - 1:
        raise InvalidConfigError(f"ablated must be at most {n - 1} (of {n} attention sublayers), got {ablated}")
    cells = []
    for row in result.summary:
        batch, context = row["batch_size"], row["prompt_length"]
        for phase, attr in (("prefill", "prefill_s"), ("decode", "decode_s_per_token")):
            t0, t0_range = _median_runs(result, "baseline", batch, context, attr)
            tk, tk_range = _median_runs(result, "candidate", batch, context, attr)
            raw = (t0 - tk) / ablated
            t_attn = max(raw, 0.0)
            cells.append(
                ShareCell(
                    phase=phase,
                    batch=batch,
                    context=context,
                    T0_s=t0,
                    T_ablated_s=tk,
                    t_attn_raw_s=raw,
                    t_attn_s=t_attn,
                    share=n * t_attn / t0,
                    T0_range_s=t0_range,
                    T_ablated_range_s=tk_range,
                )
            )
    settings = result.settings
    return AttentionShares(
        model=model,
        model_type=config.model_type,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_layers=n,
        backend=settings["backend"],
        provider=settings["provider"],
        new_tokens=settings["new_tokens"],
        warmup=settings["warmup"],
        runs=settings["runs"],
        cells=cells,
        machine=dict(result.machine),
    )


def prepare_variant(
    model: str | Path,
    num_layers: int,
    output_dir: str | Path,
    *,
    backend: str = "onnxruntime",
    provider: str = "cpu",
    overwrite: bool = False,
) -> Path:
    """Writes `model` with `num_layers` attention sublayers removed, in the form `backend` loads, to `output_dir`.

    For timing only: which sublayers go does not change the speed (they all have the same shape), so they are
    chosen by `gate_norm` with no spacing rule and nothing protected. `num_layers=0` gives the unpruned model.
    onnxruntime: an ONNX export (fp32 on the CPU, fp16 on CUDA); pytorch: a checkpoint.

    Raises:
        InvalidConfigError: If `num_layers` is out of range, or a bad backend/provider.
    """
    import torch

    check_int("num_layers", num_layers, 0)
    check_choice("backend", backend, BACKENDS)
    check_choice("provider", provider, PROVIDERS)
    path = resolve_model(model)
    pruner = GateNormPruner.from_pretrained(path)
    pruned_model = pruner.model
    if num_layers:
        config = GateNormConfig(num_layers=num_layers, criterion="gate_norm", protect_first=0, min_gap=1)
        pruned_model, _ = pruner.prune(config)
    if backend == "onnxruntime":
        fp16 = provider == "cuda"
        if fp16:
            pruned_model.to(torch.float16)
        elif pruned_model.dtype != torch.float32:
            pruned_model.to(torch.float32)
        device = "cuda" if fp16 else "cpu"
        return export_onnx(
            pruned_model, output_dir, device=device, dtype="float16" if fp16 else "float32", overwrite=overwrite
        )
    return save_pruned(pruned_model, output_dir, tokenizer_from=path, overwrite=overwrite)


def measure_attention_shares(
    model: str | Path,
    *,
    contexts: Iterable[int] = (128, 1024),
    batch_sizes: Iterable[int] = (1,),
    backend: str = "onnxruntime",
    provider: str = "cpu",
    new_tokens: int = 32,
    warmup: int = 1,
    runs: int = 5,
    work_dir: str | Path | None = None,
    progress: bool = False,
) -> AttentionShares:
    """Measures attention's share of prefill and decode time by timed ablation on `backend` (see module doc).

    Builds the unpruned model and the model with n - 1 of its n attention sublayers removed (`prepare_variant`),
    then times both with `run_benchmark` (random prompts of exactly each context, exactly `new_tokens` new
    tokens, interleaved runs, medians).

    Args:
        model: Checkpoint directory or built-in alias.
        contexts: Prompt lengths to measure.
        batch_sizes: Batch sizes to measure (every combination with `contexts`).
        backend: `"onnxruntime"` (ONNX exports) or `"pytorch"` (eager).
        provider: `"cpu"` or `"cuda"`.
        new_tokens: Tokens generated per run (at least 2).
        warmup: Warm-up runs per model and shape.
        runs: Recorded runs per model and shape.
        work_dir: Where to write the two variants (default: a temporary directory, removed afterwards).
        progress: Show a progress bar.

    Returns:
        The shares; `save(path)` writes the JSON that `prune --shares` reads.

    Raises:
        InvalidConfigError: Bad settings, or a model with fewer than two attention sublayers.
    """

    settings = BenchmarkSettings(
        batch_sizes=check_int_list("batch_sizes", batch_sizes, 1),
        prompt_lengths=check_int_list("contexts", contexts, 1),
        new_tokens=new_tokens,
        warmup=warmup,
        runs=runs,
        backend=backend,
        provider=provider,
    )
    path = resolve_model(model)
    config = GateNormPruner.from_pretrained(path).config
    n = config.num_hidden_layers - len(get_pruned_layers(config))
    if n < 2:
        raise InvalidConfigError(f"{model} has {n} attention sublayer(s); timed ablation needs at least 2")
    with tempfile.TemporaryDirectory(prefix="gatenorm-shares-") as tmp:
        root = Path(work_dir) if work_dir is not None else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        baseline = prepare_variant(path, 0, root / "k0", backend=backend, provider=provider, overwrite=True)
        ablated = prepare_variant(path, n - 1, root / f"k{n - 1}", backend=backend, provider=provider, overwrite=True)
        result = run_benchmark(ablated, baseline, settings, progress=progress)
    return attention_shares_from_benchmark(result, model=str(model), config=config, ablated=n - 1)
