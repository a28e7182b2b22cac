"""Nemotron-NAS export: a pruned Llama-family model as NVIDIA's `DeciLMForCausalLM` checkpoint.

Nemotron-NAS (e.g. nvidia/Llama-3_1-Nemotron-51B-Instruct) is a Llama whose layers are described one by one in
`config.block_configs`; vLLM (`vllm/model_executor/models/nemotron_nas.py`), TensorRT-LLM
(`modeling_nemotron_nas.py`), SGLang and MLX load it natively, and llama.cpp's `convert_hf_to_gguf.py`
(`conversion/deci.py`, `DeciModel`) converts it to its `deci` GGUF architecture. What each field must hold, from
those loaders:

- `architectures: ["DeciLMForCausalLM"]` selects the model class (vLLM's registry, llama.cpp's
  `ModelBase.register("DeciLMForCausalLM")`); `model_type: "nemotron-nas"` is the config type of NVIDIA's
  `configuration_decilm.py`. transformers has no such built-in type, so a plain `from_pretrained` without remote
  code fails instead of loading a Llama with random attention weights.
- `block_configs[i].attention`: `no_op: true` for a removed sublayer (vLLM then builds no `self_attn` and no
  `input_layernorm` and allocates no KV cache for the layer); `n_heads_in_group` is query heads per KV head
  (`num_kv_heads = num_attention_heads // n_heads_in_group`, vLLM and llama.cpp) and `null` with
  `replace_with_linear: false` for a removed sublayer (llama.cpp: head counts 0, an attention-free layer; its
  converter indexes `n_heads_in_group` and `replace_with_linear`, so both keys are always written).
- A removed sublayer replaced by a `linear` map, for `engine="tensorrt-llm"` only (vLLM builds a
  `replace_with_linear` layer as full attention): `no_op: false`, `replace_with_linear: true`, `n_heads_in_group:
  null`. TensorRT-LLM's PyTorch backend (`_torch/models/modeling_nemotron_nas.py`) then builds the layer's
  `input_layernorm` and `self_attn = LinearAttention`, a bias-free hidden x hidden `Linear` named
  `self_attn.linear_attn`, and adds `linear_attn(input_layernorm(h))` to the residual: the map's own norm and
  projection, written under those names. llama.cpp's converter reads the same layout (`deci` linear attention:
  `model.layers.{i}.self_attn.linear_attn` -> `attn_output`, head count kept, no KV heads).
- `block_configs[i].ffn`: `no_op: false`, `replace_with_linear: false`, `ffn_mult` with
  `intermediate_size = round_up(int(2 * ffn_mult * hidden / 3), 256)` (`_ffn_mult_to_intermediate_size` in all of
  them): a width that is not a multiple of 256 cannot be expressed and is refused (`serving.ffn_mult_for`).
- Weights keep transformers' Llama names (`model.layers.{i}.self_attn.{q,k,v,o}_proj`,
  `input_layernorm`, `post_attention_layernorm`, `mlp.{gate,up,down}_proj`, `model.embed_tokens`, `model.norm`,
  `lm_head` unless `tie_word_embeddings`); a removed sublayer has none of its `self_attn.*` or `input_layernorm`
  tensors. Weights are written as float32 safetensors (the exporter loads the model in float32).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..checkpoints.handle import ModelHandle
from ..checkpoints.structure import REPLACEMENT_MODULE
from ..compat import rope_settings
from ..errors import InvalidConfigError
from ..outputs import atomic_output_dir, check_output_path, holds_outputs
from ..params import param
from .serving import NEMOTRON_NAS_ENGINES, ServingPlan, ffn_mult_for


if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["NEMOTRON_NAS_ENGINES", "block_configs", "export_nemotron_nas", "linear_attention_names"]

logger = logging.getLogger(__name__)

# Config keys of the source that a DeciLM config does not have: the pruning record (a Nemotron-NAS reader must not
# see a quantization config it does not know) and the per-model head count / width that block_configs replace.
_DROPPED_KEYS = ("quantization_config", "num_key_value_heads", "intermediate_size", "architectures", "model_type")


def block_configs(plan: ServingPlan) -> list[dict]:
    """`config.block_configs` of a Nemotron-NAS checkpoint for `plan`, one entry per decoder layer.

    Raises:
        UnsupportedModelError: If the MLP width cannot be written as an `ffn_mult`.
    """
    dims = plan.dims
    ffn = {"no_op": False, "replace_with_linear": False, "sparsify": None}
    ffn["ffn_mult"] = ffn_mult_for(plan.intermediate_size, dims.hidden_size)
    configs = []
    for index, keep in enumerate(plan.kept):
        linear = index in plan.linear
        attention = {
            "no_op": not (keep or linear),
            "replace_with_linear": linear,
            "n_heads_in_group": dims.num_heads // dims.num_kv_heads if keep else None,
            "sparsify": None,
            "num_sink_tokens": None,
            "window_length": None,
            "use_prefill_window_in_sink_attention": False,
            "unshifted_sink": False,
        }
        configs.append({"attention": attention, "ffn": dict(ffn)})
    return configs


def linear_attention_names(layer: int) -> dict[str, str]:
    """State-dict name of a `linear` replacement's tensor -> the name TensorRT-LLM's (and llama.cpp's) Nemotron-NAS
    reader loads it under: the layer's input norm and `self_attn.linear_attn`."""
    prefix = f"model.layers.{layer}"
    return {
        f"{prefix}.{REPLACEMENT_MODULE}.norm.weight": f"{prefix}.input_layernorm.weight",
        f"{prefix}.{REPLACEMENT_MODULE}.proj.weight": f"{prefix}.self_attn.linear_attn.weight",
    }


def _check_engine(engine: str) -> None:
    if engine not in NEMOTRON_NAS_ENGINES:
        raise InvalidConfigError(
            f"{param('engine', engine)} is not a Nemotron-NAS engine; choose one of {', '.join(NEMOTRON_NAS_ENGINES)}"
        )


@holds_outputs
def export_nemotron_nas(
    model_or_path: "PreTrainedModel | str | Path",
    output_dir: str | Path,
    *,
    overwrite: bool = False,
    allow_pickle: bool = False,
    tokenizer_from: str | Path | None = None,
    engine: str = "vllm",
) -> Path:
    """Exports a (pruned or unpruned) Llama-family causal LM as a Nemotron-NAS (`DeciLMForCausalLM`) checkpoint.

    The directory holds `config.json` (module docstring), `model.safetensors`, `generation_config.json` and the
    tokenizer files. It is written to a temporary directory and renamed into place.

    Args:
        model_or_path: An in-memory model, or a checkpoint directory / `.gguf` file / built-in alias.
        output_dir: Target directory.
        overwrite: Replace an existing `output_dir` written by optimum-gatenorm.
        allow_pickle: Accept `pytorch_model.bin` weights when loading from a path.
        tokenizer_from: Directory of the tokenizer to copy (default: the checkpoint's own).
        engine: The reader the checkpoint is for (`NEMOTRON_NAS_ENGINES`): `"vllm"` (default; attention-free layers
            only, a `linear` replacement refused) or `"tensorrt-llm"` (also `replace_with_linear` layers holding
            the fitted maps).

    Returns:
        The output directory.

    Raises:
        UnsupportedModelError: Not a Llama-family layout, an option Nemotron-NAS cannot express, a replacement the
            engine cannot read, or an MLP width that is not a multiple of 256 (checked before the weights load).
        InvalidConfigError: An unknown `engine`.
        OutputExistsError: `output_dir` exists and `overwrite` is false.
    """
    import torch
    from safetensors.torch import save_file

    from ..checkpoints.modeling import _copy_tokenizer
    from ..checkpoints.models import model_inputs
    from ..checkpoints.record import get_pruned_layers

    _check_engine(engine)
    inputs = model_inputs(model_or_path)
    check_output_path(output_dir, overwrite, directory=True, inputs=inputs)
    # Every check (the architecture, the FFN width) comes before the (slow) load.
    handle = ModelHandle.open(model_or_path, allow_pickle=allow_pickle)
    plan = ServingPlan.from_config(handle.config, "nemotron-nas", engine)
    blocks = block_configs(plan)
    model, source = handle.load(dtype=torch.float32).eval(), handle.source
    dtype = next(model.parameters()).dtype
    config = {k: v for k, v in model.config.to_dict().items() if k not in _DROPPED_KEYS}
    # DeciLM readers (llama.cpp's converter, vLLM) read rope_theta / rope_scaling, which 5.x keeps in rope_parameters.
    config.update(rope_settings(model.config))
    config.update(
        architectures=["DeciLMForCausalLM"],
        model_type="nemotron-nas",
        block_configs=blocks,
        gatenorm_pruned_attention_layers=sorted(get_pruned_layers(model.config)),
        gatenorm_linear_attention_layers=list(plan.linear),
        torch_dtype=str(dtype).removeprefix("torch."),
    )
    state = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in model.state_dict().items()}
    if plan.tied_embeddings:
        state.pop("lm_head.weight", None)
    for layer in plan.linear:
        for ours, theirs in linear_attention_names(layer).items():
            state[theirs] = state.pop(ours)
    inputs += [("model", source), ("tokenizer", tokenizer_from)]
    expected = sum(tensor.numel() * tensor.element_size() for tensor in state.values())
    with atomic_output_dir(output_dir, overwrite=overwrite, inputs=inputs, expected_bytes=expected) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer_dir = Path(tokenizer_from) if tokenizer_from is not None else source
        if tokenizer_dir is not None:
            _copy_tokenizer(tokenizer_dir, tmp)
    logger.info(
        "Wrote %s for %s (%d of %d attention layers kept, %d linear)",
        output_dir, engine, sum(plan.kept), len(plan.kept), len(plan.linear),
    )  # fmt: skip
    return Path(output_dir)
