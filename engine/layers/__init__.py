"""Darknet layer types: one module per cfg section; importing this package registers them all."""
from engine.layers import avgpool, connected, convolutional, maxpool, misc, region, reorg, route, shortcut, upsample, yolo  # noqa: F401
from engine.layers.base import LAYERS, BuildContext, Layer, Scratch

__all__ = ["LAYERS", "BuildContext", "Layer", "Scratch"]
