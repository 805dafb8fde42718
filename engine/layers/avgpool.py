"""Darknet [avgpool]: global average per channel, (C, H, W) -> (C, 1, 1)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.layers.base import LAYERS, BuildContext, Layer, Scratch, darknet_keys


@LAYERS.register("avgpool")
@dataclass(kw_only=True)
class AvgPool(Layer):
    kind = "avgpool"
    cfg_keys = darknet_keys("")   # global pooling: Darknet reads no key of its own in [avgpool]

    @classmethod
    def build(cls, ctx: BuildContext) -> "AvgPool":
        src, shape = ctx.previous()
        return cls(index=ctx.index, inputs=(src,), in_shapes=(shape,), out_shape=(shape[0], 1, 1),
                   line=ctx.section.line, source=ctx.section.path)

    def forward_float(self, xs: list[np.ndarray], prep: None, scratch: Scratch) -> np.ndarray:
        x = xs[0]
        return x.mean(axis=(1, 2), dtype=np.float32).reshape(-1, 1, 1)
