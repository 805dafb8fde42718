"""Darknet layer types: one module per cfg section; importing this package registers them all."""
from engine.layers import (avgpool, connected, convolutional, cost, crop, detection, dropout, maxpool,  # noqa: F401
                           region, reorg, route, shortcut, softmax, upsample, yolo)
from engine.layers.base import LAYERS, BuildContext, Layer, Scratch

__all__ = ["LAYERS", "BuildContext", "Layer", "Scratch"]
