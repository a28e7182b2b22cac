"""Exporters of pruned (and unpruned) models: ONNX (onnxruntime), GGUF (llama.cpp) and Nemotron-NAS (vLLM,
TensorRT-LLM, SGLang; llama.cpp through its converter)."""

from .gguf import GGUF_TYPES, export_gguf
from .nemotron_nas import export_nemotron_nas
from .onnx import check_onnx_exportable, export_onnx


__all__ = ["FORMATS", "GGUF_TYPES", "check_onnx_exportable", "export_gguf", "export_nemotron_nas", "export_onnx"]

# The export formats, by the name `optimum-cli gatenorm export --format` takes, with the function that writes each.
FORMATS = {"onnx": export_onnx, "gguf": export_gguf, "nemotron-nas": export_nemotron_nas}
