"""Model export: ONNX float graphs (`export_onnx`). Darknet `.weights` files are written by
`Model.save_weights` (engine/weights.py). `onnx` is imported only when an export runs."""
from engine.export.onnx_float import build_onnx, export_onnx

__all__ = ["build_onnx", "export_onnx"]
