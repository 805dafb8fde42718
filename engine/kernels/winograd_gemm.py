"""Winograd F(m x m, 3x3) for 3x3 stride-1 layers with every stage a BLAS GEMM (m = 2, 4 or 6).

Each m x m output tile comes from a t x t input tile d (t = m + 2, tiles m apart):
Y = A^T [ (G g G^T) . (B^T d B) ] A, with Toom-Cook points 0, +-1, +-2 (m = 4: Lavin's matrices),
and +-1/2 for m = 6 (the set OpenCV and NNPACK use). A 2-D transform is linear in the tile: the INT
path runs it as one GEMM with the Kronecker product of the 1-D matrices, V = (B^T (x) B^T) D over all
tiles and channels at once (`input_transform`). Why not the separable sums of NumPy passes: ~40 passes
over the tile arrays cost more than the multiplies they save (measured on yolov3-tiny's layers, one
thread: 64->128 @52 2.6 vs 3.9 ms CPU, 32->64 @104 4.2 vs 6.4 ms for im2col).

Layout (float path): per band of tile rows the input goes channels-last and its tiles are copied into
D (t, t, tiles, C) (`input_transform_hwc`), and one GEMM with the Kronecker K_B per band gives the
(t^2, tiles, C) stack the t^2 products need (B^T down the rows then across the columns as 2t GEMMs of
K = t halves the multiplies but measured 2-3% slower on yolov3-tiny's forward, quiet host: more, smaller
calls), with the weights kept as U^T (t^2, C, n): M^T[i] = V[i] (tiles, C) @
U^T[i] (C, n). In that orientation OpenBLAS runs the products 7-24% faster than U[i] (n, C) @ V[i]
(C, tiles) on the few-tile maps (49 tiles: 26 px in 4x4, 13 px in 2x2), where its cost per weight byte
dominates (one thread, CPU: 36 x 256x128x49 1.68 vs 2.21 ms, 36 x 256x384x49 5.16 vs 5.81,
16 x 512x256x49 3.40 vs 3.89). The output transform reads M^T by bands of tile rows: A^T over the
first point index (one batched GEMM), then over the second (m GEMMs, one stacked call, writing
(tiles*n, m, m)), so each tile's m x m outputs come out contiguous (F(2x2): one (tiles*n, 16) @
(16, 4) GEMM with K_A^T); the activation runs on them, and the tile rows move into place as one copy
of m-float chunks (a complex128 view for m = 4, float64 for m = 2). The bias rides on the product of
point 1 x point 1, which A^T spreads to every output of a tile. (The INT path keeps `input_transform`'s
(t^2, C, tiles) layout: the padded input read as a strided (t, t, C, th, tw) view.)

Determinism: each stage is cut into the same GEMMs (fixed bands / blocks) whatever the
thread count; threads only decide who runs which. Float32 error: a K = C GEMM plus the transforms'
roundings (~1e-6 relative for m = 4 on real layers, more for m = 6), checked against the direct conv
in tests. Which layers use which m is `engine.kernels.conv.choice`'s business.
"""
from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import as_strided

from engine.kernels.winograd import WEIGHT_BLOCK
from engine.kernels.tails import Tail
from engine.kernels.scratch import Scratch
from engine.kernels.threads import kernel_threads, parallel_for, parallel_items

F = np.float32
POINTS = {2: (0, 1, -1), 4: (0, 1, -1, 2, -2), 6: (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2))}
BLOCK = 1 << 18          # floats of D (or of M) per transform GEMM at most (1 MiB)
SPLIT = 4                # a transform is cut into a multiple of this many equal GEMMs: balanced on 1, 2, 4 threads
PRODUCT_GROUPS = 2       # product groups per kernel thread (stacked GEMMs; pulled dynamically)
OUT_BANDS = 8            # the output transform runs in about this many bands of tile rows (fewer where BLOCK caps them)


@lru_cache(maxsize=None)
def matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B^T (t x t), G (t x 3), A^T (m x t)) of F(m, 3) by Toom-Cook over POINTS[m] and infinity,
    in exact rationals, as float64. G[j] = p_j^k / prod_{l != j}(p_j - p_l); B^T's rows are the
    coefficients of prod_{l != j}(x - p_l) (and of prod_l (x - p_l) for infinity), Lavin's form."""
    pts = [Fraction(p) for p in POINTS[m]]
    t = m + 2
    at = [[p ** i for p in pts] + [Fraction(int(i == m - 1))] for i in range(m)]
    g = []
    for j, pj in enumerate(pts):
        f = Fraction(1)
        for l, pl in enumerate(pts):
            if l != j:
                f *= pj - pl
        g.append([pj ** k / f for k in range(3)])
    g.append([Fraction(0), Fraction(0), Fraction(1)])
    bt = []
    for j in range(t):
        poly = [Fraction(1)]                 # coefficients, lowest degree first
        for l, pl in enumerate(pts):
            if l != j:
                poly = [a - pl * b for a, b in zip([Fraction(0)] + poly, poly + [Fraction(0)])]
        bt.append(poly + [Fraction(0)] * (t - len(poly)))
    return tuple(np.array([[float(v) for v in r] for r in rows], np.float64) for rows in (bt, g, at))


@lru_cache(maxsize=None)
def kron(m: int) -> tuple[np.ndarray, np.ndarray]:
    """K_B (t^2, t^2) with V[t*b + a] = sum B^T[a, y] B^T[b, x] d[y, x] (D index t*x + y), and
    K_A^T (t^2, m^2) with Y[m*i + j] = sum A^T[i, a] A^T[j, b] M[t*b + a]: float32, C-contiguous."""
    bt, _, at = matrices(m)
    t = m + 2
    kb = np.einsum("bx,ay->baxy", bt, bt).reshape(t * t, t * t)
    ka = np.einsum("ia,jb->ijba", at, at).reshape(m * m, t * t)
    return np.ascontiguousarray(kb, F), np.ascontiguousarray(ka.T, F)


def transform_weights(w2d: np.ndarray, m: int = 4) -> np.ndarray:
    """(n, C*9) 3x3 kernels -> U^T (t^2, C, n) float32, index t*b + a for (G g G^T)[a, b]; float64 math.
    (Channels before filters: the products are V (tiles, C) @ U^T (C, n), see the module docstring.)"""
    _, g, _ = matrices(m)
    n = w2d.shape[0]
    c = w2d.shape[1] // 9
    t = m + 2
    out = np.empty((t, t, c, n), F)
    # in blocks of input channels written straight into the result: at once, the float64 temporaries
    # were several times the result (a yolov3 session's RSS peak); each element's arithmetic is the same
    step = max(1, WEIGHT_BLOCK // (9 * n))
    for c0 in range(0, c, step):
        c1 = min(c, c0 + step)
        gw = w2d[:, 9 * c0:9 * c1].astype(np.float64).reshape(n, -1, 3, 3)
        out[:, :, c0:c1] = np.einsum("ai,ncij,bj->bacn", g, gw, g, optimize=True)
    return out.reshape(t * t, c, n)


def tile_size(u: np.ndarray) -> int:
    """m of weights made by transform_weights (t^2 planes)."""
    t = int(round(u.shape[0] ** 0.5))
    if t * t != u.shape[0] or t - 2 not in POINTS:
        raise ValueError(f"winograd_gemm: {u.shape[0]} weight planes is no F(m x m, 3x3) with m in {sorted(POINTS)}")
    return t - 2


def bias_index(m: int) -> int:
    """Product index t*b + a of point 1 x point 1 (the column of A^T that is all ones)."""
    k = POINTS[m].index(1)
    return (m + 2) * k + k


def tiles_of(h: int, w: int, p: int, m: int) -> tuple[int, int]:
    return (h + 2 * p - 2 + m - 1) // m, (w + 2 * p - 2 + m - 1) // m


def padded(x: np.ndarray, p: int, hp: int, wp: int, scratch: Scratch, threaded: bool = True) -> np.ndarray:
    """x in a zero border: (C, hp, wp) with x at (p, p); rows and columns past the input are zero too.
    One scratch buffer, reused by every layer (layers run one at a time; winograd_rows tiles straight from x per band).
    `threaded=False`: only the buffer; the caller fills channel ranges with `pad_channels`."""
    c, h, w = x.shape
    xp = scratch.get("wino_pad", (c, hp, wp))
    if threaded:
        parallel_for(c, lambda lo, hi: pad_channels(x, xp, p, lo, hi), xp.size)
    return xp


def pad_channels(x: np.ndarray, xp: np.ndarray, p: int, lo: int, hi: int) -> None:
    """Channels [lo, hi) of x into the padded buffer xp at (p, p), zeros around them."""
    h, w = x.shape[1:]
    xp[lo:hi, :p] = 0
    xp[lo:hi, p + h:] = 0
    xp[lo:hi, p:p + h, :p] = 0
    xp[lo:hi, p:p + h, p + w:] = 0
    xp[lo:hi, p:p + h, p:p + w] = x[lo:hi]


def _block(count: int, size: int) -> int:
    """Channels (or filters) per transform GEMM: a function of the layer's shape only (the same GEMMs
    on any thread count), in a multiple of SPLIT equal blocks of at most BLOCK floats."""
    blocks = -(-max(SPLIT, -(-count * size // BLOCK)) // SPLIT) * SPLIT
    return max(1, -(-count // blocks))


def input_transform(x: np.ndarray, p: int, m: int, scratch: Scratch) -> np.ndarray:
    """V (t^2, C, tiles) for every t x t input tile (m apart), in scratch."""
    c, h, w = x.shape
    t = m + 2
    th, tw = tiles_of(h, w, p, m)
    tiles = th * tw
    xp = padded(x, p, m * th + 2, m * tw + 2, scratch, threaded=False)  # each block pads its channels
    s0, s1, s2 = xp.strides
    view = as_strided(xp, (t, t, c, th, tw), (s2, s1, s0, m * s1, m * s2), writeable=False)  # [x, y, c, ty, tx]
    kb, _ = kron(m)
    v = scratch.get("wino_v", (t * t, c, tiles))
    cb = _block(c, t * t * tiles)

    def block(part: int, i: int) -> None:  # a channel block: (t^2, cb*tiles) of V, row stride C*tiles
        c0, c1 = i * cb, min(c, (i + 1) * cb)
        pad_channels(x, xp, p, c0, c1)    # here, not in a pass of its own: one hand-off fewer, cache-hot
        d = scratch.get(f"wino_d{part}", (t, t, c1 - c0, th, tw))
        d[...] = view[:, :, c0:c1]
        np.matmul(kb, d.reshape(t * t, -1), out=v.reshape(t * t, c * tiles)[:, c0 * tiles:c1 * tiles])

    parallel_items(-(-c // cb), block)
    return v


def band_tile_rows(th: int, per_row: int) -> int:
    """Tile rows per band of input_transform_hwc: at most BLOCK floats of D per band (at least one tile
    row), in at least SPLIT bands where there are as many tile rows, split evenly over 2 threads
    (`gemm.even_bands`). A function of the layer's shape only: the same GEMMs on any thread count."""
    from engine.kernels.gemm import even_bands
    bands = -(-max(SPLIT, -(-th * per_row // BLOCK)) // SPLIT) * SPLIT
    return even_bands(th, max(1, -(-th // bands)))


def input_transform_hwc(x: np.ndarray, p: int, m: int, scratch: Scratch) -> np.ndarray:
    """V (t^2, tiles, C) of every t x t input tile (m apart), channels last, in scratch: the float path's
    input transform (the INT path keeps `input_transform`'s (t^2, C, tiles)).

    Per band of tile rows, on one thread, in cache: the band's rows of x (with their zero border) go
    channels-last into a (rows, Wp, C) buffer, one transposing copy; its tiles are then runs of C
    contiguous floats, so D (t, t, rows, tw, C) is a copy of whole runs (where the (C, tiles) layout
    gathers single floats m apart, 2.25x the input's elements for m = 4); V's band = K_B @ D, a
    contiguous slice of V. The products are V[i] (tiles, C) @ U^T[i] (C, n)."""
    c, h, w = x.shape
    t = m + 2
    th, tw = tiles_of(h, w, p, m)
    wp = m * tw + 2
    kb, _ = kron(m)
    v = scratch.get("wino_vh", (t * t, th * tw, c))
    v2 = v.reshape(t * t, th * tw * c)
    rows = band_tile_rows(th, t * t * tw * c)

    def band(part: int, i: int) -> None:
        r0, r1 = i * rows, min(th, (i + 1) * rows)
        tr = r1 - r0
        hb = m * tr + 2                                   # padded rows m*r0 .. m*r1 + 2
        xb = scratch.get(f"wino_xb{part}", (hb, wp, c))
        lo = m * r0 - p                                   # x's row at the band's first row
        a, b = max(0, lo), min(h, lo + hb)                # x's rows inside the band
        if a > lo:
            xb[:a - lo] = 0
        if b < lo + hb:
            xb[max(0, b - lo):] = 0
        if b > a:
            xb[a - lo:b - lo, :p] = 0
            xb[a - lo:b - lo, p + w:] = 0
            xb[a - lo:b - lo, p:p + w] = x[:, a:b].transpose(1, 2, 0)
        s0, s1, s2 = xb.strides
        d = scratch.get(f"wino_dh{part}", (t, t, tr, tw, c))
        d[...] = as_strided(xb, (t, t, tr, tw, c), (s1, s0, m * s0, m * s1, s2), writeable=False)  # [x, y, ty, tx, c]
        np.matmul(kb, d.reshape(t * t, -1), out=v2[:, r0 * tw * c:r1 * tw * c])

    parallel_items(-(-th // rows), band)
    return v


def conv3x3(x: np.ndarray, u: np.ndarray, b: np.ndarray, p: int, scratch: Scratch,
            act: str | None = None, tail: Tail | None = None) -> np.ndarray:
    """3x3 stride-1 cross-correlation with padding p, + bias and a fused activation: new (n, Ho, Wo).

    x: (C, H, W) float32; u: `transform_weights(w2d, m)`, (t^2, C, n); b: (n,); act: None or one of
    gemm.FUSED_ACTS. `tail`: the fused next layer, run on each band of output rows where it takes
    bands (see output_transform), else after them.
    """
    m = tile_size(u)
    t = m + 2
    c, h, w = x.shape
    n = b.shape[0]
    if u.shape != (t * t, c, n):
        raise ValueError(f"winograd_gemm: weights {u.shape} do not fit input {x.shape} and {n} filters")
    ho, wo = h + 2 * p - 2, w + 2 * p - 2
    th, tw = tiles_of(h, w, p, m)
    v = input_transform_hwc(x, p, m, scratch)      # (t^2, tiles, C)
    mt = scratch.get("wino_m", (t * t, th * tw, n))
    ib = bias_index(m)

    # positions in a few groups, each one stacked np.matmul (the same sgemm per position, so the same
    # bits whatever the grouping): one GIL release per group instead of per position, which on few
    # tiles (13-52 px maps: GEMMs of 10-50 us) had the two kernel threads queueing for the GIL
    per = -(-t * t // (PRODUCT_GROUPS * kernel_threads()))

    def product(_part: int, g: int) -> None:
        a, z = g * per, min(t * t, (g + 1) * per)
        np.matmul(v[a:z], u[a:z], out=mt[a:z])      # M^T[i] (tiles, n)
        if a <= ib < z:      # here, not as a pass after the join: one thread would run it alone
            mt[ib] += b

    parallel_items(-(-t * t // per), product)
    y = np.empty((n, ho, wo), F)
    output_transform(mt, y, m, th, tw, act, scratch, tail)
    return y


def out_band_rows(th: int, per_row: int) -> int:
    """Tile rows per band of output_transform: about OUT_BANDS bands, at most BLOCK floats of M^T each
    (at least one tile row), split evenly over 2 threads (`gemm.even_bands`); a function of the shape."""
    from engine.kernels.gemm import even_bands
    return even_bands(th, max(1, min(BLOCK // per_row, -(-th // OUT_BANDS))))


def output_transform(mt: np.ndarray, y: np.ndarray, m: int, th: int, tw: int, act: str | None,
                     scratch: Scratch, tail: Tail | None = None) -> None:
    """y (n, Ho, Wo) = act(A^T M A) of the products M^T (t^2, tiles, n), in fixed bands of tile rows.

    Ho <= m*th, Wo <= m*tw: where the tiles stick out of y (13 px maps in 2x2 tiles, 26 px in 4x4),
    a band's tiles go to a per-thread buffer and are cropped into y in the same item, cache-hot and on
    both threads. With `tail` (`engine.kernels.tails`), each band runs the fused next layer on its
    output rows if the tail takes bands, else it runs after the bands."""
    t = m + 2
    n, ho, wo = y.shape
    at = matrices(m)[2].astype(F)
    _, kat = kron(m)
    rows = out_band_rows(th, t * t * tw * n)
    chunk = {4: np.complex128, 2: np.float64}.get(m)
    m2 = mt.reshape(t * t, th * tw * n)
    leaky, relu = act == "leaky", act == "relu"
    tail_bands = tail is not None and tail.on_bands(m * rows)

    def band(part: int, i: int) -> None:
        r0, r1 = i * rows, min(th, (i + 1) * rows)
        tr = r1 - r0
        nb = tr * tw * n
        z = scratch.get(f"wino_z{part}", (nb, m * m))
        if m == 2:      # (nb, 16) @ (16, 4): the 1-D passes would be GEMMs of 2 columns
            np.matmul(m2[:, r0 * tw * n:r1 * tw * n].T, kat, out=z)
        else:
            # separably, A^T over a, then over b: m + 1 GEMMs of K = t, (t + m) / (t m) of K_A's multiplies
            # (240/576 for m = 4; one thread, a whole map: 0.18 vs 0.35 ms on 128 x 52 px, 0.115 vs 0.21 on 256 x 26)
            pb = scratch.get(f"wino_p{part}", (t, m, nb))
            np.matmul(at, m2[:, r0 * tw * n:r1 * tw * n].reshape(t, t, nb), out=pb)   # pb[b, i] = sum_a A^T[i, a] M[t*b + a]
            z3 = z.reshape(nb, m, m)
            # z[., m*i + j] = sum_b A^T[j, b] pb[b, i], the m GEMMs as one stacked call (same sgemm each)
            np.matmul(pb.transpose(1, 2, 0), at.T, out=z3.transpose(1, 0, 2))
        if leaky:
            tmp = scratch.get(f"wino_t{part}", z.shape)
            np.multiply(z, F(0.1), out=tmp)
            np.maximum(z, tmp, out=z)
        elif relu:
            np.maximum(z, F(0), out=z)
        z5 = z.reshape(tr, tw, n, m, m)                    # [ty, tx, f, i, j]
        ya, yb = m * r0, min(ho, m * r1)
        exact = yb - ya == m * tr and wo == m * tw
        full = y[:, ya:yb] if exact else scratch.get(f"wino_y{part}", (n, m * tr, m * tw))
        dst = full.reshape(n, tr, m, tw, m)                # [f, ty, i, tx, j]
        if chunk is not None:   # move each tile row's m floats as one element
            dst.view(chunk)[..., 0][...] = z5.view(chunk)[..., 0].transpose(2, 0, 3, 1)
        else:
            dst[...] = z5.transpose(2, 0, 3, 1, 4)
        if not exact:
            y[:, ya:yb] = full[:, :yb - ya, :wo]
        if tail_bands:
            tail.rows(y, ya, yb, scratch, part)

    parallel_items(-(-th // rows), band)
    if tail is not None and not tail_bands:
        tail.rest(y, scratch)
