"""Winograd F(2x2, 3x3) convolution for 3x3 stride-1 layers: 16 multiplies per 2x2 outputs, not 36.

Each 2x2 output tile comes from a 4x4 input tile d:  Y = A^T [ (G g G^T) . (B^T d B) ] A  with

    B^T = [1  0 -1  0]     G = [ 1    0    0 ]     A^T = [1  1  1  0]
          [0  1  1  0]         [1/2  1/2  1/2]           [0  1 -1 -1]
          [0 -1  1  0]         [1/2 -1/2  1/2]
          [0  1  0 -1]         [ 0    0    1 ]

The 16 element-wise products summed over input channels are 16 GEMMs (tiles, C) @ (C, n) or
(n, C) @ (C, tiles), spread over the kernel threads (`threads.parallel_items`). The transforms only
add and subtract, as strided slices over all tiles at once (rows first, then columns). The bias rides in the transformed domain: adding b to the (1, 1)
product adds b to all four outputs of a tile, since A^T e1 = (1, 1).
Float32 error is that of a GEMM with K = C plus a few roundings of the transforms (~1e-6 relative).
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import numpy as np

from engine.kernels.gemm import bias_act
from engine.kernels.scratch import Scratch, derived
from engine.kernels.threads import parallel_for, parallel_items

_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
CF_TILES = 256  # at most this many tiles: channels-first GEMMs (see conv3x3)
_K = np.einsum("ia,jb->abij", _G, _G).reshape(9, 16)  # vec(G g G^T) = vec(g) @ _K


# Winograd trades memory for speed: a model keeps each such layer's transformed weights, 16/9 the size
# of its 3x3 weights (yolov3: +0.15 GiB over im2col). QW_WINOGRAD=0 (or `disabled()` around the load
# and first forward of a model) keeps every conv on im2col + GEMM: less memory, slower 3x3 layers.
ENABLED = os.environ.get("QW_WINOGRAD", "1").strip().lower() not in ("0", "false", "no", "off")


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Models that prepare their layers inside this block use im2col + GEMM for good."""
    global ENABLED
    before, ENABLED = ENABLED, False
    try:
        yield
    finally:
        ENABLED = before


def suitable(c: int, h: int, w: int, n: int, k: int, s: int, p: int) -> bool:
    """Whether Winograd beats im2col + GEMM for this layer (measured on 2 cores, AVX-512 OpenBLAS).

    It pays when the GEMMs dominate (many input and output channels); on big maps with few channels
    the transforms' memory passes cost more than the multiplies saved. Measured (CPU time, own
    threads): 20-35% less from 64 channels (52x52 to 104x104 maps), 9% more at 32 channels on 208x208.
    """
    return ENABLED and k == 3 and s == 1 and p <= 2 and h + 2 * p >= 4 and w + 2 * p >= 4 and c >= 64 and n >= 64


WEIGHT_BLOCK = 1 << 18   # kernel weights per float64 block of the transform (a few MB of temporaries)


def transform_weights(w2d: np.ndarray, channels_first: bool = False) -> np.ndarray:
    """(n, C*9) 3x3 kernels -> U^T = (G g G^T)^T as (16, C, n) float32, or (16, n, C) when
    `channels_first` (computed in float64).

    In blocks of input channels written straight into the result: done at once, the float64
    temporaries were ~6x the result (200 MB for a yolov3 13x13 layer, the session's RSS peak).
    Each channel's (16, 9) @ (9, n) product is the same BLAS call as unblocked: same bits."""
    n = w2d.shape[0]
    c = w2d.shape[1] // 9
    out = np.empty((16, n, c) if channels_first else (16, c, n), np.float32)
    step = max(1, WEIGHT_BLOCK // (9 * n))
    for c0 in range(0, c, step):
        c1 = min(c, c0 + step)
        gt = w2d[:, 9 * c0:9 * c1].T.astype(np.float64).reshape(-1, 9, n)   # (cb, 9, n)
        u = np.matmul(_K.T, gt)                                              # (cb, 16, n)
        if channels_first:
            out[:, :, c0:c1] = u.transpose(1, 2, 0)
        else:
            out[:, c0:c1] = u.transpose(1, 0, 2)
    return out


def cached_weights(w2d: np.ndarray) -> np.ndarray:
    """transform_weights(w2d), computed once per weight array (see scratch.derived)."""
    return derived("winograd-2x2", (w2d,), lambda: transform_weights(w2d))


# The tiles are transformed channels-last: on small maps (7x7 tiles) a (C, th, tw) layout would
# make NumPy run thousands of 7-element inner loops; (th, tw, C) gives C-long contiguous ones.
def padded_channels_last(x: np.ndarray, p: int, hp: int, wp: int, scratch: Scratch) -> np.ndarray:
    """The (hp, wp, C) channels-last buffer the input tiles are read from, in scratch, its padding
    zeroed; `copy_tile_rows` fills the inside, tile rows by tile rows."""
    c, h, w = x.shape
    xp = scratch.get("wino_pad", (hp, wp, c))
    xp[:p] = 0
    xp[p + h:] = 0
    xp[p:p + h, :p] = 0
    xp[p:p + h, p + w:] = 0
    return xp


def copy_tile_rows(xp: np.ndarray, x: np.ndarray, p: int, m: int, lo: int, hi: int) -> None:
    """Copy into `xp` the rows of x (C, h, w) that tile rows lo..hi read (tiles m apart, 3x3 kernel).
    Rows shared at a part boundary get the same values from both threads."""
    h, w = x.shape[1:]
    a0, a1 = max(m * lo, p), min(m * hi + 2, p + h)
    if a1 > a0:
        xp[a0:a1, p:p + w] = x[:, a0 - p:a1 - p].transpose(1, 2, 0)


def input_tiles(x: np.ndarray, p: int, th: int, tw: int, scratch: Scratch) -> np.ndarray:
    """V = B^T d B for every 4x4 input tile (stride 2): (16, th*tw, C) float32 in scratch."""
    c, h, w = x.shape
    hp, wp = 2 * th + 2, 2 * tw + 2
    xp = padded_channels_last(x, p, hp, wp, scratch)
    r = scratch.get("wino_rows", (4, th, wp, c))
    v = scratch.get("wino_v", (4, 4, th, tw, c))

    def run(lo: int, hi: int) -> None:  # over tile rows
        copy_tile_rows(xp, x, p, 2, lo, hi)
        d = [xp[a + 2 * lo:a + 2 * hi:2] for a in range(4)]  # tile row a of every tile: (rows, wp, C)
        rs = r[:, lo:hi]
        np.subtract(d[0], d[2], out=rs[0])
        np.add(d[1], d[2], out=rs[1])
        np.subtract(d[2], d[1], out=rs[2])
        np.subtract(d[1], d[3], out=rs[3])
        e = [rs[:, :, b:b + 2 * tw:2] for b in range(4)]      # tile column b: (4, rows, tw, C)
        vs = v[:, :, lo:hi]
        np.subtract(e[0], e[2], out=vs[:, 0])
        np.add(e[1], e[2], out=vs[:, 1])
        np.subtract(e[2], e[1], out=vs[:, 2])
        np.subtract(e[1], e[3], out=vs[:, 3])

    parallel_for(th, run, v.size)
    return v.reshape(16, th * tw, c)


def output_tiles(m: np.ndarray, y: np.ndarray, th: int, tw: int, scratch: Scratch) -> None:
    """y[:, 2ty+a, 2tx+b] = (A^T M A)[a, b] for the (16, th*tw, n) products M, cropped to y."""
    n, ho, wo = y.shape
    m5 = m.reshape(4, 4, th, tw, n)
    s = scratch.get("wino_s", (2, 4, th, tw, n))
    t = scratch.get("wino_t", (2, th, tw, n))

    def run(lo: int, hi: int) -> None:  # over tile rows
        mm, ss, tt = m5[:, :, lo:hi], s[:, :, lo:hi], t[:, lo:hi]
        # rows: S0 = M0 + M1 + M2, S1 = M1 - M2 - M3 (for all four tile columns at once)
        np.add(mm[1], mm[2], out=ss[0])
        np.subtract(mm[1], mm[2], out=ss[1])
        ss[0] += mm[0]
        ss[1] -= mm[3]
        for a in range(2):
            sa = ss[a]
            rows = min(hi, (ho - a + 1) // 2) - lo
            if rows <= 0:
                continue
            np.add(sa[1], sa[2], out=tt[0])
            np.subtract(sa[1], sa[2], out=tt[1])
            for b in range(2):
                cols = (wo - b + 1) // 2
                out = y[:, a + 2 * lo::2, b::2][:, :rows].transpose(1, 2, 0)
                if b == 0:
                    np.add(sa[0, :rows, :cols], tt[0, :rows, :cols], out=out)
                else:
                    np.subtract(tt[1, :rows, :cols], sa[3, :rows, :cols], out=out)

    parallel_for(th, run, s.size)


def output_tiles_cf(m: np.ndarray, y: np.ndarray, th: int, tw: int, scratch: Scratch) -> None:
    """output_tiles for channels-first products M (16, n, th*tw): contiguous maths, strided copies."""
    n, ho, wo = y.shape
    m5 = m.reshape(4, 4, n, th, tw)
    s = scratch.get("wino_s", (2, 4, n, th, tw))
    t = scratch.get("wino_t", (2, n, th, tw))

    def run(lo: int, hi: int) -> None:  # over filters
        mm, ss, tt = m5[:, :, lo:hi], s[:, :, lo:hi], t[:, lo:hi]
        np.add(mm[1], mm[2], out=ss[0])
        np.subtract(mm[1], mm[2], out=ss[1])
        ss[0] += mm[0]
        ss[1] -= mm[3]
        for a in range(2):
            sa = ss[a]
            rows = (ho - a + 1) // 2
            np.add(sa[1], sa[2], out=tt[0])
            np.subtract(sa[1], sa[2], out=tt[1])
            tt[0] += sa[0]
            tt[1] -= sa[3]
            for b in range(2):
                y[lo:hi, a::2, b::2] = tt[b, :, :rows, :(wo - b + 1) // 2]

    parallel_for(n, run, s.size)


def _channels_first(h: int, w: int, p: int) -> bool:
    """The layout conv3x3 picks for an (h, w) map with padding p: channels-first when it has few tiles."""
    return ((h + 2 * p - 1) // 2) * ((w + 2 * p - 1) // 2) <= CF_TILES


def prepare_weights(w2d: np.ndarray, c: int, h: int, w: int, p: int) -> np.ndarray:
    """The transformed weights conv3x3 uses for a (C, h, w) input with padding p, in the layout it
    picks for that map size: (16, n, C) channels-first on small maps, else (16, C, n)."""
    return transform_weights(w2d, _channels_first(h, w, p))


def conv3x3(x: np.ndarray, w2d: np.ndarray | None, b: np.ndarray, p: int, scratch: Scratch,
            act: str | None = None, u: np.ndarray | None = None) -> np.ndarray:
    """3x3 stride-1 cross-correlation with padding p, + bias and a fused activation: new (n, Ho, Wo).

    x: (C, H, W) float32; w2d: (n, C*9) float32, transformed once per array (see cached_weights),
    or u: the transformed weights already made for this map size (`prepare_weights`; a model keeps
    them instead of w2d). b: (n,); act: None or one of gemm.FUSED_ACTS.
    The 16 GEMMs run as (tiles, C) @ (C, n) on big maps; with few tiles (<= CF_TILES) as
    (n, C) @ (C, tiles) on a transposed copy of V, which OpenBLAS runs 5-15% faster there.
    """
    c, h, w = x.shape
    n = b.shape[0]
    ho, wo = h + 2 * p - 2, w + 2 * p - 2
    th, tw = (ho + 1) // 2, (wo + 1) // 2
    cf = _channels_first(h, w, p)
    if u is None:     # a standalone call: the weights transformed once per array (scratch.derived)
        u = cached_weights(w2d) if not cf else \
            derived("winograd-2x2-cf", (w2d,), lambda: transform_weights(w2d, True))
    v = input_tiles(x, p, th, tw, scratch)
    y = np.empty((n, ho, wo), np.float32)
    if cf:
        vt = scratch.get("wino_vt", (16, c, th * tw))
        m = scratch.get("wino_m", (16, n, th * tw))

        def gemm(_part: int, i: int) -> None:  # one of the 16 GEMMs per work item
            vt[i] = v[i].T
            np.matmul(u[i], vt[i], out=m[i])

        parallel_items(16, gemm)
        m[5] += b[:, None]                                   # bias via the (1, 1) product
        output_tiles_cf(m, y, th, tw, scratch)
    else:
        m = scratch.get("wino_m", (16, th * tw, n))
        parallel_items(16, lambda _part, i: np.matmul(v[i], u[i], out=m[i]))
        m[5] += b                                            # bias via the (1, 1) product
        output_tiles(m, y, th, tw, scratch)
    if act not in (None, "linear"):
        bias_act(y, None, act)
    return y
