"""What the serving-engine exports (GGUF for llama.cpp, Nemotron-NAS for vLLM / TensorRT-LLM / SGLang) share.

Both formats describe a pruned Llama-family model layer by layer: a layer either keeps its attention (with the
model's query and key-value head counts) or has none (no input norm, no q/k/v/o, no KV cache), and every layer
keeps its MLP. `ServingPlan` is that description, built once from a config; the exporters only write it.

A removed sublayer replaced by a map (`pruning.replacement`): GGUF writes `linear` as llama.cpp's `deci` "linear
attention" layer (`head_count > 0`, `head_count_kv == 0`, `attn_norm` + an n_embd x n_embd `attn_output`, no bias);
it has no form for `mean` (a constant update), which is refused. Nemotron-NAS depends on the engine that reads it
(`NEMOTRON_NAS_ENGINES`): vLLM's reader (`nemotron_nas.py`) knows only `attention.no_op` and would build a
`replace_with_linear` layer as full attention, so `vllm` refuses both; TensorRT-LLM's PyTorch backend
(`tensorrt_llm/_torch/models/modeling_nemotron_nas.py`) builds `replace_with_linear` as the layer's input norm and a
bias-free hidden x hidden `Linear` (`self_attn.linear_attn`), exactly the `linear` map, so `tensorrt-llm` writes it
(and refuses `mean`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..adapters import HeadDims, get_adapter
from ..checkpoints.record import get_pruned_layers, get_replacements
from ..compat import rope_settings
from ..errors import UnsupportedModelError
from ..params import param


if TYPE_CHECKING:
    from transformers import PretrainedConfig

__all__ = ["DECI_FFN_MULTIPLE", "NEMOTRON_NAS_ENGINES", "ServingPlan", "ffn_mult_for", "intermediate_size_for"]

# DeciLM rounds every FFN width up to a multiple of 256 (`_find_multiple(..., 256)` in vLLM's nemotron_nas.py,
# llama.cpp's conversion/deci.py and NVIDIA's modeling_decilm.py).
DECI_FFN_MULTIPLE = 256

# The engines a Nemotron-NAS checkpoint is written for: whether each reads `attention.replace_with_linear`.
NEMOTRON_NAS_ENGINES = {"vllm": False, "tensorrt-llm": True}

# Rope settings both formats carry: none (plain rope), linear position interpolation and Llama 3's frequency
# smoothing (`rope_type: llama3`, written to GGUF as the `rope_freqs` factors, as llama.cpp's converter does).
_ROPE_TYPES = ("default", "linear", "llama3")


def intermediate_size_for(ffn_mult: float, hidden_size: int) -> int:
    """DeciLM's `_ffn_mult_to_intermediate_size`: `int(2 * ffn_mult * hidden / 3)` rounded up to a multiple of 256.

    The same function in vLLM (`vllm/model_executor/models/nemotron_nas.py`), llama.cpp's converter
    (`conversion/deci.py`, `DeciModel._ffn_mult_to_intermediate_size`) and NVIDIA's `modeling_decilm.py`.
    """
    size = int(2 * ffn_mult * hidden_size / 3)
    return size if size % DECI_FFN_MULTIPLE == 0 else size + DECI_FFN_MULTIPLE - size % DECI_FFN_MULTIPLE


def ffn_mult_for(intermediate_size: int, hidden_size: int) -> float:
    """The `ffn_mult` that DeciLM loaders turn back into exactly `intermediate_size`.

    Raises:
        UnsupportedModelError: If no `ffn_mult` gives `intermediate_size` (DeciLM widths are multiples of 256).
    """
    mult = 3 * intermediate_size / (2 * hidden_size)
    if intermediate_size_for(mult, hidden_size) != intermediate_size:
        raise UnsupportedModelError(
            f"intermediate_size={intermediate_size} cannot be written as a Nemotron-NAS ffn_mult: DeciLM loaders round "
            f"the FFN width up to a multiple of {DECI_FFN_MULTIPLE}; use {param('format', 'gguf')} or {param('format', 'onnx')} for this model"
        )
    return mult


@dataclass(frozen=True)
class ServingPlan:
    """One pruned (or unpruned) Llama-family model, layer by layer, as the serving formats describe it.

    Args:
        num_layers: Decoder layers.
        pruned: Layers whose attention sublayer was removed (sorted).
        dims: Head geometry of every kept attention sublayer.
        intermediate_size: MLP width of every layer.
        rope_type: `"default"`, `"linear"` or `"llama3"`.
        tied_embeddings: The LM head is the token embedding (no `lm_head.weight` is written).
        linear: Pruned layers replaced by a `linear` map (GGUF, and Nemotron-NAS for TensorRT-LLM; a subset of
            `pruned`).
    """

    num_layers: int
    pruned: tuple[int, ...]
    dims: HeadDims
    intermediate_size: int
    rope_type: str
    tied_embeddings: bool
    linear: tuple[int, ...] = ()

    @property
    def kept(self) -> tuple[bool, ...]:
        """Per layer: whether its attention sublayer is kept."""
        return tuple(index not in self.pruned for index in range(self.num_layers))

    @classmethod
    def from_config(cls, config: "PretrainedConfig", fmt: str, engine: str = "vllm") -> "ServingPlan":
        """Checks that `config` can be served in format `fmt` (`"gguf"` or `"nemotron-nas"`) and describes it.

        `engine`: the reader of a Nemotron-NAS checkpoint (`NEMOTRON_NAS_ENGINES`); ignored for GGUF.

        Raises:
            UnsupportedModelError: With the reason, on one line: an architecture the format cannot express (the
                adapter's `serving.llama_cpp_arch` / `serving.nemotron_nas`), an option of `serving.unsupported_flags`, or a rope
                scaling the format does not carry.
        """
        adapter = get_adapter(config)
        supported = adapter.serving.llama_cpp_arch is not None if fmt == "gguf" else adapter.serving.nemotron_nas
        if not supported:
            raise UnsupportedModelError(
                f"{param('format', fmt)} does not support model_type {config.model_type!r}: only Llama-family "
                f"layouts (llama, mistral) are written; use {param('format', 'onnx')}"
            )
        for flag, reason in adapter.serving.unsupported_flags:
            if getattr(config, flag, None):
                raise UnsupportedModelError(
                    f"{param('format', fmt)} cannot write {config.model_type} with {flag}={getattr(config, flag)!r}: {reason}"
                )
        replacements = get_replacements(config)
        if replacements and fmt != "gguf" and not NEMOTRON_NAS_ENGINES[engine]:
            raise UnsupportedModelError(
                f"{param('format', fmt)} {param('engine', engine)} cannot hold the replaced attention sublayers of "
                f"layers {sorted(replacements)}: vLLM's Nemotron-NAS reader ignores replace_with_linear and would "
                f"build them as full attention; pass {param('engine', 'tensorrt-llm')} (TensorRT-LLM reads them), "
                f"prune with {param('replacement', 'none')}, or export {param('format', 'gguf')} or "
                f"{param('format', 'onnx')}"
            )
        mean = sorted(layer for layer, kind in replacements.items() if kind == "mean")
        if mean:
            graph = "llama.cpp's deci graph" if fmt == "gguf" else "TensorRT-LLM's bias-free linear attention"
            raise UnsupportedModelError(
                f"{param('format', fmt)} cannot hold the mean replacement of layers {mean}: {graph} has no constant "
                f"update; prune with {param('replacement', 'linear')} (a linear-attention layer) or export "
                f"{param('format', 'onnx')}"
            )
        rope = rope_settings(config).get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in _ROPE_TYPES:
            raise UnsupportedModelError(
                f"{param('format', fmt)} cannot write rope_scaling type {rope_type!r}; supported: {', '.join(_ROPE_TYPES)}"
            )
        return cls(
            num_layers=config.num_hidden_layers,
            pruned=tuple(sorted(get_pruned_layers(config))),
            dims=HeadDims.from_config(config),
            intermediate_size=config.intermediate_size,
            rope_type=rope_type,
            tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            linear=tuple(sorted(replacements)),
        )
