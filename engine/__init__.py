"""qwidgets engine: Darknet models in pure NumPy.

    import engine
    m = engine.load("yolov3-tiny.cfg", weights="yolov3-tiny.weights")
    outs = m.forward(x)              # x: (3, 416, 416) float32; outs[i] = output of Darknet layer i
    dets = m.detect("dog.jpg")       # letterbox, FLOAT forward, decode, NMS

This package imports no widget code; the views in `qwidgets` talk to it through its API.
"""
from engine.kernels.heap import keep_freed_memory

keep_freed_memory()          # before any forward: freed buffers stay in the heap (engine/kernels/heap.py)

from engine.errors import (ArgumentError, Cancelled, CfgError, EditError, EngineError, FileError, ImageError, RecordError,
                           UnsupportedError, WeightsError)  # noqa: E402
from engine.graph import Graph, Node  # noqa: E402
from engine.model import Model, load  # noqa: E402
from engine.quant.modes import Mode  # noqa: E402
from engine.session.session import Session  # noqa: E402

__all__ = ["load", "Model", "Session", "Mode", "Graph", "Node", "EngineError", "CfgError", "WeightsError", "ImageError",
           "UnsupportedError", "RecordError", "ArgumentError", "EditError", "FileError", "Cancelled"]
