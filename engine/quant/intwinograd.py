"""Integer-exact Winograd F(2x2, 3x3) for int8 3x3 stride-1 convolutions (INT and HYBRID).

The float engine runs its big 3x3 layers with Winograd (16 multiplies per 2x2 outputs, not 36); the
int8 path ran them as im2col GEMMs, 2.25x the multiplies. This is the same algorithm kept exact:

    Y = A^T [ U . V ] A,  V = B^T d B,  U = G g G^T   (engine/kernels/winograd_gemm.py derives the matrices)

* V has integer entries (B is 0/+-1): |V| <= 4 * 127, exact in float32;
* U has halves; U' = (2G) g (2G)^T = 4U is an integer (|U'| <= 9 * 127), transformed once per int8
  weight array in int64;
* the 16 products sum over input channels as float32 GEMMs, exact while every partial sum is below
  2**24: max_f sum_c |U'[p, f, c]| * max |V[p]| < 2**24 per position p, checked per call from cached
  per-block weight sums and per-block max |V| (sum_j (sum_{c in block j} |U'|) * max_{c in j} |V|);
  where it fails the channels are split into chunks that pass, summed in int32 / int64 (exact); a
  single 64-channel block that cannot pass sends the layer back to im2col;
* the output transform adds integers in int32 (int64 when its sums could reach 2**31), and
  A^T M A = 4 * (the exact accumulator), so an arithmetic shift by 2 gives the int32 accumulators
  bit for bit (property tests: tests/engine/test_int_winograd.py against conv_int_naive).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from engine.kernels import winograd_gemm
from engine.kernels.scratch import Scratch
from engine.kernels.threads import own_threads, parallel_items
from engine.quant.intcache import kept

EXACT_F32 = float(1 << 24)
_MIN, _MAX = np.minimum.reduce, np.maximum.reduce


def _abs_max(a: np.ndarray) -> float:
    return max(float(_MAX(a, axis=None)), -float(_MIN(a, axis=None)))


BLOCK = 64                      # channels per block of the cached weight bounds
_G2 = np.array([[2, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 2]], np.int64)    # 2G
_K2 = np.einsum("ai,bj->ijab", _G2, _G2).reshape(9, 16).astype(np.float32)   # vec(g) @ _K2 = vec(U')
# winograd_gemm's V index 4*b + a -> this module's 4*a + b (U' and M): the same transposition both ways
_PERM = np.array([4 * (i % 4) + i // 4 for i in range(16)])
# its B^T (Toom-Cook from points 0, 1, -1) has rows 0 and 3 negated against this module's (Lavin's):
# V[a, b] there is _SIGN[a] * _SIGN[b] * V[a, b] here, so U' takes the same signs and M is unchanged
_SIGN = np.outer([-1, 1, 1, -1], [-1, 1, 1, -1]).reshape(16).astype(np.float32)


def suitable(c: int, h: int, w: int, n: int, k: int, s: int, p: int, groups: int = 1) -> bool:
    """3x3, stride 1, 'same' padding, and enough channels that the GEMMs dominate the transforms
    (the float kernels' rule; measured with the int8 epilogues: 10% less CPU at 64 -> 128 on 52x52,
    20-40% less from 128 input channels on 13x13 to 26x26 maps)."""
    return groups == 1 and k == 3 and s == 1 and p == 1 and h >= 2 and w >= 2 and c >= 64 and n >= 64


class Weights:
    """U' = (2G) g (2G)^T of int8 weights (n, C, 3, 3) as float32 (16, n, C), and the sums of |U'| the
    exactness bounds read: per position (max over filters), and per block of BLOCK channels."""

    def __init__(self, w_q: np.ndarray) -> None:
        n, c = w_q.shape[:2]
        # one BLAS product (n*C, 9) @ (9, 16) in float32: integers below 2**11, every sum exact
        u = np.matmul(w_q.reshape(n * c, 9).astype(np.float32), _K2)
        # |U'| <= 1143: exact; signed as the input transform's V (_SIGN), so M = U' . V is unchanged
        self.u = np.ascontiguousarray(u.T.reshape(16, n, c) * _SIGN[:, None, None])
        self.u.flags.writeable = False
        # (16,) max_f sum_c |U'| (float64 sums of integers: exact)
        self.row_sums = np.abs(self.u).sum(axis=2, dtype=np.float64).max(axis=1)
        self._block_sums: np.ndarray | None = None

    @property
    def block_sums(self) -> np.ndarray:
        """(16, n, blocks) sums of |U'| per BLOCK channels, made on the first layer that needs a split."""
        if self._block_sums is None:
            c = self.u.shape[2]
            blocks = -(-c // BLOCK)
            pad = np.zeros(self.u.shape[:2] + (blocks * BLOCK,), np.float32)
            np.abs(self.u, out=pad[:, :, :c])
            # sums of at most BLOCK * 1143 < 2**24: exact in float32
            self._block_sums = pad.reshape(pad.shape[:2] + (blocks, BLOCK)).sum(axis=3).astype(np.int64)
        return self._block_sums

    def chunks(self, p: int, vmax: float, vblock: np.ndarray | None = None) -> list[tuple[int, int]] | None:
        """Channel ranges whose float32 sums are exact for position p with |V| <= vmax, and <= vblock[j]
        in channel block j when given (a tighter bound: a partial sum over any channels is at most
        sum_j (sum of |U'| over block j) * vblock[j]); None: a single block is already too large."""
        c = self.u.shape[2]
        if self.row_sums[p] * vmax < EXACT_F32:
            return [(0, c)]
        blocks = self.block_sums.shape[2]
        vb = np.full(blocks, vmax) if vblock is None else np.asarray(vblock, np.float64)
        part = self.block_sums[p] * vb                          # (n, blocks): exact float64 integers
        out, start, acc = [], 0, np.zeros(part.shape[0])
        for j in range(blocks):
            nxt = acc + part[:, j]
            if nxt.max() >= EXACT_F32:
                if j == start:
                    return None
                out.append((start * BLOCK, j * BLOCK))
                start, nxt = j, part[:, j].copy()
                if nxt.max() >= EXACT_F32:
                    return None
            acc = nxt
        out.append((start * BLOCK, c))
        return out


def weights(w_q: np.ndarray) -> Weights:
    return kept("int-winograd-2x2", w_q, lambda: Weights(w_q))


def input_tiles(x_q: np.ndarray, scratch: Scratch) -> np.ndarray:
    """V of every 4x4 tile (stride 2) of the int8 input padded by 1: (16, C, tiles) float32 in
    winograd_gemm's order and signs (position 4*b + a; see _PERM, _SIGN), in scratch.

    One (16, 16) @ (16, C*tiles) GEMM per channel block (winograd_gemm.input_transform): K_B is 0/+-1
    and d int8, so every V is a sum of 16 small integers, exact in float32. Measured against the
    separable NumPy passes it replaced, interleaved on yolov3-tiny's six Winograd layers (2 threads,
    load 1.7): 35.0 vs 36.7 ms, and it comes out in the (C, tiles) layout the GEMMs read, no transposes.
    """
    with own_threads():                      # BLAS single-threaded, channel blocks on the kernel pool
        return winograd_gemm.input_transform(x_q, 1, 2, scratch)


def conv3x3_acc(x_q: np.ndarray, w_q: np.ndarray, scratch: Scratch) -> np.ndarray | None:
    """Exact accumulators (n, H, W) of the 3x3 stride-1 pad-1 conv of int8 x_q (C, H, W) with int8
    w_q (n, C, 3, 3), no bias: float32 exact integers on even maps that took the float32 transforms,
    else int32; None when a channel block's sums cannot be kept exact. (`conv3x3_fused`, kept.)"""
    n, h, w = w_q.shape[0], x_q.shape[1], x_q.shape[2]
    out: list[np.ndarray] = []

    def keep(part: int, r0: int, r1: int, acc: np.ndarray, ch: slice) -> None:
        if not out:
            out.append(np.empty((n, h, w), acc.dtype if h % 2 == 0 and w % 2 == 0 else np.int32))
        out[0][ch] = acc                                   # exact integers: an exact cast

    if not conv3x3_fused(x_q, w_q, scratch, keep, float_acc=False):
        return None
    return out[0]


FILTER_BLOCKS = 4               # filter blocks of the output transform + epilogue (at least; even)


def conv3x3_fused(x_q: np.ndarray, w_q: np.ndarray, scratch: Scratch,
                  epilogue: Callable[[int, int, int, np.ndarray, slice], None], float_acc: bool = True,
                  bias: np.ndarray | None = None, on_fold: Callable[[], None] | None = None) -> bool:
    """The 3x3 stride-1 pad-1 conv of int8 x_q (C, H, W) with int8 w_q (n, C, 3, 3), no bias, its exact
    accumulators handed to epilogue(part, 0, H, acc, ch) per filter block as soon as the output
    transform has made them (the block still in cache, on the thread that made it): acc a contiguous
    (filters in ch, H, W) array of exact integers, float32 when every accumulator is below 2**24
    (known from the bounds), else int32 (also where the integer transform ran, with `float_acc=False`);
    valid only during the call. False (nothing called) when a channel block's sums cannot be kept exact.

    The products are float32 GEMMs into M, a position whose bound splits its channels adding its
    chunks' exact sums in float32 (exact while every running sum stays below 2**24, checked on the
    spot; else the chunks add in integers). The GEMMs also take the extremes of
    their M[p] (in cache, on the kernel threads): the output transform adds 9 of them per output, so
    the sum of the 9 largest |M[p]| it can meet (`_output_bound`) bounds every partial sum of it. Below
    2**24 (yolov3-tiny: 7-15% of it on real photos, while the weight x input bound is 0.75-3.6x) the
    transform runs in float32 on M as the GEMMs wrote it: a GEMM with A^T (x) A^T / 4 on even maps,
    the separable adds then * 1/4 on odd ones; else M is cast to integers first (`_output_tiles`).

    `bias` (int, (n,)) with `on_fold`: on that float32 path, when the bound still holds with 4 * b
    added to M[1, 1] (which every output reads with weight 1/4: `_KA`), the output items add it there
    (1/16 of M, in cache), on_fold() is called before the first epilogue, and acc holds the sums with
    the bias (the epilogue's bias pass over the output is saved); else nothing changes."""
    c, h, w = x_q.shape
    wt = weights(w_q)
    n = w_q.shape[0]
    th, tw = (h + 1) // 2, (w + 1) // 2
    t = th * tw
    v = input_tiles(x_q, scratch)
    blocked = c % BLOCK == 0
    vmax = np.zeros(16)
    plans: list = [None] * 16
    mf = scratch.get("iw_mf", (16, n, t))
    ext = np.zeros(16)

    def gemm_f(part: int, p: int) -> None:
        out = mf[p]
        vt = v[_PERM[p]]                                        # (C, tiles), contiguous
        # this position's input bounds, taken here (V[p] is read next by the GEMM) instead of in a
        # pass of their own: max |V| per block of BLOCK channels when C is a multiple of it
        v2 = vt.reshape(c // BLOCK, -1) if blocked else vt.reshape(1, -1)
        vb = np.maximum(_MAX(v2, axis=1), -_MIN(v2, axis=1)).astype(np.float64)
        vmax[p] = vb.max()
        plan = plans[p] = wt.chunks(p, float(vmax[p]), vb if blocked else None)
        if plan is None:                                        # a block too large: im2col runs the layer
            return
        if len(plan) == 1:
            np.matmul(wt.u[p], vt, out=out)
        else:
            # each chunk's sums are exact float32 integers (below 2**24); adding two of them is exact
            # iff the rounded sum stays below 2**24 (rounding is monotone and 2**24 is a float32
            # number, so a true sum at or past it rounds to at least 2**24): checked after every add,
            # else the integer path below redoes this layer
            tmp = scratch.get(f"iw_out{part}", (n, t))
            for k, (a, b) in enumerate(plan):
                np.matmul(wt.u[p, :, a:b], vt[a:b], out=out if k == 0 else tmp)
                if k:
                    out += tmp
                    if k < len(plan) - 1 and _abs_max(out) >= EXACT_F32:
                        ext[p] = np.inf
                        return
        ext[p] = _abs_max(out)
        if len(plan) > 1 and ext[p] >= EXACT_F32:
            ext[p] = np.inf

    with own_threads():
        parallel_items(16, gemm_f)
    if any(pl is None for pl in plans):
        return False
    bounds = wt.row_sums * vmax
    out_bound = _output_bound(bounds)
    itype = np.int32 if 9 * float(bounds.max()) < 2.0 ** 31 else np.int64
    if np.isfinite(ext).all():
        if min(out_bound, _output_bound(ext)) < EXACT_F32:
            fold = None
            if bias is not None and on_fold is not None and bias.size == n:
                b4, b4s = _bias4(bias)
                # |M[1, 1] + 4b| <= ext + 4 max|b|: exact below 2**24; every output reads M[1, 1] once, so
                # the bound with it is the bound without plus b4 (integers in float64: exact)
                if ext[BIAS_P] + b4 < EXACT_F32 and _output_bound(ext) + b4 < EXACT_F32:
                    fold = b4s
                    on_fold()
            if h % 2 == 0 and w % 2 == 0:       # (odd maps: a GEMM into whole tiles + a crop measured no faster)
                _output_gemm(mf, n, h, w, th, tw, scratch, epilogue, fold)
            else:
                _output_tiles(mf, n, h, w, th, tw, scratch, epilogue, np.float32, fold)
            return True
        m = scratch.get("iw_m", (16, n, t), itype)

        def cast(part: int, p: int) -> None:
            m[p] = mf[p]                                        # exact integers: exact cast

        with own_threads():
            parallel_items(16, cast)
    else:                     # a split position's chunks add past 2**24: integer adds
        m = scratch.get("iw_m", (16, n, t), itype)

        def gemm(part: int, p: int) -> None:
            vt = v[_PERM[p]]                                    # (C, tiles), contiguous
            out = scratch.get(f"iw_out{part}", (n, t))
            plan = plans[p]
            if len(plan) == 1:
                m[p] = mf[p]                                    # one exact GEMM above: exact cast
                return
            # each chunk's sums are exact float32 integers; they add in M's integer type (two fast
            # passes, where a float64 accumulator took mixed-type buffered ones)
            cast = scratch.get(f"iw_cast{part}", (n, t), m.dtype)
            for k, (a, b) in enumerate(plan):
                np.matmul(wt.u[p, :, a:b], vt[a:b], out=out)
                if k == 0:
                    m[p] = out
                else:
                    cast[...] = out
                    m[p] += cast

        with own_threads():
            parallel_items(16, gemm)
    # |acc| <= out_bound / 4 (the transform's sums are 4 * acc): float32 holds them exactly below 2**24
    f32 = float_acc and out_bound < 4 * EXACT_F32
    _output_tiles(m, n, h, w, th, tw, scratch, epilogue, np.float32 if f32 else np.int32)
    return True


def _bias4(bias: np.ndarray) -> tuple[float, np.ndarray]:
    """(4 max|b|, 4b as float32) of an int bias, kept per bias array (edits replace arrays)."""
    def make() -> tuple[float, np.ndarray]:
        b4s = (4 * bias.astype(np.int64)).astype(np.float32)
        b4s.flags.writeable = False
        return 4.0 * float(np.abs(bias).max(initial=0)), b4s
    return kept("int-winograd-bias4", bias, make)


def filter_edges(n: int, per: int) -> list[int]:
    """Edges of filter blocks of at most `per` filters (at least FILTER_BLOCKS, an even count when more
    than one: two kernel threads pull them), sizes differing by at most one."""
    blocks = min(n, max(FILTER_BLOCKS, -(-n // max(1, per))))
    if blocks > 1 and blocks % 2:
        blocks = min(n, blocks + 1)
    return [n * i // blocks for i in range(blocks + 1)]


# A^T (x) A^T / 4 as (16, 4): Y[2i + j] = sum_p KA[p, 2i + j] M[p] for p = 4a + b, Lavin's A^T (this
# module's M); the 1/4 makes the GEMM's result the accumulators themselves (a power of two: exact)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)
_KA = np.ascontiguousarray(np.einsum("ia,jb->abij", _AT, _AT).reshape(16, 4) / 4, np.float32)
_SETS = ((0, 1, 2), (1, 2, 3))           # the rows (columns) of M that output row (column) 0 / 1 reads
BIAS_P = 5                               # M[1, 1] (p = 4a + b): every output reads it with weight 1/4
assert np.all(_KA[BIAS_P] == 0.25)


# the 9 positions 4a + b each of the 4 outputs of a tile reads (rows a in _SETS[i], columns b in _SETS[j])
_READS = np.array([[4 * a + b for a in r for b in c] for r in _SETS for c in _SETS])


def _output_bound(bounds: np.ndarray) -> float:
    """Largest sum of the 9 bounds |M[p]| <= bounds[p] one output adds: every partial sum of the output
    transform, in any order, lies below it (the 1/4 scales the sums and float32's grid alike). The
    bounds are integers (exact float64 sums in any order); one gather, not 4 ix_ slices (serial code
    between two parallel passes)."""
    return float(np.asarray(bounds, np.float64).reshape(16)[_READS].sum(axis=1).max())


def _output_gemm(m: np.ndarray, n: int, h: int, w: int, th: int, tw: int, scratch: Scratch,
                 epilogue: Callable[[int, int, int, np.ndarray, slice], None], fold: np.ndarray | None = None) -> None:
    """Even maps, float32 M whose output sums stay below 2**24 (`_output_bound`): the output transform
    is one float32 GEMM per filter block with A^T (x) A^T / 4, exact by that bound (products +-M/4 and
    every partial sum are multiples of 1/4 below 2**22): the accumulators come out as float32 (filters,
    h, w) blocks, handed to the epilogue on the spot, with no int32 copies, adds and shifts over M (4x
    the output's size) and no cast back to float."""
    t = th * tw
    m2 = m.reshape(16, n * t)
    edges = filter_edges(n, (1 << 18) // (16 * t))          # M's block ~1 MiB at most
    kmax = max(edges[i + 1] - edges[i] for i in range(len(edges) - 1))

    def out_block(part: int, i: int) -> None:
        n0, n1 = edges[i], edges[i + 1]
        k = n1 - n0
        if fold is not None:                                # 4 * bias into M[1, 1]: exact (conv3x3_fused)
            m2[BIAS_P, n0 * t:n1 * t].reshape(k, t)[...] += fold[n0:n1, None]
        z = scratch.get(f"iw_z{part}", (kmax * t, 4))[:k * t]
        np.matmul(m2[:, n0 * t:n1 * t].T, _KA, out=z)
        # [f, ty, tx, i, j] -> y[f, 2ty + i, 2tx + j]: each tile row's two floats move as one float64
        y = scratch.get(f"iw_y{part}", (kmax, h, w))[:k]
        dst = y.reshape(k, th, 2, tw, 2)
        dst.view(np.float64)[..., 0].transpose(0, 1, 3, 2)[...] = z.reshape(k, th, tw, 2, 2).view(np.float64)[..., 0]
        epilogue(part, 0, h, y, slice(n0, n1))

    with own_threads():
        parallel_items(len(edges) - 1, out_block)


def _output_tiles(m: np.ndarray, n: int, h: int, w: int, th: int, tw: int, scratch: Scratch,
                  epilogue: Callable[[int, int, int, np.ndarray, slice], None], dtype=np.int32,
                  fold: np.ndarray | None = None) -> None:
    """A^T M A per tile, integer adds, then / 4 (exact): the accumulators, per filter block into a
    (filters, h, w) `dtype` buffer (float32 only when every accumulator is below 2**24) handed to the
    epilogue at once. Float32 M (every output sum below 2**24, see `conv3x3_fused`): the same adds in
    float32, exact, and * 1/4. Filter blocks on the kernel threads (every operation is per filter: the same
    integers on any split)."""
    t = th * tw
    floats = m.dtype == np.float32
    m5 = m.reshape(4, 4, n, th, tw)
    edges = filter_edges(n, max(1, (1 << 16) // t))       # M's block ~1 MiB (int32) at most
    kmax = max(edges[i + 1] - edges[i] for i in range(len(edges) - 1))

    def channels(part: int, i: int) -> None:
        lo, hi = edges[i], edges[i + 1]
        k = hi - lo
        c = slice(lo, hi)
        s = scratch.get(f"iw_s{part}", (2, 4, kmax, th, tw), m.dtype)[:, :, :k]
        tt = scratch.get(f"iw_t{part}", (2, kmax, th, tw), m.dtype)[:, :k]
        y = scratch.get(f"iw_y{part}", (kmax, h, w), dtype)[:k]
        if fold is not None:                                # float32 M only: 4 * bias into M[1, 1], exact
            m5[1, 1, c] += fold[c, None, None]
        s0, s1 = s[0], s[1]
        np.add(m5[1][:, c], m5[2][:, c], out=s0)
        np.subtract(m5[1][:, c], m5[2][:, c], out=s1)
        s0 += m5[0][:, c]
        s1 -= m5[3][:, c]
        t0, t1 = tt[0], tt[1]
        for a in range(2):
            sa = s[a]
            rows = (h - a + 1) // 2
            np.add(sa[1], sa[2], out=t0)
            np.subtract(sa[1], sa[2], out=t1)
            t0 += sa[0]
            t1 -= sa[3]
            for b, tb in enumerate((t0, t1)):
                # 4 * acc: the shift (or * 1/4) is exact, and so is the cast to float32 below 2**24
                if floats:
                    np.multiply(tb[:, :rows, :(w - b + 1) // 2], 0.25, out=y[:, a::2, b::2])
                else:
                    np.right_shift(tb[:, :rows, :(w - b + 1) // 2], 2, out=y[:, a::2, b::2], casting="unsafe")
        epilogue(part, 0, h, y, c)

    with own_threads():
        parallel_items(len(edges) - 1, channels)
