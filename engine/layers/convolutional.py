"""Darknet [convolutional]: grouped cross-correlation, batch norm folded into the GEMM, activation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from engine.kernels.tails import Tail
from engine.kernels.conv import choice, conv2d, prepare_winograd
from engine.kernels.gemm import FUSED_ACTS, conv_out_size, with_bias_column
from engine.layers.activations import activate, activation_key
from engine.layers.base import LAYERS, BuildContext, Layer, Params, Scratch, check_shape, refuse, darknet_keys

# pj CPU / yolo2_light batch norm: y = scale*(x-mean)/(sqrt(var)+1e-6) + bias (darknet-semantics B.4).
BN_EPS = 1e-6


class FusedConv(NamedTuple):
    """Kernel-ready conv parameters, float32, BN folded in: w (n, C/g*k*k) and b (n,); for a layer
    that runs Winograd, `wino` (its transformed weights) *instead of* w: one kernel form per layer,
    not two (yolov3 at 416 keeps 190 MB less)."""
    w: np.ndarray | None
    b: np.ndarray
    wino: np.ndarray | None = None


def fold_batchnorm(w: np.ndarray, biases: np.ndarray, scales: np.ndarray, mean: np.ndarray,
                   var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """W' = W*scale/D, b' = bias - scale*mean/D with D = sqrt(var)+1e-6, computed in float64.

    w: (n, ...) any trailing shape. Returns float32 arrays.
    """
    d = np.sqrt(var.astype(np.float64)) + BN_EPS
    gain = scales.astype(np.float64) / d
    wf = w.astype(np.float64) * gain.reshape((-1,) + (1,) * (w.ndim - 1))
    bf = biases.astype(np.float64) - gain * mean.astype(np.float64)
    return wf.astype(np.float32), bf.astype(np.float32)


@LAYERS.register("convolutional")
@dataclass(kw_only=True)
class Convolutional(Layer):
    kind = "convolutional"
    int8_weights = True
    cfg_keys = darknet_keys(
        "activation angle antialiasing assisted_excitation batch_normalize bin_output binary cbn coordconv "
        "dilation dot filters flipped grad_centr groups pad padding reverse rotate share_index size stream "
        "stretch stretch_sway stride stride_x stride_y sway wait_stream xnor")
    filters: int
    size: int
    stride: int
    padding: int          # effective per-side padding (pad=1 -> size//2)
    groups: int
    batch_normalize: int
    activation: str

    @classmethod
    def build(cls, ctx: BuildContext) -> "Convolutional":
        sec = ctx.section
        for key, default in (("dilation", "1"), ("binary", "0"), ("xnor", "0"), ("antialiasing", "0"),
                             ("deform", "0"), ("share_index", "-1000000000"), ("assisted_excitation", "0")):
            refuse(sec, key, default)
        if sec.has("stride_x") or sec.has("stride_y"):
            refuse(sec, "stride_x", sec.raw("stride") if sec.has("stride") else "1")
            refuse(sec, "stride_y", sec.raw("stride") if sec.has("stride") else "1")
        filters = sec.get_int("filters", 1, lo=1, hi=1 << 20)
        size = sec.get_int("size", 1, lo=1, hi=1 << 12)
        stride = sec.get_int("stride", 1, lo=1, hi=1 << 12)
        pad = sec.get_int("pad", 0)
        padding = size // 2 if pad else sec.get_int("padding", 0, lo=0, hi=1 << 12)
        groups = sec.get_int("groups", 1, lo=1)
        bn = sec.get_int("batch_normalize", 0, lo=0, hi=1)
        act = activation_key(sec)
        src, (c, h, w) = ctx.previous()
        if c % groups or filters % groups:
            raise sec.error(f"groups={groups} must divide both the input channels ({c}) and filters ({filters})",
                            "groups")
        out = check_shape(sec, (filters, conv_out_size(h, size, stride, padding),
                                conv_out_size(w, size, stride, padding)))
        return cls(index=ctx.index, inputs=(src,), in_shapes=((c, h, w),), out_shape=out, line=sec.line,
                   source=sec.path, filters=filters, size=size, stride=stride, padding=padding, groups=groups,
                   batch_normalize=bn, activation=act)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.filters, self.in_shapes[0][0] // self.groups, self.size, self.size)

    def param_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        n = (self.filters,)
        bn = [("scales", n), ("rolling_mean", n), ("rolling_variance", n)] if self.batch_normalize else []
        return [("biases", n)] + bn + [("weights", self.weight_shape)]

    @property
    def macs(self) -> int:
        n, cg, k, _ = self.weight_shape
        return n * cg * k * k * self.out_shape[1] * self.out_shape[2]

    def fused(self, params: Params) -> tuple[np.ndarray, np.ndarray]:
        """BN-folded float32 (weights (n, C/g, k, k), biases (n,))."""
        if self.batch_normalize:
            return fold_batchnorm(params["weights"], params["biases"], params["scales"],
                                  params["rolling_mean"], params["rolling_variance"])
        return params["weights"].astype(np.float32), params["biases"].astype(np.float32)

    def prepare(self, params: Params) -> FusedConv:
        w, b = self.fused(params)
        w2d = np.ascontiguousarray(w.reshape(self.filters, -1))
        c, h, wd = self.in_shapes[0]
        kind = choice(c, h, wd, self.filters, self.size, self.stride, self.padding, self.groups)
        if kind.startswith("winograd"):
            return FusedConv(None, b, prepare_winograd(kind, w2d, c, h, wd, self.padding))
        if kind.startswith("im2col") and self.groups == 1:  # the GEMM's [w | b] form, held once
            return FusedConv(with_bias_column(w2d, b), b)
        return FusedConv(w2d, b)

    def linear_float(self, x: np.ndarray, prep: FusedConv, scratch: Scratch) -> np.ndarray:
        """Convolution + folded bias, before the activation."""
        return conv2d(x, prep.w, prep.b, self.size, self.stride, self.padding, self.groups, scratch,
                      wino=prep.wino, choose=False)

    def forward_float_tail(self, xs: list[np.ndarray], prep: FusedConv, scratch: Scratch,
                           tail: Tail) -> np.ndarray | None:
        """The output, each band (or filter block) also run through the next layer's `tail` by the
        kernel's work item that wrote it, in cache: no pass (nor hand-off) of its own for that layer."""
        if self.activation not in FUSED_ACTS:
            return None
        return conv2d(xs[0], prep.w, prep.b, self.size, self.stride, self.padding, self.groups, scratch,
                      act=self.activation, wino=prep.wino, choose=False, tail=tail)

    def forward_float(self, xs: list[np.ndarray], prep: FusedConv, scratch: Scratch) -> np.ndarray:
        if self.activation in FUSED_ACTS:  # applied in the kernel's bias pass, while the data is in cache
            return conv2d(xs[0], prep.w, prep.b, self.size, self.stride, self.padding, self.groups, scratch,
                          act=self.activation, wino=prep.wino, choose=False)
        return activate(self.linear_float(xs[0], prep, scratch), self.activation)
