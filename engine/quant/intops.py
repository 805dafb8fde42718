"""Integer-exact int8 convolution / matrix product with int32 accumulation.

int8 values are held in float32 and multiplied with BLAS sgemm. A float32 GEMM is exact when
every partial sum is an integer below 2**24 in magnitude, whatever the summation order: that
holds when max_f sum_k |w[f, k]| * max|x| < 2**24 (checked per call from a cached weight bound),
and always for reductions of at most K_CHUNK = 1024 terms (1024 * 127 * 127 < 2**24); otherwise
K is split into such chunks summed in float64 (exact). `conv_int_bands` runs the conv in
cache-sized bands of output rows and hands each band's exact sums to an epilogue (requantize /
dequantize), `conv_int_fused` picks it or the integer Winograd (engine/quant/intwinograd.py) for an
epilogue, `conv_int` returns the int32 accumulators, and `conv_int_naive` (int64 loops) is the
reference the property tests compare against bit for bit.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from numpy.lib.stride_tricks import as_strided

from engine.kernels.gemm import MIN_BAND, band_input, conv_out_size
from engine.kernels.scratch import derived, thread_scratch
from engine.kernels.threads import own_threads, parallel_items
from engine.quant.layermemo import acc_memo

EXACT_F32 = float(1 << 24)     # integers up to 2**24 are exact in float32
FOLD_MAX = 1 << 18             # weights (floats) small enough to keep a copy with the bias column
K_CHUNK = 1024  # 1024 * 127 * 127 = 16,516,096 < 2**24 = 16,777,216


def k_chunk(xmax: int) -> int:
    """Longest reduction whose float32 partial sums stay exact for |w| <= 127 and |x| <= xmax
    (K_CHUNK for int8 inputs; 518 for zero-point-centred uint8 inputs, |x - zp| <= 255)."""
    return K_CHUNK if xmax <= 127 else max(1, int((EXACT_F32 - 1) // (127 * xmax)))


def gemm_int(w_f: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(n, K) @ (K, N) of integer-valued float32 arrays (|w| <= 127, |x| <= 255) -> exact int32 (n, N)."""
    k = w_f.shape[1]
    chunk = k_chunk(int(np.abs(cols).max()) if cols.size else 0)
    if k <= chunk:
        return (w_f @ cols).astype(np.int32)
    acc = np.zeros((w_f.shape[0], cols.shape[1]), np.int32)
    for a in range(0, k, chunk):
        part = w_f[:, a:a + chunk] @ cols[a:a + chunk]
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

    Returns the accumulators (n, Ho, Wo) = sum(w*x) + b, exact: int32, or int64 when a bias near the
    int32 limit can carry a sum past it (`plus_bias`), as `conv_int_naive` and the fused epilogues
    (`requant32.add_bias`) add it.
    """
    c, h, w = x_q.shape
    n = w_f.shape[0]
    ho, wo = conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)
    if groups == 1:
        out = np.empty((n, ho, wo), np.int32)

        def store(part: int, r0: int, r1: int, band: np.ndarray, ch: slice) -> None:
            out[ch, r0:r1] = band                 # exact integers: the cast is exact

        conv_int_bands(x_q, w_f, k, s, p, store)
        return plus_bias(out, b_q)
    acc = np.empty((n, ho * wo), np.int32)
    cg, ng = c // groups, n // groups
    for g in range(groups):
        cols = im2col_int(x_q[g * cg:(g + 1) * cg], k, s, p)
        acc[g * ng:(g + 1) * ng] = gemm_int(w_f[g * ng:(g + 1) * ng], cols)
    return plus_bias(acc.reshape(n, ho, wo), b_q)


INT32_MAX = (1 << 31) - 1


def plus_bias(acc: np.ndarray, b_q: np.ndarray) -> np.ndarray:
    """acc + b_q per filter (acc: int32 (n, ...), b_q: integers (n,)), exactly: in place in int32 when no sum
    can leave it, else as a new int64 array. Why: `quantize_bias` saturates the bias of a filter whose weight
    scale is tiny (batch norm's gamma ~ 0) to +-(2**31 - 1); an int32 add then wrapped around and the
    output took the opposite sign."""
    b = np.asarray(b_q).astype(np.int64).reshape((-1,) + (1,) * (acc.ndim - 1))
    a2 = acc.reshape(acc.shape[0], -1)
    if a2.size and (int(np.abs(b).max(initial=0)) + max(int(a2.max()), -int(a2.min())) > INT32_MAX):
        return acc.astype(np.int64) + b
    acc += b.astype(np.int32)
    return acc


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


# --------------------------------------------------------------------------- fused, banded fast path
_scratch = thread_scratch      # the int8 kernels' buffers: per thread


def band_buffer(name: str, part: int, shape: tuple[int, ...], dtype=np.float64) -> np.ndarray:
    """A reusable contiguous work buffer for thread `part` of a banded pass (valid until its next use)."""
    return _scratch().get(f"int-{name}{part}", shape, dtype)


def _row_abs_max(w_f: np.ndarray) -> float:
    """max over filters of sum |w| (cached per weight array): bounds every partial sum of a row."""
    return derived("int-row-abs-sum", (w_f,), lambda: float(np.abs(w_f).sum(axis=1, dtype=np.float64).max()))


def row_abs_max(w_q: np.ndarray) -> float:
    """max over filters of sum |w| for int8 weights (n, ...), cached per array (`engine.kernels.scratch.derived`)."""
    return derived("int-row-abs-sum", (w_q,),
                   lambda: float(np.abs(w_q.reshape(w_q.shape[0], -1).astype(np.int64)).sum(axis=1).max()))


BAND_FLOATS = 1 << 20   # floats of one band's work arrays: its columns, accumulators and the epilogue's two buffers
EPILOGUE_BUFFERS = 2    # band-sized float32 arrays a requantizing epilogue adds to the accumulators (v, r)


def band_edges(total: int, rows: int) -> list[int]:
    """Row edges of bands of at most `rows` rows over `total`: an even number of bands (two kernel
    threads pull them, so neither runs a band more than the other), heights differing by at most one.
    A function of the shape only: the GEMMs are the same on any thread count."""
    bands = -(-total // max(1, rows))
    if bands > 1 and bands % 2:
        bands = min(total, bands + 1)
    return [total * i // bands for i in range(bands + 1)]


def band_rows(ho: int, wo: int, kb: int, n: int) -> int:
    """Output rows per band: its columns (kb, rows*wo), accumulators and epilogue buffers (n, rows*wo)
    within BAND_FLOATS (a band is built, multiplied and requantized in cache), but at least MIN_BAND
    pixels (narrower GEMMs lose more than the cache gains)."""
    per_row = wo * (kb + (1 + EPILOGUE_BUFFERS) * n)
    return min(ho, max(BAND_FLOATS // per_row, -(-MIN_BAND // wo)))


def conv_int_bands(x_q: np.ndarray, w_f: np.ndarray, k: int, s: int, p: int,
                   epilogue: Callable[[int, int, int, np.ndarray, slice], None], w_bound: float | None = None,
                   bias: np.ndarray | None = None,
                   on_fold: Callable[[], None] | None = None) -> None:
    """Exact int8 conv (groups=1, no bias) in bands of output rows: epilogue(part, r0, r1, acc, ch).

    acc is the band's exact integer sums, a contiguous (filters in ch, r1-r0, Wo) array (float32, or
    float64 when the K reduction had to be split), valid only during the call. `w_bound`: max_f sum|w_f|
    if known (e.g. `row_abs_max` of the int8 weights), else computed from w_f. The whole K reduction is one
    float32 GEMM when max_f sum|w_f| * max|x| < 2**24 (every partial sum, in any order, is then an
    exact float32 integer); otherwise it is split into K_CHUNK pieces summed in float64. For int8
    inputs max|x| <= 128 is bound enough for every layer up to ~1000 weights a filter, so the input's
    min / max passes are skipped there.
    Bands (`band_rows`, `band_edges`: an even number, their columns, accumulators and epilogue buffers
    within BAND_FLOATS) run on `parallel_items` threads with BLAS single-threaded (`own_threads`, as the
    float kernels), each band padding its own input rows (`gemm.band_input`), built, multiplied and handed
    to the epilogue while in cache; a map that is a single band (small maps, many filters) is split
    by filter halves instead.
    `bias` (int, (n,)) with `on_fold`: when the weights are small (FOLD_MAX floats) and every partial
    sum stays exact with the bias added (max_f sum|w_f| * max|x| + max|b| < 2**24), the bias becomes
    one more GEMM column against a row of ones, on_fold() is called before the first band, and acc
    then holds the sums with the bias (one NumPy pass fewer in the epilogue); else nothing changes.
    """
    c, h, w = x_q.shape
    n, kk = w_f.shape
    ho, wo = conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)
    wsum = _row_abs_max(w_f) if w_bound is None else w_bound
    bmax = float(np.abs(bias).max(initial=0)) if bias is not None and on_fold is not None else 0.0
    if x_q.dtype == np.int8 and wsum * 128 + bmax < EXACT_F32:
        xmax = 128                    # |int8| <= 128: exact whatever the input holds
    else:
        xmax = max(int(x_q.max()), -int(x_q.min())) if x_q.size else 0
    bound = wsum * xmax
    one_gemm = bound < EXACT_F32
    chunk = k_chunk(xmax)
    fold = (bias is not None and on_fold is not None and one_gemm and w_f.size <= FOLD_MAX
            and bound + bmax < EXACT_F32)
    if fold:
        w_f = derived("int-w-bias", (w_f, bias), lambda: np.concatenate([w_f, bias.astype(np.float32)[:, None]], axis=1))
        on_fold()
    kb = kk + fold                   # GEMM rows: the bias row of ones last
    scratch = _scratch()
    pointwise = k == 1 and s == 1 and p == 0
    if pointwise:
        xf = scratch.get("int-x" + "b" * fold, (c + fold, h * w))
        xf[:c] = x_q.reshape(c, h * w)
        if fold:
            xf[c] = 1.0
    edges = band_edges(ho, band_rows(ho, wo, kb, n))
    bands = len(edges) - 1
    fblocks = 2 if bands == 1 and n >= 32 else 1
    in_rows = max(edges[i + 1] - edges[i] for i in range(bands)) * s + k     # a band's input rows, at most

    def band(part: int, item: int) -> None:
        i, fb = divmod(item, fblocks)
        ch = slice(n * fb // fblocks, n * (fb + 1) // fblocks)
        nf = ch.stop - ch.start
        r0, r1 = edges[i], edges[i + 1]
        length = (r1 - r0) * wo
        if pointwise:
            cols = xf[:, r0 * w:r1 * w]
        else:
            xb = band_input(x_q, r0, r1, k, s, p, scratch.get(f"int-xb{part}", (c, in_rows, w + 2 * p))[:, :(r1 - r0 - 1) * s + k])
            cols = scratch.get(f"int-cols{part}", (kb, length))
            # the k*k im2col rows as one strided copy of the padded band (fewer NumPy calls for the
            # kernel threads to queue on the GIL than k*k copies)
            b0, b1, b2 = xb.strides
            cols[:kk].reshape(c, k, k, r1 - r0, wo)[...] = as_strided(
                xb, (c, k, k, r1 - r0, wo), (b0, b1, b2, s * b1, s * b2), writeable=False)
            if fold:
                cols[kk] = 1.0
        wb = w_f[ch]
        if one_gemm:
            acc = scratch.get(f"int-acc{part}", (nf, length))
            np.matmul(wb, cols, out=acc)
        else:
            acc = scratch.get(f"int-acc64{part}", (nf, length), np.float64)
            part32 = scratch.get(f"int-acc{part}", (nf, length))
            acc[...] = 0
            for a in range(0, kk, chunk):
                np.matmul(wb[:, a:a + chunk], cols[a:a + chunk], out=part32)
                acc += part32
        epilogue(part, r0, r1, acc.reshape(nf, r1 - r0, wo), ch)

    with own_threads():
        parallel_items(bands * fblocks, band)


def conv_int_fused(x_q: np.ndarray, w_q: np.ndarray, w_f: Callable[[], np.ndarray], k: int, s: int, p: int,
                   epilogue: Callable[[int, int, int, np.ndarray, slice], None], bias: np.ndarray | None = None,
                   on_fold: Callable[[], None] | None = None) -> str:
    """Exact int8 conv (groups=1, no bias) handing exact accumulators to an epilogue (contiguous bands), by
    the faster exact kernel: integer Winograd (engine/quant/intwinograd.py) for big 3x3 stride-1
    layers, else `conv_int_bands`. `w_f()` gives the GEMM weights (only built when used).
    Returns the kernel's name. The accumulators, hence every result, are the same either way.
    `bias` / `on_fold`: see `conv_int_bands` (the Winograd kernel folds it into M[1, 1] on its float32
    path when exact: `intwinograd.conv3x3_fused`).
    Inside `layermemo.sharing_acc(memo)`: the accumulators of this (x_q, w_q) are kept in the memo
    band by band, or taken from it ("memo"): the epilogue sees the same bands either way. There the
    bias is never folded, so the kept accumulators are shared by methods whose biases differ."""
    memo = acc_memo()
    if memo is None:
        return conv_int_unshared(x_q, w_q, w_f, k, s, p, epilogue, bias, on_fold)
    key = ("acc", id(x_q), id(w_q), k, s, p)
    bands = memo.get(key)
    if bands is None:
        bands = []

        def keep(part: int, r0: int, r1: int, acc: np.ndarray, ch: slice) -> None:
            bands.append((r0, r1, ch, acc.copy()))     # before the epilogue, which may add the bias in place
            epilogue(part, r0, r1, acc, ch)

        kernel = conv_int_unshared(x_q, w_q, w_f, k, s, p, keep)
        memo.put(key, bands, x_q, w_q)
        return kernel

    def replay(part: int, i: int) -> None:
        r0, r1, ch, acc = bands[i]
        buf = band_buffer("replay", part, acc.shape, acc.dtype)
        np.copyto(buf, acc)
        epilogue(part, r0, r1, buf, ch)

    with own_threads():
        parallel_items(len(bands), replay)
    return "memo"


def conv_int_unshared(x_q: np.ndarray, w_q: np.ndarray, w_f: Callable[[], np.ndarray], k: int, s: int, p: int,
                      epilogue: Callable[[int, int, int, np.ndarray, slice], None], bias: np.ndarray | None = None,
                      on_fold: Callable[[], None] | None = None) -> str:
    """`conv_int_fused` without the shared accumulators: for an input no other method's executor can
    hand over (such as `zeropoint`'s shifted codes, made afresh per call)."""
    from engine.quant import intwinograd
    c, h, w = x_q.shape
    n = w_q.shape[0]
    if intwinograd.suitable(c, h, w, n, k, s, p) and intwinograd.conv3x3_fused(x_q, w_q, _scratch(), epilogue,
                                                                                  bias=bias, on_fold=on_fold):
        return "winograd"
    conv_int_bands(x_q, w_f(), k, s, p, epilogue, row_abs_max(w_q), bias=bias, on_fold=on_fold)
    return "im2col"
