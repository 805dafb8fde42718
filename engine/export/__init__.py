"""Model export: ONNX float graphs (`export_onnx`), integer ONNX graphs bit-exact with ONNX Runtime
(`export_int8`, engine/export/onnx_int8.py). Darknet `.weights` files are written by
`Model.save_weights` (engine/weights.py). `onnx` is imported only when an export runs."""
from engine.export.onnx_float import build_onnx, export_onnx
from engine.export.onnx_int8 import build_int8, export_int8

__all__ = ["build_onnx", "export_onnx", "build_int8", "export_int8"]
