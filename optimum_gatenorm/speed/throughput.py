"""Throughput of a pruned model against its baseline, on onnxruntime (the product path) or PyTorch eager.

How it measures (see docs/throughput.md):

- Prompts are random token ids (seeded) of exactly the asked length, the same for both models, with an all-ones
  attention mask. Generation is greedy with exactly `new_tokens` new tokens (`min_new_tokens = max_new_tokens`,
  so no early EOS).
- A logits processor timestamps every generation step inside `generate`: the first timestamp ends the prefill
  (time to first token), the following ones time the decode steps. Prefill latency = first timestamp - start;
  decode = (last - first) / (new_tokens - 1) per step; end-to-end tokens/s = batch * new_tokens / total time.
- Warm-up runs are excluded. Baseline and candidate runs are interleaved (A B A B ...) so that machine drift
  cancels in the ratios; medians and min-max are reported.
- Memory: both models live in one process, so the process peak would be the same for both and is not reported.
  `memory_growth_mb` is the peak during a run minus the level at its start (process RSS on the CPU, device memory
  in use on CUDA, sampled every 5 ms): KV cache and activations, which do differ. `weights_mb` is each model's
  weight files on disk.
- Noise: when the min-max ranges of the two models overlap for a metric, the measured difference is within the
  noise of the runs; the result lists a warning for it (raise `--runs`, or quiet the machine).
- On CUDA: onnxruntime's CUDAExecutionProvider with IO binding, synchronised timestamps, and a loud failure if
  the session fell back to the CPU.
- "ideal" is the cost model's FLOPs (prefill) or bytes (decode) ratio (`optimum_gatenorm.speed.cost_model`). It counts
  matmul work, weights and KV-cache traffic only; per-layer overheads (kernel dispatch, softmax and mask
  element-wise work, KV-cache concatenation copies) are not in it, so a measured speed-up can exceed it
  (efficiency above 100% means the removed sublayers cost more than their FLOPs/bytes share).
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoints.models import resolve_model
from ..compat import require_onnxruntime
from ..devices import AUTO, announce_device, choose_provider
from ..errors import InvalidCheckpointError, InvalidConfigError, ModelNotFoundError
from ..evaluation.loading import is_onnx_dir, load_causal_lm
from ..exporters.onnx import check_cuda_available
from ..outputs import atomic_save_figure, require_pyplot
from ..params import param
from ..serialization import JSONMixin
from ..validation import check_choice, check_int, check_int_list
from ..version import __version__
from .cost_model import ModelCost, ideal_speedup, replacement_share
from .shares import AttentionShares, load_shares


__all__ = ["BenchmarkResult", "BenchmarkSettings", "RunRecord", "run_benchmark", "timed_run"]

logger = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "pytorch")
PROVIDERS = ("cpu", "cuda")
METRICS = ("prefill_s", "decode_tokens_per_s", "e2e_tokens_per_s", "memory_growth_mb")
# For each metric, whether larger is better (for the noise check).
_HIGHER_IS_BETTER = {"prefill_s": False, "decode_tokens_per_s": True, "e2e_tokens_per_s": True}


@dataclass
class BenchmarkSettings:
    """What to measure.

    Args:
        batch_sizes: Batch sizes; every combination with `prompt_lengths` is measured.
        prompt_lengths: Prompt lengths in tokens.
        new_tokens: Tokens generated per run (at least 2: one prefill step and one decode step).
        warmup: Warm-up runs per model and shape, not recorded.
        runs: Recorded runs per model and shape.
        backend: `"onnxruntime"` (ONNX exports through ORTModelForCausalLM) or `"pytorch"` (checkpoints, eager).
        provider: `"cpu"`, `"cuda"`, or `"auto"` (`devices.choose_provider`: CUDA when torch sees a GPU and, for
            onnxruntime, onnxruntime-gpu is installed; `run_benchmark` records what it chose).
        seed: Seed of the random prompts.
    """

    batch_sizes: list[int] = field(default_factory=lambda: [1])
    prompt_lengths: list[int] = field(default_factory=lambda: [128])
    new_tokens: int = 32
    warmup: int = 1
    runs: int = 5
    backend: str = "onnxruntime"
    provider: str = "cpu"
    seed: int = 0

    def __post_init__(self):
        for name in ("batch_sizes", "prompt_lengths"):
            values = check_int_list(name, getattr(self, name), minimum=1)
            if not values:
                raise InvalidConfigError(f"{name} must be integers >= 1, got {values!r}")
            setattr(self, name, sorted(set(values)))
        for name, minimum in (("new_tokens", 2), ("warmup", 0), ("runs", 1), ("seed", 0)):
            check_int(name, getattr(self, name), minimum)
        check_choice("backend", self.backend, BACKENDS)
        check_choice("provider", self.provider, (AUTO, *PROVIDERS))


@dataclass
class RunRecord:
    """One recorded generation run."""

    model: str  # "candidate" or "baseline"
    batch_size: int
    prompt_length: int
    run: int
    prefill_s: float
    decode_s_per_token: float
    decode_tokens_per_s: float
    e2e_tokens_per_s: float
    total_s: float
    memory_growth_mb: float


@dataclass
class BenchmarkResult(JSONMixin):
    """Every run, the per-shape summary and the cost-model bounds; `to_json()` is the `--output` file."""

    settings: dict
    models: dict
    machine: dict
    runs: list[RunRecord]
    summary: list[dict]
    weights_mb: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    gatenorm_version: str = __version__

    def format_table(self) -> str:
        lines = []
        for row in self.summary:
            lines.append(
                f"batch {row['batch_size']}, prompt {row['prompt_length']} tokens, {self.settings['new_tokens']} new "
                f"tokens ({self.settings['backend']}, {self.settings['provider']}, {self.settings['runs']} runs):"
            )
            lines.append(
                f"  {'metric':<22} {'baseline median (min-max)':>30} {'candidate median (min-max)':>30} "
                f"{'ratio':>7} {'ideal':>7} {'efficiency':>10}"
            )
            for metric in METRICS:
                base, cand = row["baseline"][metric], row["candidate"][metric]
                ratio = row["speedup"].get(metric)
                ideal = row["ideal"].get(metric)
                efficiency = f"{ratio / ideal:.0%}" if ratio and ideal else "-"
                lines.append(
                    f"  {metric:<22} {_stat(base):>30} {_stat(cand):>30} {(f'{ratio:.3f}' if ratio else '-'):>7} "
                    f"{(f'{ideal:.3f}' if ideal else '-'):>7} {efficiency:>10}"
                )
        for row in self.summary:
            bound = row.get("measured_bound")
            if bound:
                cells = [
                    f"{metric} {bound[metric]:.3f} (efficiency {row['speedup'][metric] / bound[metric]:.0%})"
                    for metric in ("prefill_s", "decode_tokens_per_s")
                ]
                lines.append(
                    f"measured-share bound, batch {row['batch_size']}, prompt {row['prompt_length']}: "
                    + ", ".join(cells)
                )
        if self.weights_mb:
            lines.append(
                f"weights on disk: baseline {self.weights_mb['baseline']:.1f} MB, candidate "
                f"{self.weights_mb['candidate']:.1f} MB"
            )
        lines.append(
            "ratio: speed-up of the candidate (baseline time / candidate time; memory: candidate / baseline); ideal: "
            "cost-model bound (prefill: compute-bound, decode and end-to-end: memory-bound)"
        )
        lines.extend(f"warning: {warning}" for warning in self.warnings)
        return "\n".join(lines)

    def plot(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """PNG of the measured speed-ups next to the cost-model bounds, per shape."""

        plt = require_pyplot()

        labels = [f"b{row['batch_size']}/p{row['prompt_length']}" for row in self.summary]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), dpi=120)
        for ax, metric, title in ((axes[0], "prefill_s", "prefill"), (axes[1], "decode_tokens_per_s", "decode")):
            xs = range(len(labels))
            ax.bar([x - 0.2 for x in xs], [row["speedup"][metric] for row in self.summary], 0.4, label="measured")
            ax.bar([x + 0.2 for x in xs], [row["ideal"][metric] for row in self.summary], 0.4, label="ideal")
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_xticks(list(xs), labels, fontsize=8)
            ax.set_title(f"{title} speed-up (candidate vs baseline)", fontsize=9)
            ax.legend(fontsize=8)
        fig.tight_layout()
        return atomic_save_figure(fig, path, overwrite=overwrite)


def _stat(values: dict) -> str:
    return f"{values['median']:.4g} ({values['min']:.4g}-{values['max']:.4g})"


class _PeakMemory:
    """Samples the process RSS (CPU) or the device memory in use (CUDA) in a background thread."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.peak = 0
        self._stop = threading.Event()

    def _read(self) -> int:
        if self.cuda:
            import torch

            free, total = torch.cuda.mem_get_info()
            return total - free
        import psutil

        return psutil.Process().memory_info().rss

    def _loop(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._read())

    def __enter__(self):
        self.start = self.peak = self._read()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._read())


def _clock_processor(sync):
    from transformers import LogitsProcessor

    class StepClock(LogitsProcessor):
        """Timestamps each generation step (called right after each forward pass)."""

        def __init__(self):
            self.times: list[float] = []

        def __call__(self, input_ids, scores):
            sync()
            self.times.append(time.perf_counter())
            return scores

    return StepClock()


def check_model_path(path: str | Path, settings: BenchmarkSettings) -> Path:
    """The directory to load for `settings.backend`, checked without loading anything.

    Raises:
        ModelNotFoundError: If the path does not exist.
        InvalidCheckpointError: If it does not suit the backend (with the path that would).
    """

    if settings.backend == "pytorch":
        path = resolve_model(path)
        if is_onnx_dir(Path(path)):
            raise InvalidCheckpointError(f"{path} is an ONNX export; use {param('backend', 'onnxruntime')} for it")
        return Path(path)
    require_onnxruntime(f"{param('backend', 'onnxruntime')} (the default)", f"pass {param('backend', 'pytorch')}")
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"{path} not found: pass the directory of an ONNX export (with model.onnx)")
    if path.is_dir() and is_onnx_dir(path):
        return path
    if path.is_dir() and is_onnx_dir(path / "onnx"):
        raise InvalidCheckpointError(
            f"{path} is a checkpoint whose ONNX export is in {path / 'onnx'}; pass that directory (or {param('backend', 'pytorch')})"
        )
    raise InvalidCheckpointError(
        f"{path} is not an ONNX export (no model.onnx); export it first: optimum-cli gatenorm export --model "
        f"{path} --output {path}-onnx (or use {param('backend', 'pytorch')})"
    )


def _check_context(path: Path, settings: BenchmarkSettings) -> None:
    """Refuses prompts that, with the generated tokens, run past the model's positions (read from config.json)."""
    from transformers import AutoConfig

    limit = getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", None)
    longest = max(settings.prompt_lengths) + settings.new_tokens
    if isinstance(limit, int) and longest > limit:
        raise InvalidConfigError(
            f"prompt length {max(settings.prompt_lengths)} + {settings.new_tokens} new tokens = {longest} exceeds "
            f"{path}'s {limit} positions (max_position_embeddings); give prompt lengths up to "
            f"{limit - settings.new_tokens}"
        )


def load_model(path: str | Path, settings: BenchmarkSettings):
    """Loads one side of the comparison for `settings.backend` / `settings.provider` (see `check_model_path`).

    Raises:
        InvalidCheckpointError: If the directory does not suit the backend.
        InvalidConfigError: If CUDA is asked for but onnxruntime would run on the CPU.
    """
    path = check_model_path(path, settings)
    io_binding = True if settings.backend == "onnxruntime" and settings.provider == "cuda" else None
    model, _ = load_causal_lm(path, provider=settings.provider, io_binding=io_binding)
    return model


def _check_comparable(candidate: Path, baseline: Path, candidate_config, baseline_config) -> None:
    """The two sides must be the same model up to pruning: same architecture, sizes and tokenizer."""
    for name in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers"):
        mine, theirs = getattr(candidate_config, name, None), getattr(baseline_config, name, None)
        if mine != theirs:
            raise InvalidConfigError(
                f"candidate and baseline differ in {name} ({mine!r} vs {theirs!r}); compare a pruned model with its "
                "own original"
            )
    files = [Path(p) / "tokenizer.json" for p in (candidate, baseline)]
    if all(f.is_file() for f in files) and files[0].read_bytes() != files[1].read_bytes():
        raise InvalidConfigError(
            f"candidate and baseline tokenizers differ ({files[0]} vs {files[1]}); compare a pruned model with its "
            "own original"
        )


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def _summarise(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run_benchmark(
    candidate: str | Path,
    baseline: str | Path,
    settings: BenchmarkSettings,
    *,
    shares: AttentionShares | str | Path | None = None,
    progress: bool = False,
) -> BenchmarkResult:
    """Measures `candidate` (usually pruned) against `baseline` (usually the original), interleaved.

    Args:
        candidate: ONNX export directory (onnxruntime backend) or checkpoint (pytorch backend).
        baseline: The same for the reference model.
        settings: Shapes, run counts, backend and provider.
        shares: Attention time shares measured on this backend (`optimum_gatenorm.speed.planning`), or the
            file `AttentionShares.save` wrote (read and checked against the baseline's config before any run):
            adds the measured-share bound (`measured_bound` per shape) and the efficiency against it.
        progress: Show a progress bar over the runs.

    Raises:
        InvalidConfigError: Bad settings, CUDA unavailable, models with different vocabularies, or shares that are
            not a shares file or were measured on another model.
        ModelNotFoundError: A model, or the shares file, that does not exist.
        InvalidCheckpointError: A path that does not suit the backend.
    """
    import torch

    if isinstance(shares, (str, Path)):
        from transformers import AutoConfig

        shares = load_shares(shares, AutoConfig.from_pretrained(check_model_path(baseline, settings)))
    requested = settings.provider
    provider, reason = choose_provider(requested)
    settings = dataclasses.replace(settings, provider=provider)
    if settings.provider == "cuda":
        check_cuda_available()
    candidate_path, baseline_path = check_model_path(candidate, settings), check_model_path(baseline, settings)
    for path in (candidate_path, baseline_path):
        _check_context(path, settings)
    models = {"candidate": load_model(candidate_path, settings), "baseline": load_model(baseline_path, settings)}
    configs = {name: model.config for name, model in models.items()}
    _check_comparable(candidate_path, baseline_path, configs["candidate"], configs["baseline"])
    # The ONNX graph keeps every position of a sliding-window layer; transformers' cache keeps its window.
    window_aware = settings.backend == "pytorch"
    costs = {name: ModelCost.from_config(config, window_aware=window_aware) for name, config in configs.items()}
    if shares is not None:
        shares.check_model(configs["baseline"])
    device = "cuda" if settings.provider == "cuda" else "cpu"
    announce_device(requested, device, flag="provider", reason=reason)  # every check passed: the runs start
    shapes = [(b, p) for b in settings.batch_sizes for p in settings.prompt_lengths]
    records = _timed_runs(models, shapes, settings, configs["baseline"].vocab_size, device, progress)
    summary = [_summary_row(records, batch, length, costs, settings, shares) for batch, length in shapes]
    warnings = noise_warnings(summary)
    for warning in warnings:
        logger.warning("warning: %s", warning)

    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine()}
    machine["torch_threads"] = torch.get_num_threads()
    if settings.backend == "onnxruntime":
        import onnxruntime

        machine["onnxruntime"] = onnxruntime.__version__
        machine["providers"] = {name: list(model.providers) for name, model in models.items()}
    if device == "cuda":
        machine["gpu"] = torch.cuda.get_device_name()
    return BenchmarkResult(
        settings=asdict(settings),
        models={"candidate": str(candidate), "baseline": str(baseline)},
        machine=machine,
        runs=records,
        summary=summary,
        weights_mb={"candidate": _weights_mb(candidate_path), "baseline": _weights_mb(baseline_path)},
        warnings=warnings,
    )


def _timed_runs(models: dict, shapes: list, settings: BenchmarkSettings, vocab: int, device: str, progress: bool):
    """Every run of both models at every shape, interleaved (A B A B ...), warm-up runs discarded."""
    import torch
    from tqdm.auto import tqdm

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    generator = torch.Generator().manual_seed(settings.seed)
    bar = tqdm(
        total=len(shapes) * 2 * (settings.warmup + settings.runs), desc="benchmark", unit="run", disable=not progress
    )
    records: list[RunRecord] = []
    for batch, length in shapes:
        ids = torch.randint(0, vocab, (batch, length), generator=generator).to(device)
        for run in range(-settings.warmup, settings.runs):
            for name in ("baseline", "candidate"):
                record = timed_run(models[name], ids, settings, sync, device)
                bar.update(1)
                if run >= 0:
                    records.append(RunRecord(model=name, batch_size=batch, prompt_length=length, run=run, **record))
    bar.close()
    return records


def timed_run(model, ids, settings: BenchmarkSettings, sync, device: str) -> dict:
    """One generation of exactly `settings.new_tokens` tokens from `ids` (`[1, n]` token ids), timed per step
    (`RunRecord`'s measured fields); `sync` waits for the device (`torch.cuda.synchronize`, or a no-op on the CPU)."""
    import torch

    clock = _clock_processor(sync)
    sync()
    with _PeakMemory(cuda=device == "cuda") as memory, torch.no_grad():
        start = time.perf_counter()
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=settings.new_tokens,
            min_new_tokens=settings.new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=0,
            logits_processor=[clock],
        )
        sync()
        end = time.perf_counter()
    assert len(clock.times) == settings.new_tokens, "generation did not produce a fixed length"
    decode = (clock.times[-1] - clock.times[0]) / (settings.new_tokens - 1)
    return {
        "prefill_s": clock.times[0] - start,
        "decode_s_per_token": decode,
        "decode_tokens_per_s": ids.shape[0] / decode,
        "e2e_tokens_per_s": ids.shape[0] * settings.new_tokens / (end - start),
        "total_s": end - start,
        "memory_growth_mb": (memory.peak - memory.start) / 2**20,
    }


def _summary_row(
    records: list[RunRecord], batch: int, length: int, costs: dict, settings: BenchmarkSettings, shares
) -> dict[str, Any]:
    """Medians and ranges of both models at one shape, the speed-ups, and their bounds."""
    row: dict[str, Any] = {"batch_size": batch, "prompt_length": length}
    for name in ("baseline", "candidate"):
        mine = [r for r in records if r.model == name and r.batch_size == batch and r.prompt_length == length]
        row[name] = {m: _summarise([getattr(r, m) for r in mine]) for m in METRICS}
    base, cand = row["baseline"], row["candidate"]
    row["speedup"] = {
        "prefill_s": base["prefill_s"]["median"] / cand["prefill_s"]["median"],
        "decode_tokens_per_s": cand["decode_tokens_per_s"]["median"] / base["decode_tokens_per_s"]["median"],
        "e2e_tokens_per_s": cand["e2e_tokens_per_s"]["median"] / base["e2e_tokens_per_s"]["median"],
        "memory_growth_mb": _ratio(cand["memory_growth_mb"]["median"], base["memory_growth_mb"]["median"]),
    }
    # Decode steps see contexts from `length` to `length + new_tokens - 1`: the middle one stands for them.
    contexts = {"prefill": length, "decode": length + settings.new_tokens // 2}
    bounds = {
        phase: ideal_speedup(costs["baseline"], costs["candidate"], phase, batch, contexts[phase])
        for phase in contexts
    }
    row["cost_model"] = bounds
    row["ideal"] = {
        "prefill_s": bounds["prefill"]["compute_bound"],
        "decode_tokens_per_s": bounds["decode"]["memory_bound"],
        "e2e_tokens_per_s": bounds["decode"]["memory_bound"],
        "memory_growth_mb": None,
    }
    if shares is not None:
        # The speed-up if the removed sublayers' measured time vanished (docs/throughput.md, "Measured bound"), less
        # what their replacements still cost (by the cost model's ratio; the ablation times plain removal).
        removed = len(costs["candidate"].pruned_layers) - len(costs["baseline"].pruned_layers)
        row["measured_bound"] = {
            metric: shares.speedup(
                removed,
                phase,
                batch,
                contexts[phase],
                replacement_share(costs["baseline"], costs["candidate"], phase, batch, contexts[phase]),
            )
            for metric, phase in (("prefill_s", "prefill"), ("decode_tokens_per_s", "decode"))
        }
    return row


def noise_warnings(summary: list[dict]) -> list[str]:
    """One line per shape and timing metric whose two min-max ranges overlap: the ratio is within the noise."""
    warnings = []
    for row in summary:
        for metric in _HIGHER_IS_BETTER:
            base, cand = row["baseline"][metric], row["candidate"][metric]
            if base["min"] <= cand["max"] and cand["min"] <= base["max"]:
                ratio = row["speedup"][metric]
                warnings.append(
                    f"batch {row['batch_size']}, prompt {row['prompt_length']}: {metric} ratio {ratio:.3f} is within "
                    f"the noise (baseline runs {_stat(base)}, candidate runs {_stat(cand)} overlap); raise {param('runs')} or "
                    "quiet the machine"
                )
    return warnings


def _weights_mb(path: Path) -> float:
    weights = (".safetensors", ".bin", ".onnx", ".onnx_data", ".onnx.data")
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file() and f.name.endswith(weights)) / 2**20
