"""Darknet [maxpool]: max over k x k windows; padding P (default k-1) split floor-left / rest-right.

Cells outside the input are ignored (treated as -inf, never 0). Window (oy, ox) starts at
(oy*s - P//2, ox*s - P//2), so `size=2,stride=1` keeps 13x13 and copies the last row/column.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.kernels.gemm import BLOCK
from engine.kernels.threads import own_threads, parallel_for
from engine.layers.base import LAYERS, BuildContext, Layer, Scratch, check_shape, refuse, darknet_keys


def maxpool_out_size(n: int, k: int, s: int, p: int) -> int:
    return (n + p - k) // s + 1


def maxpool(x: np.ndarray, k: int, s: int, p: int, fill=-np.inf, scratch: Scratch | None = None) -> np.ndarray:
    """(C, H, W) -> new (C, Ho, Wo): max over k x k windows, separably (rows, then columns).

    Strided slices only (no reshape-max): the k window rows are reduced first, then the k columns
    of the row maxima, so k*k window offsets cost 2(k-1) maxima. Window rows are taken as views
    (every row contiguous: ufuncs run them at full speed); window columns (element stride s) are
    *copied* into a contiguous cache block before `np.maximum` (NumPy 2.4 ufuncs on such operands
    are several times slower than a strided copy plus a contiguous ufunc). Channel blocks are split
    over threads. `fill` is the value of out-of-image cells (-inf for float, the dtype minimum for
    int8). `scratch` holds the padded input if given. A 2x2 stride-2 pool of an even map takes
    `_pairs_run` instead.
    """
    c, h, w = x.shape
    ho, wo = maxpool_out_size(h, k, s, p), maxpool_out_size(w, k, s, p)
    top = p // 2
    need_h, need_w = (ho - 1) * s + k, (wo - 1) * s + k
    hp, wp = max(need_h, top + h), max(need_w, top + w)
    padded = top or need_h > h or need_w > w
    y = np.empty((c, ho, wo), x.dtype)
    if k == 2 and s == 2 and not padded and h == 2 * ho and w == 2 * wo:
        with own_threads():
            parallel_for(c, _pairs_run(np.ascontiguousarray(x), y), c * ho * wp)
        return y
    xp = _buffer(scratch, "pool_pad", (c, hp, wp), x.dtype) if padded else x
    step = max(1, BLOCK // (ho * wp))
    rs, cs = (lambda o: slice(o, o + s * (ho - 1) + 1, s)), (lambda o: slice(o, o + s * (wo - 1) + 1, s))

    def run(lo: int, hi: int) -> None:
        rows = np.empty((step, ho, wp), x.dtype)    # row maxima of one channel block
        tmp = np.empty((step, ho, wp), x.dtype)     # one contiguous copy of a strided slice
        for c0 in range(lo, hi, step):
            c1 = min(c0 + step, hi)
            src = x[c0:c1]
            if padded:
                src = _pad(src, xp[c0:c1], top, fill)
            r, yb = rows[:c1 - c0], y[c0:c1]
            # window rows: strided views whose rows are contiguous, which ufuncs take at full speed
            if k == 1:
                r[...] = src[:, rs(0)]
            else:
                np.maximum(src[:, rs(0)], src[:, rs(1)], out=r)
            for ky in range(2, k):
                np.maximum(r, src[:, rs(ky)], out=r)
            yb[...] = r[:, :, cs(0)]
            t = tmp.reshape(-1)[:yb.size].reshape(yb.shape)
            for kx in range(1, k):
                t[...] = r[:, :, cs(kx)]
                np.maximum(yb, t, out=yb)

    with own_threads():
        parallel_for(c, run, c * ho * wp)
    return y


def _pairs_run(x: np.ndarray, y: np.ndarray):
    """The 2x2 stride-2 pool of an even map (yolov3-tiny's, yolov2's): row pairs as the two halves of a
    (C, Ho, 2, W) view (contiguous rows), then column pairs as a maximum of the block's row maxima with
    themselves shifted by one float (both operands contiguous, so NumPy's SIMD loop runs it), of which
    every other element is a pair's maximum: one strided copy instead of a maximum of two stride-2
    operands (one thread, CPU, column step: 0.20 vs 0.37 ms on 32 x 208 px, 0.105 vs 0.185 on 64 x 104,
    0.43 vs 0.54 on 16 x 416). Exact (a maximum), so the same values as before."""
    c, ho, wo = y.shape
    step = max(1, BLOCK // (ho * 2 * wo))

    def run(lo: int, hi: int) -> None:
        rows = np.empty(step * ho * 2 * wo, x.dtype)
        pair = np.empty(step * ho * 2 * wo, x.dtype)
        for c0 in range(lo, hi, step):
            c1 = min(c0 + step, hi)
            size = (c1 - c0) * ho * 2 * wo
            v = x[c0:c1].reshape(c1 - c0, ho, 2, 2 * wo)
            r, q = rows[:size], pair[:size]
            np.maximum(v[:, :, 0], v[:, :, 1], out=r.reshape(c1 - c0, ho, 2 * wo))
            np.maximum(r[:-1], r[1:], out=q[:-1])       # q[2i] = max of column pair i (q[-1] unused)
            y[c0:c1].reshape(-1)[...] = q[::2]
    return run


def _pad(x: np.ndarray, xp: np.ndarray, top: int, fill) -> np.ndarray:
    """Copy (C, H, W) into the (C, Hp, Wp) buffer at (top, top), `fill` elsewhere; returns xp."""
    h, w = x.shape[1:]
    xp[:, :top] = fill
    xp[:, top + h:] = fill
    xp[:, top:top + h, :top] = fill
    xp[:, top:top + h, top + w:] = fill
    xp[:, top:top + h, top:top + w] = x
    return xp


def _buffer(scratch: Scratch | None, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    return np.empty(shape, dtype) if scratch is None else scratch.get(name, shape, dtype)


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
    shape_only = keeps_scale = passes_sign = commutes_channel_scale = True
    cfg_keys = darknet_keys(
        "antialiasing maxpool_depth maxpool_zero_nonmax out_channels padding size stride stride_x stride_y")
    size: int
    stride: int
    padding: int

    @classmethod
    def build(cls, ctx: BuildContext) -> MaxPool:
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
        return maxpool(xs[0], self.size, self.stride, self.padding, scratch=scratch)

    def forward_float_batch(self, xs: list[np.ndarray], prep: None, scratch: Scratch) -> np.ndarray:
        """(N, C, H, W): channels are pooled independently, so a batch is N*C channels."""
        n, c, h, w = xs[0].shape
        y = maxpool(xs[0].reshape(n * c, h, w), self.size, self.stride, self.padding, scratch=scratch)
        return y.reshape((n, c) + y.shape[1:])
