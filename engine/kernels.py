"""Fast convolution kernels: im2col + BLAS GEMM, or Winograd F(2x2,3x3), with scratch buffers.

Layout: x is (C, H, W); weights are a (n, C*k*k) matrix in Darknet's [n][c][ky][kx] order, so the
im2col rows are ordered (c, ky, kx).

conv2d picks per layer shape: 1x1 stride 1 is one GEMM on the input itself; wide 3x3 stride-1
layers use Winograd (`engine.winograd`); everything else runs im2col + GEMM in bands of output
rows that stay in cache (`conv_banded`), with the bias as a ones row of the GEMM and the
activation applied in place. `im2col` (whole map, padded-width trick for stride 1) is kept as a
standalone helper.

Elementwise and copy passes can be split over THREADS threads (NumPy releases the GIL inside
copies and ufuncs), but THREADS is 1: with a 2-thread OpenBLAS, its worker busy-waits on the second
core for a while after every GEMM, and a second NumPy thread competing with it made every layer
measured (conv epilogues, Winograd transforms, maxpool) 3-15% slower on 2 cores.
"""
from __future__ import annotations

import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from engine.layers.base import Scratch

THREADS = 1              # threads for parallel_for (see the module docstring); the GEMMs use BLAS's own
PARALLEL_MIN = 1 << 16   # elements below which a pass runs in the calling thread only
BLOCK = 1 << 16          # elements per cache block of an epilogue pass (256 KiB of float32)
BAND = 1 << 19           # im2col floats per band of output rows (2 MiB): built, used and dropped in cache
MIN_BAND = 2048          # output pixels per band at least: narrower GEMMs lose more than the cache gains
F = np.float32
_pool: ThreadPoolExecutor | None = None
_derived: dict[tuple, tuple[tuple[weakref.ref, ...], Any]] = {}


def derived(kind: str, arrays: tuple[np.ndarray, ...], make: Callable[[], Any]) -> Any:
    """make(), cached per `kind` and identity of `arrays` (dropped when any of them dies).

    For kernel forms of weights (bias-augmented, Winograd-transformed): a model's prepared weights
    live as long as the model, so each is built once. An array modified in place after its first
    use would keep its stale derived form: replace arrays, don't mutate them.
    """
    key = (kind,) + tuple(id(a) for a in arrays)
    hit = _derived.get(key)
    if hit is not None and all(r() is a for r, a in zip(hit[0], arrays)):
        return hit[1]
    value = make()
    refs = tuple(weakref.ref(a, lambda _r, key=key: _derived.pop(key, None)) for a in arrays)
    _derived[key] = (refs, value)
    return value


def parallel_for(n: int, fn: Callable[[int, int], None], work: int) -> None:
    """Run fn(lo, hi) over [0, n) split into THREADS contiguous parts (inline if `work` is small).

    `work` is the number of elements the whole job touches; the split only pays off for big jobs.
    """
    global _pool
    parts = min(THREADS, n) if work >= PARALLEL_MIN else 1
    if parts <= 1:
        fn(0, n)
        return
    if _pool is None or _pool._max_workers < parts - 1:
        _pool = ThreadPoolExecutor(parts - 1, thread_name_prefix="qw-kernel")
    bounds = [n * i // parts for i in range(parts + 1)]
    futures = [_pool.submit(fn, bounds[i], bounds[i + 1]) for i in range(1, parts)]
    fn(bounds[0], bounds[1])
    for f in futures:
        f.result()


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
                scratch: Scratch, act: str | None) -> None:
    """Conv into y (n, Ho, Wo) by im2col + GEMM + in-place activation, in bands of output rows.

    A band's columns (about BAND floats) are built, multiplied and dropped while they are still in
    cache, instead of writing the whole column matrix (k*k times the input) to memory and reading
    it back. The bias rides in the GEMM (a row of ones under the columns, b as an extra weight
    column), which writes straight into the band's rows of y (a BLAS matrix with row stride
    Ho*Wo), so the activation runs in place on data that is still in cache.
    """
    c, h, w = x.shape
    n, ho, wo = y.shape
    kk = c * k * k
    wb = derived("bias-column", (w2d, b), lambda: np.ascontiguousarray(np.concatenate([w2d, b[:, None]], 1)))
    y2 = y.reshape(n, ho * wo)
    rows = min(ho, max(BAND // (kk * wo), -(-MIN_BAND // wo)))  # cache-sized, but wide enough for BLAS
    # Output column j of kernel column kx reads input column j*s + kx - p: valid for j in [ja, jb).
    jspan = [(max(0, -(-(p - kx) // s)), min(wo, (w - 1 + p - kx) // s + 1)) for kx in range(k)]
    for r0 in range(0, ho, rows):
        r1 = min(ho, r0 + rows)
        length = (r1 - r0) * wo
        flat = scratch.get("cols", (kk + 1, length))
        cols = flat[:kk].reshape(c, k, k, r1 - r0, wo)

        def run(lo: int, hi: int, by_channel: bool = c >= THREADS) -> None:
            # im2col straight from x (no padded copy): in-image cells are copied, the rest zeroed
            chans, kys = (slice(lo, hi), range(k)) if by_channel else (slice(None), range(lo, hi))
            for ky in kys:
                dy = ky - p
                ra, rb = max(r0, -(dy // s)), min(r1, (h - 1 - dy) // s + 1)  # rows reading inside x
                for kx in range(k):
                    dst, (ja, jb) = cols[chans, ky, kx], jspan[kx]
                    if ra >= rb or ja >= jb:
                        dst[...] = 0
                        continue
                    dx = kx - p
                    dst[:, ra - r0:rb - r0, ja:jb] = x[chans, ra * s + dy:(rb - 1) * s + dy + 1:s,
                                                       ja * s + dx:(jb - 1) * s + dx + 1:s]
                    if ra > r0:
                        dst[:, :ra - r0] = 0
                    if rb < r1:
                        dst[:, rb - r0:] = 0
                    if ja > 0:
                        dst[:, ra - r0:rb - r0, :ja] = 0
                    if jb < wo:
                        dst[:, ra - r0:rb - r0, jb:] = 0

        parallel_for(c if c >= THREADS else k, run, flat.size)
        flat[kk] = 1
        np.matmul(wb, flat, out=y2[:, r0 * wo:r1 * wo])
        if act not in (None, "linear"):
            bias_act(y[:, r0:r1], None, act)


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


def conv2d(x: np.ndarray, w2d: np.ndarray, b: np.ndarray, k: int, s: int, p: int, groups: int,
           scratch: Scratch, act: str | None = None) -> np.ndarray:
    """Float cross-correlation + per-channel bias (+ optional fused activation): (C, H, W) -> new (n, Ho, Wo).

    w2d: (n, C/groups*k*k) float32; b: (n,) float32. `act` (one of FUSED_ACTS, or None for none) is
    applied in the same pass as the bias; other activations are the caller's business.
    3x3 stride-1 convolutions with many channels on small maps go through Winograd F(2x2,3x3)
    (`engine.winograd`), which needs 16/36 of the multiplies; the rest through im2col + GEMM.
    """
    from engine import winograd  # late import: winograd imports this module's helpers

    c, h, w = x.shape
    n = w2d.shape[0]
    ho, wo = conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)
    if act is not None and act not in FUSED_ACTS:
        raise ValueError(f"conv2d: act={act!r} cannot be fused; use one of {FUSED_ACTS} or apply it after")
    if groups == 1 and winograd.suitable(c, h, w, n, k, s, p):
        return winograd.conv3x3(x, w2d, b, p, scratch, act)
    y = np.empty((n, ho, wo), np.float32)
    cg, ng = c // groups, n // groups
    for g in range(groups):
        xg = x[g * cg:(g + 1) * cg] if groups > 1 else x
        wg = w2d[g * ng:(g + 1) * ng] if groups > 1 else w2d
        yg = y[g * ng:(g + 1) * ng]
        bg = b[g * ng:(g + 1) * ng]
        if k == 1 and s == 1 and p == 0:
            np.matmul(wg, xg.reshape(cg, h * w), out=yg.reshape(ng, h * w))
            bias_act(yg, bg, act)
            continue
        conv_banded(xg, wg, bg, yg, k, s, p, scratch, act)
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
