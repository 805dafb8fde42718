"""qwidgets engine: Darknet models in pure NumPy.

    import engine
    m = engine.load("yolov3-tiny.cfg", weights="yolov3-tiny.weights")
    outs = m.forward(x)              # x: (3, 416, 416) float32; outs[i] = output of Darknet layer i
    dets = m.detect("dog.jpg")       # letterbox, FLOAT forward, decode, NMS

This package imports no widget code; the views in `qwidgets` talk to it through its API.
"""
from engine.errors import (ArgumentError, CfgError, EditError, EngineError, FileError, ImageError, RecordError,
                           UnsupportedError, WeightsError)
from engine.graph import Graph, Node
from engine.model import Model, load
from engine.quant.modes import Mode
from engine.session.session import Session

__all__ = ["load", "Model", "Session", "Mode", "Graph", "Node", "EngineError", "CfgError", "WeightsError", "ImageError",
           "UnsupportedError", "RecordError", "ArgumentError", "EditError", "FileError"]
