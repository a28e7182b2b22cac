"""The model card a pruned checkpoint carries: `README.md` in the Hugging Face model-card format.

`prune` (`pipeline.prune_and_save`) writes it beside the weights, so the output explains itself and can be pushed to
a hub as is: the metadata block (`huggingface_hub.ModelCardData`: library, pipeline tag, tags, and for a built-in
model its `base_model` and licence), then what was removed and replaced, by which criterion and version, what was
measured during the run, and how to load it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..version import __version__


if TYPE_CHECKING:
    from ..report import PruningReport

__all__ = ["CARD_FILE", "model_card", "write_model_card"]

CARD_FILE = "README.md"

# Built-in alias -> (hub id of the release its GGUF was made from, licence id on the hub)
_BUILTIN_ORIGINS = {
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    "gemma3-270m": ("google/gemma-3-270m", "gemma"),
}

_REPLACEMENT_WORDS = {
    "linear": "a bias-free d x d linear map of the layer's normalised input (one d x d product per token, no "
    "attention, no KV cache; llama.cpp's `deci` linear-attention layer)",
    "mean": "a constant vector (the mean of what the sublayer added)",
}


def _layers(layers) -> str:
    """`layer 3`, `layers 3 and 5`, `layers 1, 3 and 5`."""
    layers = [str(i) for i in layers]
    if len(layers) <= 1:
        return f"layer {layers[0]}" if layers else "no layer"
    return f"layers {', '.join(layers[:-1])} and {layers[-1]}"


def model_card(report: "PruningReport", *, source: str, exports: "dict[str, str] | None" = None) -> str:
    """The model card text of a checkpoint pruned as `report` says, from the model `source` (path or alias).

    Args:
        report: The pruning report of the run.
        source: The model that was pruned, as the user named it (a built-in alias adds `base_model` and licence).
        exports: Export format -> folder inside the checkpoint (e.g. `{"onnx": "onnx"}`).
    """
    sections = (_metadata(source), _summary(report, source), _changes(report), _measured(report, source))
    text = "\n".join(line for section in sections for line in section) + "\n" + _loading(exports)
    return text + f"\nWritten by optimum-gatenorm {__version__}.\n"


def _metadata(source: str) -> list[str]:
    from huggingface_hub import ModelCardData

    from .hub import parse_hub_id
    from .models import builtin_alias

    builtin = builtin_alias(source)  # None for a local directory named like an alias
    base_model, license_id = _BUILTIN_ORIGINS.get(builtin.alias, (None, None)) if builtin else (None, None)
    hub_id = parse_hub_id(source) if builtin is None and not Path(source).expanduser().exists() else None
    if hub_id is not None:  # a hub model: its id is the base model (its licence is on its own card)
        base_model = hub_id[0]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        base_model=base_model,
        license=license_id,
        tags=["optimum-gatenorm", "attention-pruning", "pruned"],
    )
    return ["---", data.to_yaml(), "---", ""]


def _summary(report: "PruningReport", source: str) -> list[str]:
    removed, pruned, total = report.removed_layers, report.pruned_layers, report.num_hidden_layers
    earlier = report.earlier_layers
    what = f"{_layers(removed)} removed by optimum-gatenorm {report.gatenorm_version}"
    if earlier:  # the input was already pruned: the card counts every removed layer, and says which run removed it
        what = (
            f"{_layers(pruned)} removed: {_layers(removed)} by this run of optimum-gatenorm "
            f"{report.gatenorm_version}, {_layers(earlier)} by an earlier run, which wrote the input"
        )
    return [
        f"# {Path(str(source)).name}: {len(pruned)} of {total} attention sublayers removed",
        "",
        f"`{source}` with the attention sublayers of {what} ([Gate-Norm, "
        "arXiv:2512.20636](https://arxiv.org/abs/2512.20636)). Each of those layers keeps its MLP; the residual "
        f"stream passes through where the attention was, and the KV cache holds only the "
        f"{len(report.kept_attention_layers)} layers that keep attention.",
        "",
    ]


def _earlier(report: "PruningReport") -> list[str]:
    """The line on the layers an earlier run removed, grouped by their criterion and replacement (none when the input
    was not pruned)."""
    groups: dict[tuple[str, str], list[int]] = {}
    for layer in report.earlier_layers:
        criterion = report.layer_criteria.get(str(layer))
        kind = report.layer_replacements.get(str(layer))
        chosen = f"chosen by `{criterion}`" if criterion else "criterion not recorded"
        replaced = f"replacement `{kind}`" if kind else "removed plainly"
        groups.setdefault((chosen, replaced), []).append(layer)
    parts = [f"{_layers(layers)} ({chosen}, {replaced})" for (chosen, replaced), layers in groups.items()]
    if not parts:
        return []
    return [f"- **Removed by an earlier run** (the input was already pruned; its record is kept): {'; '.join(parts)}."]


def _changes(report: "PruningReport") -> list[str]:
    removed, total, config, fit = report.removed_layers, report.num_hidden_layers, report.config, report.replacement
    before, after = report.num_parameters_before, report.num_parameters_after
    if fit:
        calibration = fit.get("calibration", {}).get("source", "calibration text")
        replaced = (
            f"- **Replaced** each by {_REPLACEMENT_WORDS.get(fit['kind'], fit['kind'])}, fitted in closed form on "
            f"{calibration} ({fit['seconds']:.1f} s)."
        )
    else:
        replaced = "- **Replaced**: no; the removed sublayers add nothing (plain removal)."
    excluded = f", never removed: {_layers(report.excluded_layers)}" if report.excluded_layers else ""
    data_words = "no user data" if report.data_free else "calibration text"
    return [
        "## What was changed",
        "",
        f"- **Removed{' by this run' if report.earlier_layers else ''}**: the attention sublayers of "
        f"{_layers(removed)} ({len(removed)} of {total}); without attention now: {_layers(report.pruned_layers)} "
        f"({len(report.pruned_layers)} of {total}).",
        replaced,
        f"- **Chosen by** the criterion `{report.criterion}` ({data_words}; scored in {report.scoring_seconds:.2f} s), "
        f"lowest scores first; protect_first {config.get('protect_first')}, protect_last "
        f"{config.get('protect_last')}, min_gap {config.get('min_gap')}, seed {config.get('seed')}{excluded}.",
        *_earlier(report),
        f"- **Parameters**: {before:,} before{' this run' if report.earlier_layers else ''}, {after:,} after "
        f"(-{(before - after) / before:.2%}).",
        "",
    ]


def _measured(report: "PruningReport", source: str) -> list[str]:
    lines = ["## What was measured", ""]
    recovery = (report.replacement or {}).get("recovery")
    if recovery:
        lines.append(
            f"- On {recovery['source']} (not used by the fit), the mean KL divergence of the next-token distribution "
            f"from the model before pruning is {recovery['kl_with']:.4f} with the replacement and "
            f"{recovery['kl_without']:.4f} removed plainly."
        )
    lines += [f"- Warning: {warning.removeprefix('warning: ').rstrip('.')}." for warning in report.warnings]
    return lines + [
        "- Nothing else was measured by this run. Measure the quality on your own text against the original with "
        f"`optimum-cli gatenorm eval --model <this folder> --reference {source} --text FILE` (perplexity, KL "
        "divergence, top-1 agreement).",
        "- Every number above is also in `gatenorm_report.json`.",
        "",
    ]


_LOADING = """## How to load it

The pruned layers are not a stock transformers layer: import optimum-gatenorm first (without the import, transformers
refuses the checkpoint rather than load it wrongly). It is installed from its source, not from a package index: in a
clone of the optimum-gatenorm repository, `pip install -e .` (version {version} or later).

```python
import optimum_gatenorm  # registers the pruned layers with transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("path/to/this/checkpoint")
tokenizer = AutoTokenizer.from_pretrained("path/to/this/checkpoint")
```
"""

_LOADING_ONNX = """
The ONNX export in `{folder}/` runs with onnxruntime, no optimum-gatenorm needed:

```python
from optimum.onnxruntime import ORTModelForCausalLM

model = ORTModelForCausalLM.from_pretrained("path/to/this/checkpoint/{folder}")
```
"""


def _loading(exports: "dict[str, str] | None") -> str:
    onnx = (exports or {}).get("onnx")
    return _LOADING.format(version=__version__) + (_LOADING_ONNX.format(folder=onnx) if onnx else "")


def write_model_card(
    directory: str | Path, report: "PruningReport", *, source: str, exports: "dict[str, str] | None" = None
) -> Path:
    """Writes `model_card(...)` as `README.md` into `directory` (a checkpoint being written); returns its path."""
    path = Path(directory) / CARD_FILE
    path.write_text(model_card(report, source=source, exports=exports), encoding="utf-8")
    return path
