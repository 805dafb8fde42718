"""ONNX node groups for the detection heads with `heads="activated"`: [yolo], [region], [detection].

They apply the same in-layer activations as engine/layers/yolo.py, region.py and misc.py, so the
exported `layer{i}` equals the engine's output of layer i. With `heads="raw"` these layers are not
exported at all and the graph output is the head's input (the raw conv output).
"""
from __future__ import annotations

from engine.export.onnx_graph import GraphBuilder
from engine.export.onnx_ops import EMITTERS
from engine.layers.base import Params


def _planes(b: GraphBuilder, x: str, anchors: int, per_anchor: int, h: int, w: int) -> str:
    """(N, A*P, H, W) -> (N, A, P, H, W): one (H, W) plane per anchor and field."""
    return b.reshape(x, [0, anchors, per_anchor, h, w], what="planes")


def _fields(b: GraphBuilder, x: str, bounds: list[tuple[int, int, str]]) -> list[str]:
    return [b.slice(x, [lo], [hi], [2], what=name) for lo, hi, name in bounds]


@EMITTERS.register("yolo")
def yolo(b: GraphBuilder, layer, params: Params, xs: list[str], out: str) -> None:
    """sigmoid on x, y, objectness and every class; AB scale_x_y: v -> S*v - (S-1)/2 on x, y."""
    c, h, w = layer.in_shapes[0]
    a, k = len(layer.mask), layer.classes
    y = _planes(b, xs[0], a, 5 + k, h, w)
    xy, wh, rest = _fields(b, y, [(0, 2, "xy"), (2, 4, "wh"), (4, 5 + k, "scores")])
    if not layer.new_coords:    # new_coords=1: the previous conv already applied the logistic
        xy = b.op("Sigmoid", [xy], "xy_sigmoid")
        rest = b.op("Sigmoid", [rest], "scores_sigmoid")
    if layer.scale_x_y != 1.0:
        xy = b.op("Mul", [xy, b.scalar(layer.scale_x_y)], "xy_scale")
        xy = b.op("Sub", [xy, b.scalar(0.5 * (layer.scale_x_y - 1.0))], "xy_shift")
    y = b.op("Concat", [xy, wh, rest], "concat", axis=2)
    b.reshape(y, [0, c, h, w], output=out)


@EMITTERS.register("region")
def region(b: GraphBuilder, layer, params: Params, xs: list[str], out: str) -> None:
    """sigmoid on x, y, objectness; softmax over the class planes (or sigmoid if softmax=0)."""
    c, h, w = layer.in_shapes[0]
    n, k = layer.coords, layer.classes
    y = _planes(b, xs[0], layer.num, n + 1 + k, h, w)
    xy, wh, obj, cls = _fields(b, y, [(0, 2, "xy"), (2, n, "wh"), (n, n + 1, "obj"), (n + 1, n + 1 + k, "classes")])
    xy = b.op("Sigmoid", [xy], "xy_sigmoid")
    obj = b.op("Sigmoid", [obj], "obj_sigmoid")
    cls = b.op("Softmax", [cls], "classes_softmax", axis=2) if layer.softmax else \
        b.op("Sigmoid", [cls], "classes_sigmoid")
    y = b.op("Concat", [xy, wh, obj, cls], "concat", axis=2)
    b.reshape(y, [0, c, h, w], output=out)


@EMITTERS.register("detection")
def detection(b: GraphBuilder, layer, params: Params, xs: list[str], out: str) -> None:
    """YOLOv1: optional softmax over K for each of the S*S cells in the leading class block."""
    c, h, w = layer.in_shapes[0]
    if not layer.softmax:
        b.op("Identity", xs, "detection", output=out)
        return
    n = layer.side * layer.side * layer.classes
    flat = b.op("Flatten", xs, "flatten", axis=1)
    probs = b.slice(flat, [0], [n], [1], what="class_block")
    probs = b.reshape(probs, [0, layer.side * layer.side, layer.classes], what="cells")
    probs = b.reshape(b.op("Softmax", [probs], "softmax", axis=2), [0, n], what="class_flat")
    rest = b.slice(flat, [n], [c * h * w], [1], what="boxes")
    b.reshape(b.op("Concat", [probs, rest], "concat", axis=1), [0, c, h, w], output=out)
