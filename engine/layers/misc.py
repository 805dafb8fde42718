"""Small Darknet layers with no parameters: [softmax], [dropout], [cost], [crop], [detection]."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.layers.base import LAYERS, BuildContext, Layer, Scratch, check_shape
from engine.layers.region import softmax_axis


def _single(cls, ctx: BuildContext, **fields):
    src, shape = ctx.previous()
    out = fields.pop("out_shape", shape)
    return cls(index=ctx.index, inputs=(src,), in_shapes=(shape,), out_shape=out, line=ctx.section.line,
               source=ctx.section.path, **fields)


@LAYERS.register("softmax")
@dataclass(kw_only=True)
class Softmax(Layer):
    """Softmax of x/T over `groups` consecutive blocks of the flattened input (max-subtracted)."""
    kind = "softmax"
    groups: int
    temperature: float

    @classmethod
    def build(cls, ctx: BuildContext) -> "Softmax":
        sec = ctx.section
        if sec.has("tree"):
            from engine.errors import UnsupportedError
            raise UnsupportedError(f"{sec.where('tree')} hierarchical softmax (tree=) is not supported")
        c, h, w = ctx.previous()[1]
        groups = sec.get_int("groups", 1, lo=1)
        if (c * h * w) % groups:
            raise sec.error(f"groups={groups} does not divide the {c * h * w} inputs", "groups")
        temperature = sec.get_float("temperature", 1.0)
        if temperature <= 0:  # x / 0 gives NaN outputs; a negative one inverts the ranking
            raise sec.error(f"temperature={sec.raw('temperature')}: must be > 0", "temperature")
        return _single(cls, ctx, groups=groups, temperature=temperature)

    def forward_float(self, xs: list[np.ndarray], prep: None, scratch: Scratch) -> np.ndarray:
        x = xs[0]
        return softmax_axis(x.reshape(self.groups, -1), 1, self.temperature).reshape(x.shape)


@LAYERS.register("dropout")
@dataclass(kw_only=True)
class Dropout(Layer):
    """Identity at inference (no 1/(1-p) scaling: Darknet scales only while training)."""
    kind = "dropout"
    probability: float

    @classmethod
    def build(cls, ctx: BuildContext) -> "Dropout":
        return _single(cls, ctx, probability=ctx.section.get_float("probability", 0.5, lo=0.0, hi=1.0))

    def forward_float(self, xs: list[np.ndarray], prep: None, scratch: Scratch) -> np.ndarray:
        return xs[0]


@LAYERS.register("cost")
@dataclass(kw_only=True)
class Cost(Layer):
    """Training loss; identity at inference and never chosen as the network output."""
    kind = "cost"

    @classmethod
    def build(cls, ctx: BuildContext) -> "Cost":
        return _single(cls, ctx)

    def forward_float(self, xs: list[np.ndarray], prep: None, scratch: Scratch) -> np.ndarray:
        return xs[0]


@LAYERS.register("crop")
@dataclass(kw_only=True)
class Crop(Layer):
    """Centred crop; values mapped x -> 2x - 1 unless noadjust=1 (inference semantics)."""
    kind = "crop"
    crop_height: int
    crop_width: int
    noadjust: int

    @classmethod
    def build(cls, ctx: BuildContext) -> "Crop":
        sec = ctx.section
        c, h, w = ctx.previous()[1]
        ch = sec.get_int("crop_height", 1, lo=1, hi=h)
        cw = sec.get_int("crop_width", 1, lo=1, hi=w)
        return _single(cls, ctx, out_shape=check_shape(sec, (c, ch, cw)), crop_height=ch, crop_width=cw,
                       noadjust=sec.get_int("noadjust", 0, lo=0, hi=1))

    def forward_float(self, xs: list[np.ndarray], prep: None, scratch: Scratch) -> np.ndarray:
        x = xs[0]
        dy, dx = (x.shape[1] - self.crop_height) // 2, (x.shape[2] - self.crop_width) // 2
        y = x[:, dy:dy + self.crop_height, dx:dx + self.crop_width].astype(np.float32, copy=True)
        if not self.noadjust:
            y *= np.float32(2)
            y -= np.float32(1)
        return y


@LAYERS.register("detection")
@dataclass(kw_only=True)
class Detection(Layer):
    """YOLOv1 head: flat [S*S*K class probs][S*S*B confidences][S*S*B*4 coords]; optional softmax."""
    kind = "detection"
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
        return _single(cls, ctx, side=side, num=num, classes=classes, coords=coords,
                       sqrt=sec.get_int("sqrt", 0, lo=0, hi=1), softmax=sec.get_int("softmax", 0, lo=0, hi=1))

    def forward_float(self, xs: list[np.ndarray], prep: None, scratch: Scratch) -> np.ndarray:
        y = xs[0].astype(np.float32, copy=True)
        if self.softmax:
            flat = y.reshape(-1)
            n = self.side * self.side * self.classes
            flat[:n] = softmax_axis(flat[:n].reshape(-1, self.classes), 1).reshape(-1)
        return y
