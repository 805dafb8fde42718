"""The pairs of boxes that may overlap above an NMS threshold t: a superset, small, never N x N.

The exact overlap (nms.overlap_pairs) then decides. Two bounds hold for IoU > t:
- each side's ratio: IoU <= min(wa, wb) / max(wa, wb) (inter <= min(w) min(h), union >= max(w) min(h)),
  likewise for h, and IoU <= min(area) / max(area);
- the centre distance: |cxa - cxb| < (1/2 - tau)(wa + wb) with tau = t/(1+t), likewise in y (see
  `_level_pairs`).
`_binned_pairs` (the fast path) groups boxes in half-octave area bins, pairs the bins whose extreme
widths, heights and areas allow a ratio above t, and joins every pair of bins at once: one sorted
key (bin pair, row, column) on a grid of cells one window wide (8 columns a cell), 3 rows searched
per box (a pair inside one bin only from the member that comes first in the sorted keys, so no pair
is proposed twice). A fixed number of NumPy calls whatever the number of bins: on random-weight yolov3 @416,
214k candidates for 22k overlapping pairs in 2/3 of the time of the per-level joins of
`_level_pairs` (222k). Finer bins (quarter octaves, or width x height bins) propose fewer pairs but
replicate every box into more bin pairs: measured slower.

Rounding: every bound is loosened by MARGIN (relative). The IoU is computed from box edges cx +- w/2,
whose rounding is relative to |cx|, not to w; for boxes with |cx| + w <= CONDITION * w (and likewise
in y) it stays far below MARGIN for t >= MIN_T. Other inputs (tiny boxes far from the origin, t near
0) take `_level_pairs`, whose looser octave windows were tested on them.
"""
from __future__ import annotations

import numpy as np

from engine.kernels.threads import parallel_items

BINS = 2                  # area bins per octave (finer bins: fewer candidates, more bin pairs)
MARGIN = 2.0 ** -20       # relative loosening of every bound against rounding in the IoU
CONDITION = 2.0 ** 16     # |centre| + side <= CONDITION * side: the fast path's rounding argument
MIN_T = 1e-3
CELLS = 2 ** 16           # cells per axis at most (keys: pair id << 42 | row << 24 | column)
COLUMNS = 8               # key columns per cell in x (measured: 1 -> 8 cut the candidates 1.5x)


def candidate_pairs(boxes: np.ndarray, t: float) -> np.ndarray:
    """Pairs (P, 2) of box indices, i < j, that include every pair with IoU > t (0 < t).
    Boxes with a zero, infinite or NaN side are left out: their IoU is never > t."""
    return ordered_pairs(*candidate_ij(boxes, t))


def ordered_pairs(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """(P, 2) pairs with the lower index first, from two index arrays holding each pair in either order."""
    return np.stack([np.minimum(i, j), np.maximum(i, j)], 1)


def candidate_ij(boxes: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    """`candidate_pairs` as two index arrays, each pair once but in either order (i != j): the
    caller orders only the pairs its exact test keeps."""
    parts = candidate_parts(boxes, t)
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate([i for i, _ in parts]), np.concatenate([j for _, j in parts])


def candidate_parts(boxes: np.ndarray, t: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """`candidate_ij`'s pairs as a few (i, j) parts, not concatenated (a caller that tests them
    chunk by chunk saves the copies: 1.4 ms of 214k pairs on random yolov3)."""
    w, h = boxes[:, 2], boxes[:, 3]
    with np.errstate(over="ignore", invalid="ignore"):
        area = w * h
    regular = np.flatnonzero(np.isfinite(boxes).all(1) & (w > 0) & (h > 0) & np.isfinite(area) & (area > 0))
    if regular.size < 2:
        return []
    cx, cy, bw, bh = (np.ascontiguousarray(c) for c in boxes[regular].T)
    if t < MIN_T or not _well_conditioned(cx, bw) or not _well_conditioned(cy, bh):
        return [_pairs_of(_level_pairs(boxes, regular, t))]
    parts = _binned_pairs(cx, cy, bw, bh, t)
    if regular.size == boxes.shape[0]:        # every box regular: the indices are the boxes' already
        return parts
    return [(regular[i], regular[j]) for i, j in parts]


def _pairs_of(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return p[:, 0], p[:, 1]


def _well_conditioned(c: np.ndarray, side: np.ndarray) -> bool:
    return bool(np.all((side >= 1e-140) & (side <= 1e140) & (np.abs(c) + side <= CONDITION * side)))


def _bin_ratio(lo: np.ndarray, hi: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The largest min/max ratio between a value of bin a (in [lo[a], hi[a]]) and one of bin b."""
    return np.where(hi[a] < lo[b], hi[a] / lo[b], np.where(hi[b] < lo[a], hi[b] / lo[a], 1.0))


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """starts[0] .. starts[0]+counts[0]-1, starts[1] .. : the ranges concatenated."""
    first = np.cumsum(counts) - counts
    return np.repeat(starts - first, counts) + np.arange(int(counts.sum()))


def _key_order(pair: np.ndarray, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """An order sorting the keys (pair, row, col) (non-negative fields; equal keys in any order).
    Packed densely into 32 bits when they fit (always on real inputs): one or two passes of NumPy's
    radix sort on 16-bit digits, 6x faster than an argsort of 10k int64 keys; else an argsort."""
    rows, cols = int(row.max()) + 1, int(col.max()) + 1
    if (int(pair[-1]) + 1) * rows * cols > 1 << 32:
        return np.argsort((pair << 42) | (row << 24) | col)
    dense = (pair * rows + row) * cols + col
    o = np.argsort(dense.astype(np.uint16), kind="stable")          # the low digit (wraps: mod 2^16)
    high = (dense >> 16).astype(np.uint16)
    return o if not high.any() else o[np.argsort(high[o], kind="stable")]


def _binned_pairs(cx: np.ndarray, cy: np.ndarray, w: np.ndarray, h: np.ndarray,
                  t: float) -> list[tuple[np.ndarray, np.ndarray]]:
    tl = t * (1 - MARGIN)
    gap = max(0.5 - tl / (1 + tl), 1e-3) * (1 + MARGIN)
    level = np.floor(BINS * np.log2(w * h)).astype(np.int64)
    order = np.argsort(level.astype(np.int16), kind="stable")   # |level| < 2^12 (finite areas): a radix sort
    lv = level[order]
    starts = np.flatnonzero(np.concatenate(([True], lv[1:] != lv[:-1])))
    counts = np.diff(np.append(starts, order.size))
    stats = {}
    for name, v in (("w", w), ("h", h), ("a", w * h), ("x", cx), ("y", cy)):
        v = v[order]
        stats[name] = (np.minimum.reduceat(v, starts), np.maximum.reduceat(v, starts))
    # bin pairs (a, b), b <= a, whose widths, heights and areas allow a ratio above t
    nb, lv = starts.size, lv[starts]
    first = np.searchsorted(lv, lv - (int(np.floor(BINS * np.log2(1 / tl))) + 2), "left")
    a = np.repeat(np.arange(nb), np.arange(nb) - first + 1)
    b = _ranges(first, np.arange(nb) - first + 1)
    ok = np.ones(a.size, bool)
    for name in "wha":
        ok &= _bin_ratio(*stats[name], a, b) > tl
    a, b = a[ok], b[ok]
    if a.size >= 2 ** 21:                    # the key's pair field; never near on real inputs
        return [_pairs_of(_level_pairs(np.column_stack([cx, cy, w, h]), np.arange(w.size), t))]
    # one grid per bin pair: cells one window wide (at most CELLS a side), origin at the pair's corner
    wide = 1 + 1e-6                          # rounding of the scaled coordinates: 1e-7 cells of slack
    x0 = np.minimum(stats["x"][0][a], stats["x"][0][b])
    y0 = np.minimum(stats["y"][0][a], stats["y"][0][b])
    sx = np.maximum(gap * (stats["w"][1][a] + stats["w"][1][b]) * wide,
                    (np.maximum(stats["x"][1][a], stats["x"][1][b]) - x0) / CELLS)
    sy = np.maximum(gap * (stats["h"][1][a] + stats["h"][1][b]) * wide,
                    (np.maximum(stats["y"][1][a], stats["y"][1][b]) - y0) / CELLS)
    pair = np.arange(a.size, dtype=np.int64)
    # the data side: every member of each pair's bin b, keyed by (pair, row, column); columns are
    # COLUMNS to a cell, so that a window's columns in a row, one key range, hug it closely in x
    pd = np.repeat(pair, counts[b])
    jd = order[_ranges(starts[b], counts[b])]
    row = np.floor((cy[jd] - y0[pd]) / sy[pd]).astype(np.int64)
    col = np.floor((cx[jd] - x0[pd]) * (COLUMNS / sx[pd])).astype(np.int64)
    o = _key_order(pd, row, col)
    key = ((pd << 42) | (row << 24) | col)[o]
    jd = jd[o]
    # the query side: every member of bin a, its window (at most 3 rows)
    pq = np.repeat(pair, counts[a])
    iq = order[_ranges(starts[a], counts[a])]
    bq = b[pq]
    # a pair within one bin (a == b) is searched from the member that comes first in the sorted data
    # only: each query's search starts after its own place there. Both members' windows hold the pair
    # (the bounds are symmetric in the two boxes), so it is found once, and never proposed twice.
    same = a[pq] == bq
    mine = np.zeros(iq.size, np.int64)
    inv = np.empty_like(o)
    inv[o] = np.arange(o.size)
    q_first, d_first = np.cumsum(counts[a]) - counts[a], np.cumsum(counts[b]) - counts[b]
    at = np.flatnonzero(same)
    mine[at] = inv[d_first[pq[at]] + at - q_first[pq[at]]] + 1
    xq, yq = (cx[iq] - x0[pq]) * (COLUMNS / sx[pq]), (cy[iq] - y0[pq]) / sy[pq]
    rx = gap * (w[iq] + stats["w"][1][bq]) * (COLUMNS / sx[pq]) + 1e-6
    ry = gap * (h[iq] + stats["h"][1][bq]) / sy[pq] + 1e-7
    c_lo = np.clip(np.floor(xq - rx), 0, COLUMNS * CELLS + COLUMNS).astype(np.int64)
    c_hi = np.clip(np.floor(xq + rx), 0, COLUMNS * CELLS + COLUMNS).astype(np.int64)
    r_lo = np.clip(np.floor(yq - ry), 0, CELLS + 1).astype(np.int64)
    r_hi = np.clip(np.floor(yq + ry), 0, CELLS + 1).astype(np.int64)
    base = pq << 42
    found: list = [None] * 3

    def scan(_part: int, dr: int) -> None:    # one row of the windows: the 3 run on the kernel threads
        # the third row only for the windows that reach it (about half): the searches are most of the time
        q = np.flatnonzero(r_lo + dr <= r_hi) if dr == 2 else slice(None)
        b, c0, c1, lo0 = base[q], c_lo[q], c_hi[q], mine[q]
        row = (r_lo[q] + dr) << 24
        lo = np.maximum(np.searchsorted(key, b | row | c0, "left"), lo0)
        count = np.searchsorted(key, b | row | c1, "right") - lo
        if dr == 1:
            count[r_lo + 1 > r_hi] = 0
        np.maximum(count, 0, out=count)
        found[dr] = np.repeat(iq[q], count), jd[_ranges(lo, count)]

    parallel_items(3, scan)
    return found


def _level_pairs(boxes: np.ndarray, regular: np.ndarray, t: float) -> np.ndarray:
    """Candidate pairs among the `regular` boxes by area octaves (the general path).

    Two bounds prune the pairs. (1) IoU <= min(area)/max(area), so the areas are within a ratio t.
    (2) IoU > t means inter > t * (Aa + Ab - inter), so inter > tau * (Aa + Ab) with tau = t/(1+t);
    with inter <= ow * min(h) and Aa + Ab >= (wa + wb) * min(h), the overlap width ow exceeds
    tau * (wa + wb), and as ow <= (wa + wb)/2 - |cxa - cxb|:  |cxa - cxb| < (1/2 - tau)(wa + wb),
    likewise in y. So boxes are grouped in area levels (octaves); a level pairs with itself and the
    `reach` levels below it through a grid join (`_join`) on centres scaled by the two levels'
    largest bound (2), each box searching with its own bound.
    """
    w, h = boxes[:, 2], boxes[:, 3]
    level = np.floor(np.log2(w[regular] * h[regular])).astype(np.int64)   # areas finite and > 0 there
    # areas two levels apart or more differ by > 2**(D-1); that exceeds 1/t from D = floor(log2(1/t)) + 2
    reach = int(np.floor(np.log2(1 / t))) + 1 if t < 1 else 1
    # the strict bound, widened against rounding; at least 1e-3 (near t = 1 only rounding lets IoU
    # exceed t, for near-duplicates; a wider window only adds candidates, the exact IoU decides)
    gap = max(0.5 - t / (1 + t), 1e-3) * (1 + 1e-9)
    order = np.argsort(level, kind="stable")
    groups = {}
    for part in np.split(order, np.flatnonzero(np.diff(level[order])) + 1):
        members = regular[part]
        groups[int(level[part[0]])] = (members, float(w[members].max()), float(h[members].max()))
    out = []
    for la, (ma, wa, ha) in groups.items():
        for lb in range(la - reach, la + 1):
            if lb not in groups:
                continue
            mb, wb, hb = groups[lb]
            sx, sy = gap * (wa + wb), gap * (ha + hb)   # the largest bound of the two levels: scale 1
            i, j = _join(boxes[ma, 0] / sx, boxes[ma, 1] / sy, boxes[mb, 0] / sx, boxes[mb, 1] / sy,
                         gap * (w[ma] + wb) / sx + 1e-12, gap * (h[ma] + hb) / sy + 1e-12, lb == la)
            if i.size:
                out.append(np.stack([ma[i], mb[j]], 1))
    if not out:
        return np.zeros((0, 2), np.int64)
    pairs = np.concatenate(out)
    return np.stack([np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])], 1)


def _join(xa: np.ndarray, ya: np.ndarray, xb: np.ndarray, yb: np.ndarray, rx: np.ndarray, ry: np.ndarray,
          same: bool) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) with |xa_i - xb_j| <= rx_i and |ya_i - yb_j| <= ry_i, for rx, ry <= 1.

    B is sorted by (row = floor(y), x) into one key; for each A point and each of the 3 rows
    around it, the B points within rx are one contiguous key range (two searchsorted calls for
    all points at once), expanded into pairs and filtered in y. `same` (A is B): i < j only.
    """
    x0 = min(xa.min(), xb.min())
    width = max(xa.max(), xb.max()) - x0 + 4.0          # rows never overlap in the key
    key = np.floor(yb) * width + (xb - x0)
    order = np.argsort(key, kind="stable")
    key = key[order]
    row, xs = np.floor(ya), xa - x0
    # keys and bases carry rounding of a few ulps of their magnitude: widen the window by that
    slack = 8 * np.finfo(np.float64).eps * (float(np.abs(key).max()) + (float(row.max()) + 2) * width)
    rx = rx + slack
    found_i, found_j = [], []
    for dy in (-1.0, 0.0, 1.0):
        base = (row + dy) * width + xs
        lo = np.searchsorted(key, base - rx, "left")
        count = np.searchsorted(key, base + rx, "right") - lo
        total = int(count.sum())
        if not total:
            continue
        i = np.repeat(np.arange(xa.size), count)
        first = np.cumsum(count) - count                   # where each point's run starts in the output
        j = order[np.repeat(lo - first, count) + np.arange(total)]
        ok = np.abs(ya[i] - yb[j]) <= ry[i]
        if same:
            ok &= i < j
        found_i.append(i[ok])
        found_j.append(j[ok])
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(found_i), np.concatenate(found_j)


