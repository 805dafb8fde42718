"""Darknet [maxpool]: max over k x k windows; padding P (default k-1) split floor-left / rest-right.

Cells outside the input are ignored (treated as -inf, never 0). Window (oy, ox) starts at
(oy*s - P//2, ox*s - P//2), so `size=2,stride=1` keeps 13x13 and copies the last row/column.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.layers.base import LAYERS, BuildContext, Layer, Scratch, check_shape, refuse


def maxpool_out_size(n: int, k: int, s: int, p: int) -> int:
    return (n + p - k) // s + 1


def maxpool(x: np.ndarray, k: int, s: int, p: int, fill=-np.inf) -> np.ndarray:
    """(C, H, W) -> (C, Ho, Wo) by strided slices (one pass per window offset, no reshape-max).

    `fill` is the value of out-of-image cells (-inf for float, the dtype minimum for int8).
    """
    c, h, w = x.shape
    ho, wo = maxpool_out_size(h, k, s, p), maxpool_out_size(w, k, s, p)
    top = p // 2
    need_h, need_w = (ho - 1) * s + k, (wo - 1) * s + k
    if top or need_h > h or need_w > w:
        xp = np.full((c, max(need_h, top + h), max(need_w, top + w)), fill, x.dtype)
        xp[:, top:top + h, top:top + w] = x
        x = xp
    y = np.empty((c, ho, wo), x.dtype)
    first = True
    for ky in range(k):
        for kx in range(k):
            view = x[:, ky:ky + s * (ho - 1) + 1:s, kx:kx + s * (wo - 1) + 1:s]
            if first:
                y[...] = view
                first = False
            else:
                np.maximum(y, view, out=y)
    return y


def maxpool_naive(x: np.ndarray, k: int, s: int, p: int) -> np.ndarray:
    """Reference: Darknet's forward_maxpool_layer loop."""
    c, h, w = x.shape
    ho, wo = maxpool_out_size(h, k, s, p), maxpool_out_size(w, k, s, p)
    y = np.empty((c, ho, wo), x.dtype)
    off = -(p // 2)
    for ch in range(c):
        for i in range(ho):
            for j in range(wo):
                best = -np.inf
                for n in range(k):
                    for m in range(k):
                        yy, xx = off + i * s + n, off + j * s + m
                        if 0 <= yy < h and 0 <= xx < w:
                            best = max(best, x[ch, yy, xx])
                y[ch, i, j] = best
    return y


@LAYERS.register("maxpool")
@dataclass(kw_only=True)
class MaxPool(Layer):
    kind = "maxpool"
    size: int
    stride: int
    padding: int

    @classmethod
    def build(cls, ctx: BuildContext) -> "MaxPool":
        sec = ctx.section
        for key, default in (("maxpool_depth", "0"), ("antialiasing", "0"), ("out_channels", "1")):
            refuse(sec, key, default)
        stride = sec.get_int("stride", 1, lo=1, hi=1 << 12)
        size = sec.get_int("size", stride, lo=1, hi=1 << 12)
        for key in ("stride_x", "stride_y"):
            refuse(sec, key, str(stride))
        padding = sec.get_int("padding", size - 1, lo=0, hi=1 << 12)
        src, (c, h, w) = ctx.previous()
        out = check_shape(sec, (c, maxpool_out_size(h, size, stride, padding),
                                maxpool_out_size(w, size, stride, padding)))
        return cls(index=ctx.index, inputs=(src,), in_shapes=((c, h, w),), out_shape=out, line=sec.line,
                   source=sec.path, size=size, stride=stride, padding=padding)

    def forward_float(self, xs: list[np.ndarray], prep: None, scratch: Scratch) -> np.ndarray:
        return maxpool(xs[0], self.size, self.stride, self.padding)
