"""Darknet [region] (YOLOv2 head): sigmoid on x, y, objectness; softmax (or sigmoid) over classes.

Anchors are in grid-cell units. Decoding lives in engine/detect.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.layers.activations import logistic
from engine.layers.base import LAYERS, BuildContext, Layer, Scratch, refuse, darknet_keys


def softmax_axis(x: np.ndarray, axis: int, temperature: float = 1.0) -> np.ndarray:
    z = x / np.float32(temperature) if temperature != 1.0 else x
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def region_activate(x: np.ndarray, num: int, coords: int, classes: int, softmax: int) -> np.ndarray:
    c, h, w = x.shape
    y = x.astype(np.float32, copy=True).reshape(num, coords + 1 + classes, h, w)
    logistic(y[:, 0:2])
    logistic(y[:, coords:coords + 1])
    cls = y[:, coords + 1:]
    if softmax:
        cls[...] = softmax_axis(cls, axis=1)
    else:
        logistic(cls)
    return y.reshape(c, h, w)


@LAYERS.register("region")
@dataclass(kw_only=True)
class Region(Layer):
    kind = "region"
    is_head = True
    float_only = True
    cfg_keys = darknet_keys(
        "absolute anchors background bias_match class_scale classes classfix coord_scale coords focal_loss "
        "jitter log map mask_scale max noobject_scale num object_scale random rescore resize softmax sqrt "
        "thresh tree")
    anchors: tuple[float, ...]
    num: int
    classes: int
    coords: int
    softmax: int

    @classmethod
    def build(cls, ctx: BuildContext) -> "Region":
        sec = ctx.section
        for key in ("tree", "map"):
            if sec.has(key):
                refuse(sec, key, "")
        num = sec.get_int("num", 1, lo=1, hi=1 << 12)
        classes = sec.get_int("classes", 20, lo=1, hi=1 << 16)
        coords = sec.get_int("coords", 4, lo=4, hi=4)
        anchors = tuple(sec.get_float_list("anchors", [0.5] * (2 * num)))
        if len(anchors) < 2 * num:
            raise sec.error(f"anchors= has {len(anchors)} values; num={num} needs {2 * num}", "anchors")
        src, (c, h, w) = ctx.previous()
        if c != num * (coords + 1 + classes):
            raise sec.error(f"input has {c} channels; num={num} x ({coords} + 1 + {classes} classes) = "
                            f"{num * (coords + 1 + classes)} expected (check the previous conv's filters=)")
        return cls(index=ctx.index, inputs=(src,), in_shapes=((c, h, w),), out_shape=(c, h, w), line=sec.line,
                   source=sec.path, anchors=anchors, num=num, classes=classes, coords=coords,
                   softmax=sec.get_int("softmax", 0, lo=0, hi=1))

    def forward_float(self, xs: list[np.ndarray], prep: None, scratch: Scratch) -> np.ndarray:
        return region_activate(xs[0], self.num, self.coords, self.classes, self.softmax)
