"""[detection]: the YOLOv1 head (flat class probabilities, confidences, coordinates)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.layers.base import LAYERS, BuildContext, Layer, Scratch, single_input, darknet_keys
from engine.layers.region import softmax_axis


@LAYERS.register("detection")
@dataclass(kw_only=True)
class Detection(Layer):
    """YOLOv1 head: flat [S*S*K class probs][S*S*B confidences][S*S*B*4 coords]; optional softmax."""
    kind = "detection"
    is_head = True
    float_only = True
    cfg_keys = darknet_keys(
        "class_scale classes coord_scale coords forced jitter max noobject_scale num object_scale random "
        "reorg rescore resize side softmax sqrt")
    side: int
    num: int
    classes: int
    coords: int
    sqrt: int
    softmax: int

    @classmethod
    def build(cls, ctx: BuildContext) -> "Detection":
        sec = ctx.section
        c, h, w = ctx.previous()[1]
        side = sec.get_int("side", 7, lo=1)
        num = sec.get_int("num", 1, lo=1)
        classes = sec.get_int("classes", 1, lo=1)
        coords = sec.get_int("coords", 4, lo=4, hi=4)
        expected = side * side * (classes + num * (coords + 1))
        if c * h * w != expected:
            raise sec.error(f"input has {c * h * w} values; side={side}, num={num}, classes={classes} needs "
                            f"{expected}")
        return single_input(cls, ctx, side=side, num=num, classes=classes, coords=coords,
                       sqrt=sec.get_int("sqrt", 0, lo=0, hi=1), softmax=sec.get_int("softmax", 0, lo=0, hi=1))

    def forward_float(self, xs: list[np.ndarray], prep: None, scratch: Scratch) -> np.ndarray:
        y = xs[0].astype(np.float32, copy=True)
        if self.softmax:
            flat = y.reshape(-1)
            n = self.side * self.side * self.classes
            flat[:n] = softmax_axis(flat[:n].reshape(-1, self.classes), 1).reshape(-1)
        return y
