"""Exporting pruned models: ONNX for the oracles during a search, checked artifacts at the end.

``export_onnx`` is the fast per-candidate export; the final export (simplified,
compared with torch, optionally a TensorRT engine) builds on it.
"""

from hwprune.export.onnx import INPUT_NAME, OUTPUT_NAME, export_onnx, output_names, resolve_inputs

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "export_onnx", "output_names", "resolve_inputs"]
