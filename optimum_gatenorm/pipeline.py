"""The one-shot pipeline: score, select, prune, save and optionally export, atomically.

`prune_and_save` is what `optimum-cli gatenorm prune` runs, `score_model` (and `score_summary`, its text) what
`score` runs. Everything that can be checked without loading the model is checked first (output location, device,
the request against the layer count in `config.json`, the export dtype, the calibration text), so a bad request
fails in a second and leaves nothing on disk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoints.card import write_model_card
from .checkpoints.modeling import model_bytes, write_companions, write_pruned
from .checkpoints.models import model_inputs
from .checkpoints.streaming import available_memory, checkpoint_bytes, format_bytes, parse_size
from .compat import require_onnx
from .criteria import DEFAULT_CRITERION, get_criterion, require_calibration
from .devices import announce_device, check_device, resolve_device
from .errors import InvalidConfigError
from .exporters.onnx import check_onnx_exportable, export_onnx_into
from .outputs import atomic_output_dir, check_output_path, holds_outputs, mark_output
from .params import param
from .progress import phase, summary_logger
from .pruning.configuration import GateNormConfig
from .pruning.pruner import GateNormPruner, check_request, check_streamable
from .report import PruningReport, ScoreReport
from .speed.planning import SpeedupTarget, plan_config


if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "EXPORT_FORMATS",
    "PruneResult",
    "check_device",
    "export_dtype",
    "prune_and_save",
    "score_model",
    "score_summary",
]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("onnx",)


@dataclass
class PruneResult:
    """What `prune_and_save` wrote.

    Args:
        report: The pruning report (also saved as `gatenorm_report.json` in `output_dir`).
        output_dir: The pruned checkpoint.
        exports: Export format -> directory, e.g. `{"onnx": output_dir / "onnx"}`.
        validation_max_diff: Largest |logit| difference between the ONNX graph and PyTorch, when validated.
        planned: With a target speed-up, what was planned for it (`speed.planning.resolve_target`'s dict).
    """

    report: PruningReport
    output_dir: Path
    exports: dict[str, Path]
    validation_max_diff: float | None = None
    planned: dict | None = None

    def summary(self) -> str:
        """What `optimum-cli gatenorm prune` prints: `report.summary()`, then where the checkpoint and its exports
        went."""
        return f"{self.report.summary()}\n{self._saved_summary()}"

    def _saved_summary(self) -> str:
        lines = [f"Saved the pruned checkpoint to {self.output_dir}"]
        if "onnx" in self.exports:
            onnx_dir = self.exports["onnx"]
            load = f"ORTModelForCausalLM.from_pretrained({str(onnx_dir)!r})"
            lines.append(f"Saved its ONNX export to {onnx_dir}: {load}")
        return "\n".join(lines)


def export_dtype(torch_dtype: str, device: str) -> str:
    """The ONNX export dtype (`fp32` / `fp16`) for a model of `torch_dtype`, checked against `device`.

    Raises:
        InvalidConfigError: For bfloat16 (no onnxruntime kernels) or float16 on the CPU (tracing fails).
    """
    torch_dtype = str(torch_dtype).removeprefix("torch.")
    if torch_dtype == "bfloat16":
        raise InvalidConfigError(
            f"{param('export', 'onnx')} does not support bfloat16 weights; pass {param('dtype', 'float32')} (or "
            f"float16 with {param('device', 'cuda')})"
        )
    if torch_dtype == "float16":
        if device != "cuda":
            raise InvalidConfigError(
                f"{param('export', 'onnx')} with float16 weights needs {param('device', 'cuda')}; pass "
                f"{param('dtype', 'float32')} on the CPU"
            )
        return "fp16"
    return "fp32"


def score_model(
    model: str | Path,
    criterion: str = DEFAULT_CRITERION,
    *,
    calibration_text: "Sequence[str | Path] | None" = None,
    calibration_samples: int = 16,
    calibration_length: int = 256,
    seed: int = 0,
    device: str = "auto",
    allow_pickle: bool = False,
    progress: bool | None = None,
) -> ScoreReport:
    """Scores every attention sublayer of a checkpoint with a criterion: what `optimum-cli gatenorm score` runs.

    The criterion's name, the device, the checkpoint and the calibration text a data-driven criterion needs are
    checked before any scoring. A weight-only criterion reads just the tensors it needs from the files.

    Args:
        model: A local checkpoint directory, a `.gguf` file, a built-in alias or a hub id.
        criterion: A registered criterion (`available_criteria()`).
        calibration_text: Text files for data-driven criteria (ignored by the data-free ones).
        calibration_samples: Calibration windows.
        calibration_length: Tokens per calibration window.
        seed: Seed of the `random` criterion and of the text `cosine_self` samples.
        device: `"auto"` (CUDA when torch sees a GPU, else the CPU, logged with the reason), `"cpu"`, `"cuda"`.
        allow_pickle: Accept `pytorch_model.bin` weights (`torch.load(weights_only=True)`).
        progress: Show a progress bar (as `GateNormPruner.score`).

    Returns:
        The scores; `score_summary(report)` is the text `optimum-cli gatenorm score` prints.

    Raises:
        InvalidConfigError: An unknown criterion (listing the registered ones), a bad device, or a data-driven
            criterion without calibration text.
        ModelNotFoundError, InvalidCheckpointError, UnsupportedModelError: The model cannot be used.
    """
    scorer = get_criterion(criterion)  # an unknown name fails before any work
    requested, device = device, resolve_device(device, announce=False)
    pruner = GateNormPruner.from_pretrained(model, allow_pickle=allow_pickle)
    calibration = _calibration(pruner, calibration_text, calibration_samples, calibration_length)
    require_calibration(scorer, calibration)
    announce_device(requested, device)  # every check passed: the work starts here
    return pruner.score(criterion, calibration=calibration, seed=seed, device=device, progress=progress)


def score_summary(report: ScoreReport) -> str:
    """What `optimum-cli gatenorm score` prints: the ranking, lowest first, under a line naming the criterion, the
    model and the time taken, and for a criterion that keeps removed layers apart, how `prune` walks it."""
    text = (
        f"{report.criterion} scores of {report.model_type} ({report.num_hidden_layers} layers), "
        f"computed in {report.scoring_seconds:.3f} s; lowest first:\n{report.format_table()}"
    )
    gap = get_criterion(report.criterion).min_gap
    if gap > 1:
        text += (
            f"\nprune walks this ranking with min_gap={gap}: a layer closer than {gap} to one already chosen "
            f"is skipped ({param('min_gap', 1)} for plain k lowest)"
        )
    return text


def _calibration(pruner: GateNormPruner, text: "Sequence[str | Path] | None", samples: int, length: int):
    """The calibration windows of `text` files (`None` without them)."""
    if not text:
        return None
    return pruner.calibration_from_files(text, num_samples=samples, length=length)


def _streams(
    pruner: GateNormPruner, config: GateNormConfig, max_memory, budget: int | None, *, dtype: str, export
) -> bool:
    """Whether the checkpoint is pruned without loading it: its weights exceed `budget` (default: the memory
    available). Refuses, in one line naming the fix, a request that would then need the model loaded."""
    weights = checkpoint_bytes(pruner.checkpoint)
    limit = budget if budget is not None else available_memory()
    if limit is None or weights <= limit:
        return False
    where = param("max_memory", max_memory) if budget is not None else f"the {format_bytes(limit)} of memory available"
    fits = f"the model's weights ({format_bytes(weights)}) exceed {where}"
    if pruner.checkpoint.format != "safetensors":
        raise InvalidConfigError(
            f"{fits}, and pruning it without loading it reads safetensors only: convert it (save_pretrained with "
            f"safetensors), or raise {param('max_memory')}"
        )
    try:
        check_streamable(config)
    except InvalidConfigError as error:
        raise InvalidConfigError(f"{fits}: {error}, or raise {param('max_memory')}") from None
    if export is not None or dtype != "auto":
        flag = param("export", export) if export is not None else param("dtype", dtype)
        raise InvalidConfigError(
            f"{fits}, so it is pruned without loading it, as stored: drop {flag} (export or convert the pruned "
            f"checkpoint where it fits), or raise {param('max_memory')}"
        )
    logger.info("%s: pruning it file to file, one tensor at a time, without loading it", fits[0].upper() + fits[1:])
    return True


def _checkpoint_dtype(config) -> str:
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    return str(dtype).removeprefix("torch.")


@holds_outputs
def prune_and_save(
    model: str | Path,
    output_dir: str | Path,
    config: GateNormConfig,
    *,
    target_speedup: "SpeedupTarget | float | None" = None,
    dtype: str = "auto",
    device: str = "auto",
    export: str | None = None,
    overwrite: bool = False,
    allow_pickle: bool = False,
    calibration_text: "Sequence[str | Path] | None" = None,
    calibration_samples: int = 16,
    calibration_length: int = 256,
    max_memory: "str | int | None" = None,
    progress: bool | None = None,
) -> PruneResult:
    """Scores, selects, prunes and saves a checkpoint (and exports it), all or nothing.

    The checkpoint (with tokenizer, `gatenorm_report.json` and a model card, `README.md`) and, with
    `export="onnx"`, its ONNX export in `output_dir/onnx` are written to a temporary directory and renamed into place
    at the end.

    Args:
        model: A local checkpoint directory, a `.gguf` file or a built-in alias.
        output_dir: The directory to write.
        config: What to remove and how to choose it.
        target_speedup: Remove the fewest sublayers whose predicted speed-up reaches this (a `SpeedupTarget`, or a
            number for the defaults: both phases, batch 1, context 1024, the analytical cost model); `config` then
            gives neither `num_layers` nor `ratio`. The plan counts `config`'s protected and excluded layers and
            its replacement's cost, and is logged (INFO) before the scoring starts.
        dtype: `"auto"` (the checkpoint's), `"float32"`, `"float16"` or `"bfloat16"`.
        device: Device for scoring, the replacement fit and the export: `"auto"` (default: CUDA when torch sees
            a GPU, else the CPU, logged with the reason), `"cpu"`, `"cuda"`.
        export: `None` or `"onnx"`.
        overwrite: Replace an existing output directory written by optimum-gatenorm.
        allow_pickle: Accept `pytorch_model.bin` weights (`torch.load(weights_only=True)`).
        calibration_text: Text files for data-driven criteria.
        calibration_samples: Calibration windows.
        calibration_length: Tokens per calibration window.
        max_memory: The memory the model's weights may take here (bytes, or a size such as `"24GB"`). A checkpoint
            whose weights are larger is pruned without loading it (`GateNormPruner.prune_streamed`: file to file,
            one tensor at a time), which takes a data-free request (`gate_norm`, `replacement="none"`) and no
            export. `None` (default): the memory the system says is available (Linux), refusing a request that
            would not fit rather than running out of memory later.
        progress: Show progress on stderr: tqdm bars for the scoring, the replacement fit and its held-out KL
            check, and a start and a "done in N s" line for loading, saving, the ONNX export and its check. `None`
            (default): all but the bar of a weight-level scoring (milliseconds), as `GateNormPruner.prune`;
            `False`: none (the lines go to the INFO log instead).

    Returns:
        What was written; `result.summary()` is what `optimum-cli gatenorm prune` prints, and is also logged (INFO,
        logger `optimum_gatenorm.summary`) as the run goes: the report's summary when the pruning ends, where it
        was saved at the end.

    Raises:
        InvalidConfigError: A request the model cannot meet (an unreachable target speed-up included), a bad
            device/dtype/export combination, a data-driven criterion without calibration text.
        OutputExistsError, OutputNotWritableError: The output cannot or must not be written.
        ModelNotFoundError, InvalidCheckpointError, UnsupportedModelError: The model cannot be used.
    """
    import torch

    target_speedup = _check_arguments(config, target_speedup, export, dtype)
    inputs = [*model_inputs(model), *(("calibration text", path) for path in calibration_text or ())]
    check_output_path(output_dir, overwrite, directory=True, inputs=inputs)
    requested, device = device, resolve_device(device, announce=False)
    budget = parse_size(max_memory, "max_memory") if max_memory is not None else None
    pruner = GateNormPruner.from_pretrained(
        model, dtype="auto" if dtype == "auto" else getattr(torch, dtype), allow_pickle=allow_pickle
    )
    inputs.append(("model", pruner.checkpoint_path))
    check_output_path(output_dir, overwrite, directory=True, inputs=inputs)
    streamed = _streams(pruner, config, max_memory, budget, dtype=dtype, export=export)
    planned = None
    if target_speedup is not None:
        config, planned = plan_config(pruner.config, config, target_speedup)
        logger.info("%s", planned["summary"])
    check_request(config, pruner.config)
    onnx_dtype = None
    if export == "onnx":
        onnx_dtype = export_dtype(_checkpoint_dtype(pruner.config) if dtype == "auto" else dtype, device)
        check_onnx_exportable(pruner.config)
    calibration = _calibration(pruner, calibration_text, calibration_samples, calibration_length)
    require_calibration(get_criterion(config.criterion), calibration)

    announce_device(requested, device)  # every check passed: the work starts here
    scores = pruner.score(
        config.criterion, calibration=calibration, seed=config.seed, device=device, progress=progress
    )
    output_dir = Path(output_dir)
    if streamed:
        with atomic_output_dir(
            output_dir, overwrite=overwrite, inputs=inputs, expected_bytes=checkpoint_bytes(pruner.checkpoint)
        ) as tmp:
            report = pruner.prune_streamed(config, tmp, scores=scores, device=device, progress=progress)
            write_companions(tmp, pruner.checkpoint_path, report)
            write_model_card(tmp, report, source=str(model), exports={})
        return _finished(PruneResult(report=report, output_dir=output_dir, exports={}, planned=planned))
    pruned_model, report = pruner.prune(config, scores=scores, calibration=calibration, progress=progress)

    exports: dict[str, Path] = {}
    max_diff = None
    expected = model_bytes(pruned_model) * (2 if export == "onnx" else 1)
    with atomic_output_dir(output_dir, overwrite=overwrite, inputs=inputs, expected_bytes=expected) as tmp:
        with phase("Saving the pruned checkpoint", progress is not False, logger):
            write_pruned(pruned_model, tmp, report=report)
        if export == "onnx":
            max_diff = export_onnx_into(
                pruned_model, tmp / "onnx", device=device, dtype=onnx_dtype, progress=progress is not False
            )
            mark_output(tmp / "onnx")
            exports["onnx"] = output_dir / "onnx"
        write_model_card(tmp, report, source=str(model), exports={name: name for name in exports})
    result = PruneResult(
        report=report, output_dir=output_dir, exports=exports, validation_max_diff=max_diff, planned=planned
    )
    return _finished(result)


def _finished(result: PruneResult) -> PruneResult:
    summary_logger.info("%s", result._saved_summary())  # `pruner.prune` logged the report's summary
    return result


def _check_arguments(config, target_speedup, export, dtype) -> "SpeedupTarget | None":
    """`prune_and_save`'s checks of its own arguments; returns `target_speedup` as a `SpeedupTarget`."""
    if not isinstance(config, GateNormConfig):
        raise TypeError(f"config must be a GateNormConfig, got {type(config).__name__}")
    if target_speedup is not None and not isinstance(target_speedup, SpeedupTarget):
        target_speedup = SpeedupTarget(target_speedup)
    if target_speedup is not None and config.has_amount:
        raise InvalidConfigError("give target_speedup or config.num_layers / ratio, not both")
    if export is not None and export not in EXPORT_FORMATS:
        raise InvalidConfigError(f"export must be one of {', '.join(EXPORT_FORMATS)} or None, got {export!r}")
    if export == "onnx":
        require_onnx(param("export", "onnx"))
    if dtype not in ("auto", "float32", "float16", "bfloat16"):
        raise InvalidConfigError(f"dtype must be auto, float32, float16 or bfloat16, got {dtype!r}")
    return target_speedup
