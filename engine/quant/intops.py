"""Integer-exact int8 convolution / matrix product with int32 accumulation.

Fast path: int8 values are held in float32 and multiplied with BLAS sgemm, with the reduction
dimension K split into chunks of at most 1024. Every partial sum of a chunk is an integer of
magnitude <= 1024 * 127 * 127 < 2**24, so float32 represents each one exactly and the chunk's
result is the exact integer; chunks are then added in int32. `conv_int_naive` (int64 loops) is
the reference the property tests compare against bit for bit.
"""
from __future__ import annotations

import numpy as np

from engine.kernels import conv_out_size

K_CHUNK = 1024  # 1024 * 127 * 127 = 16,516,096 < 2**24 = 16,777,216


def gemm_int(w_f: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(n, K) @ (K, N) of int8-valued float32 arrays -> exact int32 (n, N)."""
    k = w_f.shape[1]
    if k <= K_CHUNK:
        return (w_f @ cols).astype(np.int32)
    acc = np.zeros((w_f.shape[0], cols.shape[1]), np.int32)
    for a in range(0, k, K_CHUNK):
        part = w_f[:, a:a + K_CHUNK] @ cols[a:a + K_CHUNK]
        np.add(acc, part, out=acc, casting="unsafe")  # part is integral: the cast is exact
    return acc


def im2col_int(x_q: np.ndarray, k: int, s: int, p: int) -> np.ndarray:
    """int8 (C, H, W) -> float32 columns (C*k*k, Ho*Wo) in (c, ky, kx) row order, zero padding."""
    c, h, w = x_q.shape
    ho, wo = conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)
    if k == 1 and s == 1 and p == 0:
        return x_q.reshape(c, h * w).astype(np.float32)
    xp = np.zeros((c, h + 2 * p, w + 2 * p), np.float32)
    xp[:, p:p + h, p:p + w] = x_q
    cols = np.empty((c, k, k, ho, wo), np.float32)
    for ky in range(k):
        for kx in range(k):
            cols[:, ky, kx] = xp[:, ky:ky + s * (ho - 1) + 1:s, kx:kx + s * (wo - 1) + 1:s]
    return cols.reshape(c * k * k, ho * wo)


def conv_int(x_q: np.ndarray, w_f: np.ndarray, b_q: np.ndarray, k: int, s: int, p: int,
             groups: int = 1) -> np.ndarray:
    """Exact int8 conv: x_q (C, H, W) int8, w_f (n, C/g*k*k) int8-valued float32, b_q (n,) int32.

    Returns the int32 accumulators (n, Ho, Wo) = sum(w*x) + b.
    """
    c, h, w = x_q.shape
    n = w_f.shape[0]
    ho, wo = conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)
    acc = np.empty((n, ho * wo), np.int32)
    cg, ng = c // groups, n // groups
    for g in range(groups):
        cols = im2col_int(x_q[g * cg:(g + 1) * cg], k, s, p)
        acc[g * ng:(g + 1) * ng] = gemm_int(w_f[g * ng:(g + 1) * ng], cols)
    acc += b_q.astype(np.int32)[:, None]
    return acc.reshape(n, ho, wo)


def conv_int_naive(x_q: np.ndarray, w_q: np.ndarray, b_q: np.ndarray, s: int, p: int, groups: int = 1) -> np.ndarray:
    """Reference: int64 loops over output pixels. w_q: (n, C/g, k, k) int8."""
    c, h, wd = x_q.shape
    n, cg, k, _ = w_q.shape
    ho, wo = conv_out_size(h, k, s, p), conv_out_size(wd, k, s, p)
    xp = np.zeros((c, h + 2 * p, wd + 2 * p), np.int64)
    xp[:, p:p + h, p:p + wd] = x_q
    w64 = w_q.astype(np.int64)
    out = np.zeros((n, ho, wo), np.int64)
    ng = n // groups
    for f in range(n):
        c0 = (f // ng) * cg
        for oy in range(ho):
            for ox in range(wo):
                out[f, oy, ox] = int((xp[c0:c0 + cg, oy * s:oy * s + k, ox * s:ox * s + k] * w64[f]).sum()) + int(b_q[f])
    return out
