"""im2col + BLAS GEMM convolution kernels (float32), with fused bias and activation epilogues.

Layout: x is (C, H, W); weights are a (n, C*k*k) matrix in Darknet's [n][c][ky][kx] order, so the
im2col rows are ordered (c, ky, kx). 1x1 stride 1 is one GEMM on the input itself (`conv1x1`);
everything else runs im2col + GEMM in bands of output rows that stay in cache (`conv_banded`),
with the bias as a ones row of the GEMM and the activation applied in place. `im2col` (whole map,
padded-width trick for stride 1) is kept as a standalone helper. Which kernel a layer gets is
decided in `engine.kernels.conv`.

Determinism: OpenBLAS's float32 results depend on the GEMM's shape (its small-matrix and edge
kernels sum in other orders), so the work is cut into the same GEMMs whatever the thread count
(`SPLIT`); threads (`engine.kernels.threads`) only decide who runs which piece. A forward on 1
thread (a Dask worker) and on 2 (a notebook) gives the same bits.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from engine.kernels.tails import Tail
from engine.kernels.scratch import Scratch, derived
from engine.kernels.threads import parallel_for, parallel_items

BLOCK = 1 << 16          # elements per cache block of an epilogue pass (256 KiB of float32)
BAND = 1 << 19           # im2col floats per band of output rows (2 MiB): built, used and dropped in cache
MIN_BAND = 2048          # output pixels per band at least: narrower GEMMs lose more than the cache gains
SPLIT = 4                # a conv is cut into at least this many GEMMs, whatever the thread count
F = np.float32


def conv_out_size(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def pad_input(x: np.ndarray, p: int, scratch: Scratch, name: str = "pad", extra_rows: int = 0,
              fill: float = 0.0) -> np.ndarray:
    """(C, H, W) -> (C, H+2p+extra_rows, W+2p) with a constant border, in a scratch buffer."""
    c, h, w = x.shape
    hp, wp = h + 2 * p + extra_rows, w + 2 * p
    xp = scratch.get(name, (c, hp, wp), x.dtype)

    def run(lo: int, hi: int) -> None:
        if p or extra_rows:
            xp[lo:hi, :p, :] = fill
            xp[lo:hi, p + h:, :] = fill
            xp[lo:hi, p:p + h, :p] = fill
            xp[lo:hi, p:p + h, p + w:] = fill
        xp[lo:hi, p:p + h, p:p + w] = x[lo:hi]

    parallel_for(c, run, xp.size)
    return xp


def im2col(x: np.ndarray, k: int, s: int, p: int, scratch: Scratch) -> tuple[np.ndarray, int, int, int]:
    """Columns (C*k*k, L) of the whole map for one GEMM, plus (Ho, Wo, row_width).

    For stride 1 the columns cover Ho rows of the *padded* width (row_width = W+2p > Wo): on the
    zero-padded input flattened per channel, patch offset (ky, kx) of every output pixel is one
    contiguous run starting at ky*Wp + kx, so each im2col row is a memcpy; the k-1 junk columns per
    row are dropped after the GEMM. Otherwise row_width == Wo. Values live in a scratch buffer,
    valid until the next call. (conv2d itself uses the cache-friendlier `conv_banded`.)
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


def conv_banded(x: np.ndarray, w2d: np.ndarray, b: np.ndarray, y: np.ndarray, k: int, s: int, p: int,
                scratch: Scratch, act: str | None, tail: Tail | None = None) -> None:
    """Conv into y (n, Ho, Wo) by im2col + GEMM + in-place activation, in bands of output rows.

    A band's columns (about BAND floats) are built, multiplied and dropped while they are still in
    cache, instead of writing the whole column matrix (k*k times the input) to memory and reading
    it back. The bias rides in the GEMM (a row of ones under the columns, b as an extra weight
    column), which writes straight into the band's rows of y (a BLAS matrix with row stride
    Ho*Wo), so the activation runs in place on data that is still in cache. `tail`: the fused next layer
    (`engine.kernels.tails`), run on each band in its item.
    """
    c, h, w = x.shape
    n, ho, wo = y.shape
    kk = c * k * k
    wb = _augmented(w2d, b)
    y2 = y.reshape(n, ho * wo)
    rows = min(ho, max(BAND // (kk * wo), -(-MIN_BAND // wo)))  # cache-sized, but wide enough for BLAS
    rows = min(rows, -(-ho // SPLIT))  # enough bands for the threads (see the module docstring)
    rows = even_bands(ho, rows)
    tail_bands = tail is not None and tail.on_bands(rows)   # else a pass after the bands
    # Output column j of kernel column kx reads input column j*s + kx - p: valid for j in [ja, jb).
    jspan = [(max(0, -(-(p - kx) // s)), min(wo, (w - 1 + p - kx) // s + 1)) for kx in range(k)]

    def band_s1(part: int, i: int) -> None:
        r0, r1 = i * rows, min(ho, (i + 1) * rows)
        rr = r1 - r0
        xb = scratch.get(f"colsx{part}", (c, rr + k, wp))
        band_input(x, r0, r1, k, 1, p, xb[:, :rr + k - 1])
        xb[:, rr + k - 1] = 0                  # one zero row: the last run's k - 1 overshoot reads it
        flat = scratch.get(f"cols{part}", (kk + 1, rr * wp))
        s0, s1, s2 = xb.strides
        # padded-width trick on the band: kernel offset (ky, kx) of every output pixel is one contiguous
        # run of the flattened band at ky*Wp + kx, so all k*k*C im2col rows are one strided copy
        flat[:kk].reshape(c, k, k, rr * wp)[...] = as_strided(xb, (c, k, k, rr * wp), (s0, s1, s2, s2),
                                                              writeable=False)
        flat[kk] = 1
        g = scratch.get(f"colsg{part}", (n, rr, wp))
        np.matmul(wb, flat, out=g.reshape(n, rr * wp))
        _act_drop(g, y[:, r0:r1], act, scratch, part)     # the k-1 junk columns of each row dropped here
        if tail_bands:
            tail.rows(y, r0, r1, scratch, part)

    def band(part: int, i: int) -> None:
        r0, r1 = i * rows, min(ho, (i + 1) * rows)
        flat = scratch.get(f"cols{part}", (kk + 1, (r1 - r0) * wo))
        cols = flat[:kk].reshape(c, k, k, r1 - r0, wo)
        # im2col straight from x (no padded copy): in-image cells are copied, the rest zeroed
        for ky in range(k):
            dy = ky - p
            ra, rb = max(r0, -(dy // s)), min(r1, (h - 1 - dy) // s + 1)  # rows reading inside x
            for kx in range(k):
                dst, (ja, jb) = cols[:, ky, kx], jspan[kx]
                if ra >= rb or ja >= jb:
                    dst[...] = 0
                    continue
                dx = kx - p
                dst[:, ra - r0:rb - r0, ja:jb] = x[:, ra * s + dy:(rb - 1) * s + dy + 1:s,
                                                   ja * s + dx:(jb - 1) * s + dx + 1:s]
                if ra > r0:
                    dst[:, :ra - r0] = 0
                if rb < r1:
                    dst[:, rb - r0:] = 0
                if ja > 0:
                    dst[:, ra - r0:rb - r0, :ja] = 0
                if jb < wo:
                    dst[:, ra - r0:rb - r0, jb:] = 0
        flat[kk] = 1
        np.matmul(wb, flat, out=y2[:, r0 * wo:r1 * wo])
        if act not in (None, "linear"):
            bias_act(y[:, r0:r1], None, act)
        if tail_bands:
            tail.rows(y, r0, r1, scratch, part)

    wp = w + 2 * p
    parallel_items(-(-ho // rows), band_s1 if s == 1 and wo == wp - k + 1 else band)
    if tail is not None and not tail_bands:
        tail.rest(y, scratch)


def band_input(x: np.ndarray, r0: int, r1: int, k: int, s: int, p: int, buf: np.ndarray) -> np.ndarray:
    """The input rows that output rows [r0, r1) of a k x k, stride-s conv read, with their zero padding
    (C, rows_in, W + 2p), in `buf` (cast to its dtype): each band pads its own rows, no padded copy of
    the whole input (the float im2col bands and the INT ones, `intops.conv_int_bands`)."""
    c, h, w = x.shape
    top, bot = r0 * s - p, (r1 - 1) * s + k - p         # input rows [top, bot) incl. padding
    xb = buf
    a, b = max(0, top), min(h, bot)
    if a > top:
        xb[:, :a - top] = 0
    if bot > b:
        xb[:, b - top:] = 0
    if p:
        xb[:, a - top:b - top, :p] = 0
        xb[:, a - top:b - top, p + w:] = 0
    if b > a:
        xb[:, a - top:b - top, p:p + w] = x[:, a:b]
    return xb


def _act_drop(g: np.ndarray, dst: np.ndarray, act: str | None, scratch: Scratch, part: int) -> None:
    """dst (n, rows, Wo) = act(g[:, :, :Wo]) for a band GEMM output g (n, rows, Wp >= Wo), in cache."""
    wo = dst.shape[2]
    if act == "leaky":         # max(v, 0.1 v), Darknet's slope
        t = scratch.get(f"colst{part}", g.shape)
        np.multiply(g, F(0.1), out=t)
        np.maximum(g[:, :, :wo], t[:, :, :wo], out=dst)
    elif act == "relu":
        np.maximum(g[:, :, :wo], F(0), out=dst)
    else:
        dst[...] = g[:, :, :wo]


def two_thread_span(total: int, rows: int) -> int:
    """Rows the busier of 2 threads runs when they take bands of `rows` (the last one shorter) in turn."""
    bands = -(-total // rows)
    last = total - (bands - 1) * rows
    return (bands // 2) * rows + (last if bands % 2 else 0)


def even_bands(total: int, rows: int) -> int:
    """Rows per band for `total` rows in bands of at most `rows`, chosen so 2 threads split them evenly.

    Why: 416 rows in bands of 46 were 9 x 46 + 2, so on 2 threads one ran 5 full bands and the other
    4 and a sliver (yolov3-tiny layer 0: 230 rows against 186); bands of 42 split 210 / 206. Among
    rows*3/4..rows (not narrower: each band costs its own NumPy calls) the band height whose busier
    thread runs the fewest rows, the largest on ties. A function of the shape only, so the GEMMs are
    the same on any thread count."""
    return min(range(max(1, -(-3 * rows // 4)), rows + 1), key=lambda r: (two_thread_span(total, r), -r))


def with_bias_column(w2d: np.ndarray, b: np.ndarray) -> np.ndarray:
    """w2d (n, K) as the first K columns of a new (n, K+1) matrix whose last column is b: the form
    conv_banded multiplies, so a model that keeps this view holds its weights once, not twice."""
    wb = np.empty((w2d.shape[0], w2d.shape[1] + 1), np.float32)
    wb[:, :-1] = w2d
    wb[:, -1] = b
    return wb[:, :-1]


def _augmented(w2d: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[w2d | b] (n, K+1): the matrix w2d is a view of (see with_bias_column), else made once per arrays."""
    base = w2d.base
    if (isinstance(base, np.ndarray) and base.dtype == np.float32 and base.flags.c_contiguous
            and base.shape == (w2d.shape[0], w2d.shape[1] + 1) and base.ctypes.data == w2d.ctypes.data
            and np.array_equal(base[:, -1], b)):
        return base
    return derived("bias-column", (w2d, b), lambda: np.ascontiguousarray(np.concatenate([w2d, b[:, None]], 1)))


FUSED_ACTS = ("linear", "leaky", "relu")


def bias_act(y: np.ndarray, b: np.ndarray | None, act: str | None, src: np.ndarray | None = None) -> np.ndarray:
    """y[c] = act(src[c] + b[c]) for (n, H, W) arrays, in cache blocks of channels, threaded (b None: no bias).

    `src` defaults to y (in place); it may be a strided view (e.g. the padded-width GEMM output
    with its junk columns): it is *copied* into the block first, because NumPy 2.4 ufuncs on
    non-contiguous operands are ~7x slower than a strided copy plus contiguous ufuncs.
    `act` is one of FUSED_ACTS or None (= linear). Leaky is max(v, 0.1*v) (Darknet's slope 0.1),
    computed while the block is still in cache.
    """
    src = y if src is None else src
    n = y.shape[0]
    plane = max(1, y[0].size)
    step = max(1, BLOCK // plane)
    b3 = None if b is None else b.reshape(n, 1, 1)
    leaky = act == "leaky"

    def run(lo: int, hi: int) -> None:
        tmp = np.empty((step,) + y.shape[1:], F) if leaky else None  # one cache block, per thread
        for c0 in range(lo, hi, step):
            c1 = min(c0 + step, hi)
            yb = y[c0:c1]
            if src is not y:
                yb[...] = src[c0:c1]
            if b3 is not None:
                yb += b3[c0:c1]
            if leaky:
                tb = tmp[:c1 - c0]
                np.multiply(yb, F(0.1), out=tb)
                np.maximum(yb, tb, out=yb)
            elif act == "relu":
                np.maximum(yb, F(0), out=yb)

    parallel_for(n, run, y.size)
    return y


def conv_gemm(x: np.ndarray, w2d: np.ndarray, b: np.ndarray, k: int, s: int, p: int, groups: int,
               scratch: Scratch, act: str | None, tail: Tail | None = None) -> np.ndarray:
    """conv2d through GEMMs: 1x1 stride 1 directly on x (in row blocks of filters), else conv_banded.
    `tail`: the fused next layer (see conv_banded; grouped convs run it after their groups)."""
    c, h, w = x.shape
    n = w2d.shape[0]
    ho, wo = conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)
    y = np.empty((n, ho, wo), np.float32)
    cg, ng = c // groups, n // groups
    for g in range(groups):
        xg = x[g * cg:(g + 1) * cg] if groups > 1 else x
        wg = w2d[g * ng:(g + 1) * ng] if groups > 1 else w2d
        yg = y[g * ng:(g + 1) * ng]
        bg = b[g * ng:(g + 1) * ng]
        tg = tail if groups == 1 else None
        if k == 1 and s == 1 and p == 0:
            conv1x1(xg.reshape(cg, h * w), wg, bg, yg, act, tg, scratch)
            continue
        conv_banded(xg, wg, bg, yg, k, s, p, scratch, act, tg)
    if tail is not None and groups > 1:
        tail.rest(y, scratch)
    return y


def conv1x1(x2: np.ndarray, w2d: np.ndarray, b: np.ndarray, y: np.ndarray, act: str | None,
            tail: Tail | None = None, scratch: Scratch | None = None) -> None:
    """y = act(w2d @ x2 + b) in blocks of filter rows, one GEMM + in-cache epilogue per block
    (+ the fused next layer's `tail` on the block, with `scratch`).

    SPLIT (4) blocks, not 8: two per thread on 2 threads, larger GEMMs with fewer hand-offs."""
    n = y.shape[0]
    step = max(8, -(-n // SPLIT))   # fixed blocks: the same GEMMs on any number of threads
    y2 = y.reshape(n, -1)

    def block(part: int, i: int) -> None:
        lo, hi = i * step, min(n, (i + 1) * step)
        np.matmul(w2d[lo:hi], x2, out=y2[lo:hi])
        bias_act(y[lo:hi], b[lo:hi], act)
        if tail is not None:
            tail.chans(y, lo, hi, scratch, part)

    parallel_items(-(-n // step), block)


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
