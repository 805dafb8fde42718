"""Winograd F(4x4, 3x3) for 3x3 stride-1 layers: 36 multiplies per 4x4 outputs (direct: 144, F(2x2): 64).

Each 4x4 output tile comes from a 6x6 input tile d (stride 4):  Y = A^T [ (G g G^T) . (B^T d B) ] A
with Lavin's points 0, +-1, +-2:

    B^T = [4  0 -5  0  1  0]   G = [ 1/4     0     0  ]   A^T = [1  1  1  1  1  0]
          [0 -4 -4  1  1  0]       [-1/6  -1/6  -1/6 ]         [0  1 -1  2 -2  0]
          [0  4 -4 -1  1  0]       [-1/6   1/6  -1/6 ]         [0  1  1  4  4  0]
          [0 -2 -1  2  1  0]       [1/24  1/12  1/6  ]         [0  1 -1  8 -8  1]
          [0  2 -1 -2  1  0]       [1/24 -1/12  1/6  ]
          [0  4  0 -5  0  1]       [  0     0     1  ]

The 36 products summed over input channels are 36 GEMMs (n, C) @ (C, tiles) on the kernel threads.
Work buffers share the names of F(2x2)'s (one conv runs at a time), so a model holds one set.
Transforms are sums with small integer weights over strided views of all tiles at once, channels
last (C-long contiguous runs), rows first then columns; the bias rides on product (1, 1), which
A^T e1 = (1, 1, 1, 1) spreads to all 16 outputs of a tile. Float32 error: that of a K = C GEMM plus
the transforms' roundings, which grow with the points (+-2): ~1e-6 relative on real layers, checked
against the direct conv in tests. Which layers use it is `engine.kernels.conv.choice`'s business.
"""
from __future__ import annotations

import numpy as np

from engine.kernels.gemm import bias_act
from engine.kernels.scratch import Scratch
from engine.kernels.threads import parallel_for, parallel_items
from engine.kernels.winograd import copy_tile_rows, padded_channels_last

F = np.float32
_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)


def transform_weights(w2d: np.ndarray) -> np.ndarray:
    """(n, C*9) 3x3 kernels -> U laid out (36, n, C) float32, index 6*b + a for U[a, b] = (G g G^T)[a, b]
    (column-major over the tile, as `input_tiles` orders V); computed in float64."""
    n = w2d.shape[0]
    g = w2d.astype(np.float64).reshape(n, -1, 3, 3)              # (n, C, ky, kx)
    u = np.einsum("ai,ncij,bj->banc", _G, g, _G, optimize=True)  # (6b, 6a, n, C)
    return np.ascontiguousarray(u.reshape(36, n, -1), dtype=F)


def _in_1d(d: list[np.ndarray], o: list[np.ndarray], t: np.ndarray, s: np.ndarray) -> None:
    """o[i] = sum_a B^T[i, a] d[a] for six same-shape arrays, 19 NumPy passes; t, s: scratch of that shape."""
    np.subtract(d[4], d[2], out=t)                 # t = d4 - d2
    np.subtract(d[0], d[2], out=o[0])
    o[0] *= F(4)
    o[0] += t                                      # 4 d0 - 5 d2 + d4
    np.add(d[1], d[2], out=o[1])
    o[1] *= F(-4)
    o[1] += d[3]
    o[1] += d[4]                                   # -4 d1 - 4 d2 + d3 + d4
    np.subtract(d[1], d[2], out=o[2])
    o[2] *= F(4)
    o[2] += d[4]
    o[2] -= d[3]                                   # 4 d1 - 4 d2 - d3 + d4
    np.subtract(d[3], d[1], out=s)
    s *= F(2)                                      # s = 2 (d3 - d1)
    np.add(t, s, out=o[3])                         # -2 d1 - d2 + 2 d3 + d4
    np.subtract(t, s, out=o[4])                    # 2 d1 - d2 - 2 d3 + d4
    np.subtract(d[5], d[3], out=o[5])
    s *= F(2)
    o[5] -= s                                      # 4 d1 - 5 d3 + d5


def _out_1d(m: list[np.ndarray], o: list[np.ndarray], p: np.ndarray, q: np.ndarray, r: np.ndarray,
            s: np.ndarray) -> None:
    """o[i] = sum_a A^T[i, a] m[a] (o may have fewer than 4 entries: cropped tiles); p..s scratch."""
    np.add(m[1], m[2], out=p)
    np.subtract(m[1], m[2], out=q)
    np.add(m[3], m[4], out=r)
    np.subtract(m[3], m[4], out=s)
    np.add(p, r, out=o[0])
    o[0] += m[0]                                   # m0 + m1 + m2 + m3 + m4
    if len(o) > 1:
        s *= F(2)
        np.add(q, s, out=o[1])                     # m1 - m2 + 2 (m3 - m4)
    if len(o) > 2:
        r *= F(4)
        np.add(p, r, out=o[2])                     # m1 + m2 + 4 (m3 + m4)
    if len(o) > 3:
        s *= F(4)
        np.add(q, s, out=o[3])
        o[3] += m[5]                               # m1 - m2 + 8 (m3 - m4) + m5


def input_tiles(x: np.ndarray, p: int, th: int, tw: int, scratch: Scratch) -> np.ndarray:
    """V = B^T d B for every 6x6 input tile (stride 4): (36, th*tw, C) float32 in scratch, index 6*b + a."""
    c, h, w = x.shape
    hp, wp = 4 * th + 2, 4 * tw + 2
    xp = padded_channels_last(x, p, hp, wp, scratch)
    r = scratch.get("wino_rows", (6, th, wp, c))
    v = scratch.get("wino_v", (6, 6, th, tw, c))

    def run(lo: int, hi: int) -> None:  # over tile rows
        copy_tile_rows(xp, x, p, 4, lo, hi)
        rows = hi - lo
        d = [xp[a + 4 * lo:a + 4 * hi:4] for a in range(6)]          # tile row a: (rows, wp, C)
        tmp = np.empty((2, rows, wp, c), F)
        _in_1d(d, [r[a, lo:hi] for a in range(6)], tmp[0], tmp[1])
        e = [r[:, lo:hi, b:b + 4 * tw:4] for b in range(6)]          # tile column b: (6, rows, tw, C)
        tmp = np.empty((2, 6, rows, tw, c), F)
        _in_1d(e, [v[b, :, lo:hi] for b in range(6)], tmp[0], tmp[1])

    parallel_for(th, run, v.size)
    return v.reshape(36, th * tw, c)


def tiles_of(h: int, w: int, p: int) -> tuple[int, int]:
    """(tile rows, tile columns) of a 3x3 stride-1 conv with padding p on an (h, w) map."""
    return (h + 2 * p - 2 + 3) // 4, (w + 2 * p - 2 + 3) // 4


def conv3x3(x: np.ndarray, u: np.ndarray, b: np.ndarray, p: int, scratch: Scratch,
            act: str | None = None) -> np.ndarray:
    """3x3 stride-1 cross-correlation with padding p, + bias and a fused activation: new (n, Ho, Wo).

    x: (C, H, W) float32; u: `transform_weights` of the (n, C*9) weights, (36, n, C); b: (n,); act:
    None or one of gemm.FUSED_ACTS.
    """
    c, h, w = x.shape
    n = b.shape[0]
    ho, wo = h + 2 * p - 2, w + 2 * p - 2
    th, tw = tiles_of(h, w, p)
    v = input_tiles(x, p, th, tw, scratch)
    m = scratch.get("wino_m", (36, n, th * tw))
    # (n, C) @ (C, tiles): V's transpose is a view BLAS reads as it is (no copy)
    parallel_items(36, lambda _part, i: np.matmul(u[i], v[i].T, out=m[i]))
    m[7] += b[:, None]                                     # bias via product (a, b) = (1, 1)
    y = np.empty((n, ho, wo), F)
    output_tiles(m, y, th, tw, scratch)
    if act not in (None, "linear"):
        bias_act(y, None, act)
    return y


def output_tiles(m: np.ndarray, y: np.ndarray, th: int, tw: int, scratch: Scratch) -> None:
    """y[:, 4ty+i, 4tx+j] = (A^T M A)[i, j] for the (36, n, th*tw) products M (index 6*b + a), cropped.

    Channels first: the sums run on contiguous (n, th, tw) planes and the results are strided copies
    into y, no transposes (measured 5-25% faster than channels-last products)."""
    n, ho, wo = y.shape
    m6 = m.reshape(6, 6, n, th, tw)
    z = scratch.get("wino_s", (6, 4, n, th, tw))
    rows_i = [(ho - i + 3) // 4 for i in range(4)]
    cols_j = [(wo - j + 3) // 4 for j in range(4) if j < wo]

    def run(lo: int, hi: int) -> None:  # over filters
        k = hi - lo
        tmp = np.empty((4, 6, k, th, tw), F)
        _out_1d([m6[:, a, lo:hi] for a in range(6)], [z[:, i, lo:hi] for i in range(4)], *tmp)
        tmp = tmp[:, 0]
        tile = np.empty((4, k, th, tw), F)
        for i in range(min(4, ho)):
            _out_1d([z[b, i, lo:hi] for b in range(6)], [tile[j] for j in range(len(cols_j))], *tmp)
            for j, nc in enumerate(cols_j):
                y[lo:hi, i::4, j::4] = tile[j, :, :rows_i[i], :nc]

    parallel_for(n, run, z.size)

