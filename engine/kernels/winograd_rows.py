"""Winograd F(m, 3) down the rows, direct across the columns: 3x3 stride-1 layers with few input channels.

Each group of m output rows comes from t = m + 2 input rows: V = B^T d over the rows of the padded input,
products M[a] = U[a] @ V[a] with U[a] = (G g)[a] over the kernel rows, and Y = A^T M. The kernel's three
columns stay a direct sum, so the product GEMMs have K = 3C (48 for 16 channels) where the 2-D
F(m x m) has K = C: for 16-32 input channels on large maps those K = C GEMMs and the t^2-point
transforms cost more than the multiplies they save, and im2col + GEMM (K = 9C) does 18/8 the
multiplies of F(6, 3) (yolov3-tiny layer 2, 16->32 @208: 11.1 vs 14.6 ms CPU, one thread; layer 4,
32->64 @104: 6.7 vs 8.5 ms for G(4x4); docs/performance.md round 5).

Per band of R tile rows (a function of the layer's shape only), on one thread, while in cache:
  D (t, C, R, Wp)     rows m*r + j of the padded input, tiled straight from x (`tile_rows`)
  V0 = B^T @ D        one (t x t) GEMM
  V (t, C, 3, R, Wo)  V0 shifted by kx = 0, 1, 2 columns (contiguous runs)
  M[a] = U[a] @ V[a]  t GEMMs (n, 3C) @ (3C, R*Wo); the bias on the point-1 product
  Y = A^T @ M         one (m x t) GEMM; the activation writes Y's rows into place.
Determinism: the same GEMMs whatever the thread count (threads only pick bands). Float32 error:
a K = 3C GEMM plus two 1-D transforms (points 0, +-1, +-2, +-1/2 for m = 6), ~1e-6 relative,
checked against the direct conv in tests.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from engine.kernels.tails import Tail
from engine.kernels.scratch import Scratch
from engine.kernels.threads import parallel_items
from engine.kernels.winograd import WEIGHT_BLOCK
from engine.kernels.winograd_gemm import POINTS, matrices

F = np.float32
M_ROWS = 6               # output rows per tile: F(6, 3) measured faster than F(4, 3) on every shape it runs
VBAND = 1 << 18          # floats of V per band at most (1 MiB), and at least one tile row


def planes(m: int = M_ROWS) -> int:
    return m + 2


def is_rows_form(u: np.ndarray) -> bool:
    """Whether transformed weights are this kernel's (t, n, 3C) form, t = 6 or 8 (never a square,
    unlike winograd_gemm's t^2 planes)."""
    return u.ndim == 3 and u.shape[0] in (6, 8) and u.shape[2] % 3 == 0


def transform_weights(w2d: np.ndarray, m: int = M_ROWS) -> np.ndarray:
    """(n, C*9) 3x3 kernels -> U (t, n, 3C) float32: U[a, f, 3c + kx] = sum_ky G[a, ky] w[f, c, ky, kx]
    (float64 math, in blocks of input channels)."""
    if m not in (4, 6):
        raise ValueError(f"winograd_rows: m={m}; expected 4 or 6")
    _, g, _ = matrices(m)
    n = w2d.shape[0]
    c = w2d.shape[1] // 9
    out = np.empty((m + 2, n, c, 3), F)
    step = max(1, WEIGHT_BLOCK // (9 * n))
    for c0 in range(0, c, step):
        c1 = min(c, c0 + step)
        gw = w2d[:, 9 * c0:9 * c1].astype(np.float64).reshape(n, -1, 3, 3)
        out[:, :, c0:c1] = np.einsum("ay,ncyx->ancx", g, gw)
    return out.reshape(m + 2, n, 3 * c)


def band_rows(c: int, wo: int, th: int, m: int = M_ROWS) -> int:
    """Tile rows per band: V's band (t * 3C * R * Wo floats) within VBAND, and of those sizes the one
    whose bands split best over 2 threads (fewest tile rows on the busier one; then the largest).
    yolov3-tiny layer 4 has 18 tile rows: 9 bands of 2 would leave one thread a band more."""
    most = max(1, VBAND // ((m + 2) * 3 * c * wo))
    return min(range(1, min(most, th) + 1), key=lambda r: (-(-(-(-th // r)) // 2) * r, -r))


def conv3x3(x: np.ndarray, u: np.ndarray, b: np.ndarray, p: int, scratch: Scratch,
            act: str | None = None, tail: Tail | None = None) -> np.ndarray:
    """3x3 stride-1 cross-correlation with padding p, + bias and a fused activation: new (n, Ho, Wo).

    x: (C, H, W) float32; u: `transform_weights(w2d, m)`, (m + 2, n, 3C); b: (n,); act: None or one
    of gemm.FUSED_ACTS. `tail`: the fused next layer (`engine.kernels.tails`), run on each band's
    m * rows output rows (even: whole row pairs) in its item, while in cache.
    """
    t = u.shape[0]
    m = t - 2
    c, h, w = x.shape
    n = b.shape[0]
    if u.shape != (t, n, 3 * c) or m not in (4, 6):
        raise ValueError(f"winograd_rows: weights {u.shape} do not fit input {x.shape} and {n} filters")
    ho, wo = h + 2 * p - 2, w + 2 * p - 2
    if ho < 1 or wo < 1:
        raise ValueError(f"winograd_rows: input {x.shape} with padding {p} gives no output")
    th = -(-ho // m)
    wp = w + 2 * p
    bt, _, at = (a.astype(F) for a in matrices(m))
    k1 = POINTS[m].index(1)
    bias = b.reshape(n, 1)
    y = np.empty((n, ho, wo), F)
    rows = band_rows(c, wo, th, m)

    def band(part: int, i: int) -> None:
        r0, r1 = i * rows, min(th, (i + 1) * rows)
        rr = r1 - r0
        # the band's tiles straight from x (no padded copy, of the map or of the band: a pass fewer)
        d = tile_rows(x, p, m, r0, r1, scratch.get(f"wrows_d{part}", (t, c, rr, wp)))
        v0 = scratch.get(f"wrows_v0{part}", (t, c, rr, wp))
        np.matmul(bt, d.reshape(t, -1), out=v0.reshape(t, -1))
        v = scratch.get(f"wrows_v{part}", (t, c, 3, rr, wo))
        q0, q1, q2, q3 = v0.strides
        v[...] = as_strided(v0, (t, c, 3, rr, wo), (q0, q1, q3, q2, q3), writeable=False)
        v2 = v.reshape(t, 3 * c, rr * wo)
        mm = scratch.get(f"wrows_m{part}", (t, n, rr * wo))
        # one stacked call: NumPy runs the same sgemm per plane (same bits) inside one GIL release,
        # where t calls made the other kernel thread wait for the GIL t times (conv 2: 0.6 ms CPU)
        np.matmul(u, v2, out=mm)
        mm[k1] += bias
        yy = scratch.get(f"wrows_y{part}", (m, n, rr, wo))
        np.matmul(at, mm.reshape(t, -1), out=yy.reshape(m, -1))
        _act_into(yy, y, m * r0, act, scratch, part)
        if tail_bands:
            tail.rows(y, m * r0, min(ho, m * r1), scratch, part)

    tail_bands = tail is not None and tail.on_bands(m * rows)
    parallel_items(-(-th // rows), band)
    if tail is not None and not tail_bands:
        tail.rest(y, scratch)
    return y


def tile_rows(x: np.ndarray, p: int, m: int, r0: int, r1: int, out: np.ndarray) -> np.ndarray:
    """D (t, C, r1 - r0, W + 2p) of tile rows [r0, r1) of x in a zero border of p, t = m + 2:
    out[j, c, r] = row m*(r0 + r) + j of the padded input (zeros outside x), read straight from x.

    The same values as tiling np.pad(x) (a strided view of rows m*r + j), one copy per j instead of a
    padded band copy and a tiling copy of it."""
    c, h, w = x.shape
    t = m + 2
    out[:, :, :, :p] = 0
    out[:, :, :, p + w:] = 0
    base = m * r0 - p
    if base >= 0 and base + m * (r1 - r0 - 1) + t - 1 <= h - 1:
        # every row inside x: the t row planes as one strided view, one copy (the band's NumPy calls
        # are what the two kernel threads queue for the GIL on)
        s0, s1, s2 = x.strides
        src = as_strided(x[:, base:], (t, c, r1 - r0, w), (s1, s0, m * s1, s2), writeable=False)
        out[:, :, :, p:p + w] = src
        return out
    for j in range(t):
        # padded row m*(r0 + r) + j is x's row m*(r0 + r) + j - p: inside x for r in [ra, rb)
        base = m * r0 + j - p
        ra = min(r1 - r0, max(0, -(-(-base) // m)))
        rb = max(ra, min(r1 - r0, (h - 1 - base) // m + 1))
        if ra > 0:
            out[j, :, :ra] = 0
        if rb < r1 - r0:
            out[j, :, rb:] = 0
        if rb > ra:
            out[j, :, ra:rb, p:p + w] = x[:, base + m * ra:base + m * (rb - 1) + 1:m]
    return out


def _act_into(yy: np.ndarray, y: np.ndarray, row0: int, act: str | None, scratch: Scratch, part: int) -> None:
    """y[f, row0 + m*r + i] = act(yy[i, f, r]) for the rows that exist (the last tile row may stick out)."""
    m, n, rr, wo = yy.shape
    rows = min(m * rr, y.shape[1] - row0)
    full = rows // m
    pieces = [(yy[:, :, :full], y[:, row0:row0 + m * full].reshape(n, full, m, wo).transpose(2, 0, 1, 3))]
    for i in range(rows - m * full):                         # rows of a last, partial tile row
        pieces.append((yy[i, :, full], y[:, row0 + m * full + i]))
    tmp = scratch.get(f"wrows_t{part}", yy.shape) if act == "leaky" else None
    for src, dst in pieces:
        # in place on the contiguous band, then one copy: 0.8x the time of ufuncs writing the strided y
        if act == "leaky":        # max(v, 0.1 v), Darknet's slope
            t = tmp.reshape(-1)[:src.size].reshape(src.shape)
            np.multiply(src, F(0.1), out=t)
            np.maximum(src, t, out=src)
        elif act == "relu":
            np.maximum(src, F(0), out=src)
        dst[...] = src

