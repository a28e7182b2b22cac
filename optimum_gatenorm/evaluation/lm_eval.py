"""Evaluating pruned checkpoints with the lm-evaluation-harness (`lm-eval`), through its `hf` model type.

lm-eval loads `--model hf` checkpoints with `AutoModelForCausalLM.from_pretrained`, which rebuilds the pruned
structure only in a process that has imported `optimum_gatenorm` (see `optimum_gatenorm.checkpoints`). Without the
import, lm-eval stops on the unknown `gatenorm` quantization method instead of evaluating random attention. So:

    python -m optimum_gatenorm.evaluation.lm_eval run --model hf --model_args pretrained=DIR,dtype=float32 --tasks TASKS ...

takes exactly lm-eval's own command-line arguments (`lm-eval --help`) and runs lm-eval's own CLI, after the
import. From Python, `evaluate_with_lm_eval` does the same through `lm_eval.simple_evaluate`.

Local tasks need no dataset hub: a YAML task with `dataset_path: json` and
`dataset_kwargs: {data_files: {test: FILE.jsonl}}` in a directory passed as `--include_path` / `include_path`;
`tests/data/lm_eval/gatenorm_tiny_mc.yaml` is an example. `data_files` paths are resolved against the current
working directory, not against the YAML file.

lm-eval is an optional dependency: `pip install -e ".[eval]"`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Registers the `gatenorm` quantization method with transformers (where it lives): the point of this module.
from ..checkpoints import modeling as _registers_the_quantizer  # noqa: F401
from ..checkpoints.record import get_pruned_layers
from ..checkpoints.tensors import inspect_checkpoint


__all__ = ["evaluate_with_lm_eval", "main"]

logger = logging.getLogger(__name__)

LM_EVAL_MISSING = 'lm-eval is not installed; install it with this project: pip install -e ".[eval]"'


def _require_lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise ImportError(LM_EVAL_MISSING) from None
    return lm_eval


def evaluate_with_lm_eval(
    model_path: str | Path,
    tasks: str | Sequence[str],
    *,
    include_path: str | Path | Sequence[str | Path] | None = None,
    limit: int | float | None = None,
    batch_size: int | str = 1,
    device: str = "cpu",
    dtype: str = "float32",
    **kwargs: Any,
) -> dict:
    """Evaluates a checkpoint (pruned by optimum-gatenorm or not) with lm-eval's `hf` model.

    Args:
        model_path: A local checkpoint directory with its tokenizer.
        tasks: lm-eval task names (built-in, or defined by YAML files under `include_path`).
        include_path: Directory (or directories) of local task YAML files.
        limit: Evaluate only this many documents per task (a float below 1: this fraction). For quick checks only.
        batch_size: lm-eval batch size (an int, or `"auto"`).
        device: Torch device, e.g. `"cpu"` or `"cuda:0"`.
        dtype: Weights dtype passed to lm-eval (`"float32"`, `"bfloat16"`, `"auto"`, ...).
        **kwargs: Passed to `lm_eval.simple_evaluate` (e.g. `num_fewshot`, `log_samples`, `random_seed`).

    Returns:
        lm-eval's results dictionary; the metrics are in `results["results"][task]`, e.g. `"acc,none"`.

    Raises:
        ImportError: If lm-eval is not installed.
        ModelNotFoundError: If `model_path` does not exist.
        InvalidCheckpointError: If the checkpoint or its pruning record is invalid.
    """
    lm_eval = _require_lm_eval()
    from lm_eval.tasks import TaskManager

    # Fail on a bad checkpoint with our message, before lm-eval builds its model.
    checkpoint = inspect_checkpoint(model_path)
    pruned = get_pruned_layers(checkpoint.config)
    logger.info("Evaluating %s (attention removed in layers %s) on %s", checkpoint.path, pruned, tasks)

    task_list = [tasks] if isinstance(tasks, str) else list(tasks)
    if include_path is None:
        includes = None
    elif isinstance(include_path, (str, Path)):
        includes = str(include_path)
    else:
        includes = [str(p) for p in include_path]
    # lm-eval splits model_args on commas and "=": a path containing either cannot be passed this way.
    path = str(checkpoint.path)
    if "," in path or "=" in path:
        raise ValueError(f"lm-eval cannot take a model path containing ',' or '=': {path!r}; move or link it")
    return lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={path},dtype={dtype}",
        tasks=task_list,
        task_manager=TaskManager(include_path=includes),
        limit=limit,
        batch_size=batch_size,
        device=device,
        **kwargs,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Runs lm-eval's own CLI (`lm-eval ...`) with `optimum_gatenorm` imported; `argv` defaults to `sys.argv[1:]`."""
    try:
        _require_lm_eval()
    except ImportError as error:
        raise SystemExit(f"error: {error}") from None
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        # lm-eval's CLI reads sys.argv itself (it rewrites legacy invocations without a subcommand).
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
