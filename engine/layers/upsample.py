"""Darknet [upsample]: nearest-neighbour enlargement by an integer stride (times `scale`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import UnsupportedError
from engine.kernels.threads import own_threads, parallel_for
from engine.layers.base import LAYERS, BuildContext, Layer, Scratch, check_shape, darknet_keys


def upsample_nearest(x: np.ndarray, stride: int) -> np.ndarray:
    """out[c, y, x] = in[c, y//s, x//s]; one broadcast copy instead of two repeats."""
    c, h, w = x.shape
    y = np.empty((c, h, stride, w, stride), x.dtype)

    def run(lo: int, hi: int) -> None:   # on the kernel threads by channels (a serial pass otherwise)
        y[lo:hi] = x[lo:hi, :, None, :, None]

    with own_threads():
        parallel_for(c, run, y.size)
    return y.reshape(c, h * stride, w * stride)


@LAYERS.register("upsample")
@dataclass(kw_only=True)
class Upsample(Layer):
    kind = "upsample"
    shape_only = True           # its `scale` factor multiplies the int8 output scale, not the values
    passes_sign = commutes_channel_scale = True
    cfg_keys = darknet_keys("scale stride")
    stride: int
    scale: float

    @property
    def keeps_scale(self) -> bool:       # type: ignore[override]
        """Only without a factor: scale=0.5 halves the values, and a histogram of its output would calibrate
        its input at half the range (the conv before it saturating)."""
        return self.scale == 1.0

    @classmethod
    def build(cls, ctx: BuildContext) -> "Upsample":
        sec = ctx.section
        stride = sec.get_int("stride", 2)
        if stride < 1:
            raise UnsupportedError(f"{sec.where('stride')} stride={stride}: only positive (upsampling) strides "
                                   "are supported")
        src, (c, h, w) = ctx.previous()
        return cls(index=ctx.index, inputs=(src,), in_shapes=((c, h, w),),
                   out_shape=check_shape(sec, (c, h * stride, w * stride)), line=sec.line, source=sec.path,
                   stride=stride, scale=sec.get_float("scale", 1.0))

    def forward_float(self, xs: list[np.ndarray], prep: None, scratch: Scratch) -> np.ndarray:
        y = upsample_nearest(xs[0], self.stride)
        if self.scale != 1.0:
            y *= np.float32(self.scale)
        return y

    def forward_float_batch(self, xs: list[np.ndarray], prep: None, scratch: Scratch) -> np.ndarray:
        """(N, C, H, W): channel-wise, so a batch is N*C channels."""
        n, c, h, w = xs[0].shape
        y = self.forward_float([xs[0].reshape(n * c, h, w)], prep, scratch)
        return y.reshape(n, c, h * self.stride, w * self.stride)
