"""Darknet [reorg] (pj mapping, used by yolov2 weights) and AB [reorg3d] (true space-to-depth).

pj `reorg_cpu` reinterprets the flat input as (C/s^2, H*s, W*s) and gathers it into the input's
own shape; verified against the C loop in darknet-semantics.md B.4.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.layers.base import LAYERS, BuildContext, Layer, Scratch, check_shape, refuse, darknet_keys


def reorg_pj(x: np.ndarray, s: int) -> np.ndarray:
    c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(c // (s * s), h, s, w, s).transpose(2, 4, 0, 1, 3)).reshape(
        c * s * s, h // s, w // s)


def space_to_depth(x: np.ndarray, s: int) -> np.ndarray:
    c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(c, h // s, s, w // s, s).transpose(2, 4, 0, 1, 3)).reshape(
        c * s * s, h // s, w // s)


@dataclass(kw_only=True)
class _Reorg(Layer):
    cfg_keys = darknet_keys("extra flatten reverse stride")
    stride: int

    @classmethod
    def build(cls, ctx: BuildContext):
        sec = ctx.section
        refuse(sec, "reverse", "0")
        refuse(sec, "flatten", "0")
        s = sec.get_int("stride", 1, lo=1)
        src, (c, h, w) = ctx.previous()
        if h % s or w % s:
            raise sec.error(f"stride={s} does not divide the input size {h}x{w}", "stride")
        if cls.kind == "reorg" and c % (s * s):
            raise sec.error(f"stride={s}: input channels {c} must be a multiple of {s * s}", "stride")
        return cls(index=ctx.index, inputs=(src,), in_shapes=((c, h, w),),
                   out_shape=check_shape(sec, (c * s * s, h // s, w // s)), line=sec.line, source=sec.path, stride=s)


@LAYERS.register("reorg")
@dataclass(kw_only=True)
class Reorg(_Reorg):
    kind = "reorg"
    shape_only = keeps_scale = passes_sign = True      # channels move: no channel scale commutes

    def forward_float(self, xs: list[np.ndarray], prep: None, scratch: Scratch) -> np.ndarray:
        return reorg_pj(xs[0], self.stride)


@LAYERS.register("reorg3d")
@dataclass(kw_only=True)
class Reorg3d(_Reorg):
    kind = "reorg3d"
    shape_only = keeps_scale = passes_sign = True

    def forward_float(self, xs: list[np.ndarray], prep: None, scratch: Scratch) -> np.ndarray:
        return space_to_depth(xs[0], self.stride)
