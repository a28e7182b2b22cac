"""Exporters of pruned (and unpruned) models."""

from .onnx import check_onnx_exportable, export_onnx


__all__ = ["check_onnx_exportable", "export_onnx"]
