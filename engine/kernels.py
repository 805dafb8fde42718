"""Fast convolution kernels: im2col + one BLAS GEMM, with reusable scratch buffers.

Layout: x is (C, H, W); weights are a (n, C*k*k) matrix in Darknet's [n][c][ky][kx] order, so the
im2col rows are ordered (c, ky, kx).

Stride-1 trick ("padded-width im2col"): on the zero-padded input flattened per channel, the patch
offset (ky, kx) of every output pixel is one *contiguous* run starting at ky*Wp + kx, if the output
is computed on the padded width Wp (the extra k-1 columns per row are junk and dropped after the
GEMM). So each of the k*k im2col rows is a memcpy instead of a strided gather.
"""
from __future__ import annotations

import numpy as np

from engine.layers.base import Scratch


def conv_out_size(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def pad_input(x: np.ndarray, p: int, scratch: Scratch, name: str = "pad", extra_rows: int = 0,
              fill: float = 0.0) -> np.ndarray:
    """(C, H, W) -> (C, H+2p+extra_rows, W+2p) with a constant border, in a scratch buffer."""
    c, h, w = x.shape
    hp, wp = h + 2 * p + extra_rows, w + 2 * p
    xp = scratch.get(name, (c, hp, wp), x.dtype)
    if p or extra_rows:
        xp[:, :p, :] = fill
        xp[:, p + h:, :] = fill
        xp[:, p:p + h, :p] = fill
        xp[:, p:p + h, p + w:] = fill
    xp[:, p:p + h, p:p + w] = x
    return xp


def im2col(x: np.ndarray, k: int, s: int, p: int, scratch: Scratch) -> tuple[np.ndarray, int, int, int]:
    """Columns (C*k*k, L) for a GEMM, plus (Ho, Wo, row_width).

    For stride 1 the columns cover Ho rows of the *padded* width (row_width = W+2p > Wo); otherwise
    row_width == Wo. Values are copied into a scratch buffer: valid until the next im2col.
    """
    c, h, w = x.shape
    ho, wo = conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)
    if s == 1:
        xp = pad_input(x, p, scratch, extra_rows=1)  # one extra zero row: the last run overshoots by k-1
        wp = w + 2 * p
        flat = xp.reshape(c, -1)
        length = ho * wp
        cols = scratch.get("cols", (c, k, k, length), x.dtype)
        for ky in range(k):
            for kx in range(k):
                off = ky * wp + kx
                cols[:, ky, kx, :] = flat[:, off:off + length]
        return cols.reshape(c * k * k, length), ho, wo, wp
    xp = pad_input(x, p, scratch) if p else x
    cols = scratch.get("cols", (c, k, k, ho, wo), x.dtype)
    for ky in range(k):
        for kx in range(k):
            cols[:, ky, kx] = xp[:, ky:ky + s * (ho - 1) + 1:s, kx:kx + s * (wo - 1) + 1:s]
    return cols.reshape(c * k * k, ho * wo), ho, wo, wo


def conv2d(x: np.ndarray, w2d: np.ndarray, b: np.ndarray, k: int, s: int, p: int, groups: int,
           scratch: Scratch) -> np.ndarray:
    """Float cross-correlation + per-channel bias: (C, H, W) -> new (n, Ho, Wo) float32 array.

    w2d: (n, C/groups*k*k) float32; b: (n,) float32.
    """
    c, h, w = x.shape
    n = w2d.shape[0]
    ho, wo = conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)
    y = np.empty((n, ho, wo), np.float32)
    cg, ng = c // groups, n // groups
    for g in range(groups):
        xg = x[g * cg:(g + 1) * cg] if groups > 1 else x
        wg = w2d[g * ng:(g + 1) * ng] if groups > 1 else w2d
        yg = y[g * ng:(g + 1) * ng]
        bg = b[g * ng:(g + 1) * ng, None, None]
        if k == 1 and s == 1 and p == 0:
            np.matmul(wg, xg.reshape(cg, h * w), out=yg.reshape(ng, h * w))
            yg += bg
            continue
        cols, ho, wo, row = im2col(xg, k, s, p, scratch)
        if row == wo:
            np.matmul(wg, cols, out=yg.reshape(ng, ho * wo))
            yg += bg
        else:
            acc = scratch.get("gemm", (ng, ho * row))
            np.matmul(wg, cols, out=acc)
            np.add(acc.reshape(ng, ho, row)[:, :, :wo], bg, out=yg)
    return y


def conv2d_naive(x: np.ndarray, w: np.ndarray, b: np.ndarray, s: int, p: int, groups: int = 1) -> np.ndarray:
    """Reference: direct loops over output positions (float64 accumulation). w: (n, C/g, k, k)."""
    c, h, wd = x.shape
    n, cg, k, _ = w.shape
    ho, wo = conv_out_size(h, k, s, p), conv_out_size(wd, k, s, p)
    xp = np.zeros((c, h + 2 * p, wd + 2 * p))
    xp[:, p:p + h, p:p + wd] = x
    y = np.zeros((n, ho, wo))
    ng = n // groups
    for f in range(n):
        c0 = (f // ng) * cg
        for oy in range(ho):
            for ox in range(wo):
                patch = xp[c0:c0 + cg, oy * s:oy * s + k, ox * s:ox * s + k]
                y[f, oy, ox] = np.sum(patch * w[f]) + b[f]
    return y
