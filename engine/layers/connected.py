"""Darknet [connected]: y = W . flatten_CHW(x) + b (or batch norm), then an activation.

In `.weights` the order is biases, weights [out][in], then BN scales/mean/variance (BN vectors
come *after* the weights here, unlike [convolutional]).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from engine.kernels.threads import own_threads
from engine.layers.activations import activate, activation_key
from engine.layers.base import LAYERS, BuildContext, Layer, Params, Scratch, darknet_keys
from engine.layers.convolutional import fold_batchnorm


class FusedDense(NamedTuple):
    w: np.ndarray   # (out, in) float32
    b: np.ndarray   # (out,) float32


@LAYERS.register("connected")
@dataclass(kw_only=True)
class Connected(Layer):
    kind = "connected"
    int8_weights = True
    cfg_keys = darknet_keys("activation batch_normalize output")
    output: int
    activation: str
    batch_normalize: int

    @classmethod
    def build(cls, ctx: BuildContext) -> "Connected":
        sec = ctx.section
        src, shape = ctx.previous()
        out = sec.get_int("output", 1, lo=1, hi=1 << 24)
        return cls(index=ctx.index, inputs=(src,), in_shapes=(shape,), out_shape=(out, 1, 1), line=sec.line,
                   source=sec.path, output=out, activation=activation_key(sec),
                   batch_normalize=sec.get_int("batch_normalize", 0, lo=0, hi=1))

    @property
    def inputs_size(self) -> int:
        c, h, w = self.in_shapes[0]
        return c * h * w

    def param_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        n = (self.output,)
        bn = [("scales", n), ("rolling_mean", n), ("rolling_variance", n)] if self.batch_normalize else []
        return [("biases", n), ("weights", (self.output, self.inputs_size))] + bn

    @property
    def macs(self) -> int:
        return self.output * self.inputs_size

    def fused(self, params: Params) -> tuple[np.ndarray, np.ndarray]:
        if self.batch_normalize:
            return fold_batchnorm(params["weights"], params["biases"], params["scales"],
                                  params["rolling_mean"], params["rolling_variance"])
        return params["weights"].astype(np.float32), params["biases"].astype(np.float32)

    def prepare(self, params: Params) -> FusedDense:
        return FusedDense(*self.fused(params))

    def linear_float(self, x: np.ndarray, prep: FusedDense, scratch: Scratch) -> np.ndarray:
        # BLAS single-threaded (own_threads): a threaded OpenBLAS GEMV sums some rows in another order
        # (1470 outputs: 5 differ), so a forward on 2 threads differed from 1 thread and from a batch's image
        with own_threads():
            y = prep.w @ x.reshape(-1)
        return (y + prep.b).astype(np.float32).reshape(self.output, 1, 1)

    def forward_float(self, xs: list[np.ndarray], prep: FusedDense, scratch: Scratch) -> np.ndarray:
        return activate(self.linear_float(xs[0], prep, scratch), self.activation)
