"""Darknet's greedy per-class NMS (`do_nms_sort`), vectorised, with the same results bit for bit.

Darknet, per class k: sort the candidates by probability (ties: lower index first), walk down the
list, and zero every later box whose overlap with a still-standing box exceeds `nms`. Done literally
that is one IoU call per kept box and class: 158,181 calls (32 s) on a random-weight yolov3 @416.

Here, in three vectorised steps:
1. The overlap graph, once for all classes: the pairs of boxes whose overlap exceeds `nms`. Boxes
   only pair with boxes of similar size near them (`overlaps.candidate_pairs`: one batched grid
   join over half-octave area bins), and the exact overlap (Darknet's formula, float64) decides.
2. Per edge, the classes where it points from u to v (u first in Darknet's order) and from v to
   u, as bit rows of 64-bit words (one gather of the two probability rows per edge, no per-class
   index arrays).
3. Greedy suppression as a fixed point over all classes at once, on those bit rows: a box with a
   kept predecessor is suppressed, a box whose predecessors are all suppressed is kept; repeat.
   Every round decides at least the first undecided box of each class, and in practice nearly all
   (11 rounds on random yolov3, the later ones on a few hundred edges).

Memory is bounded by the candidate pairs (~26 per box on random yolov3 @416, ~3 of which are
edges above `nms`) and the join's copies of the boxes (~4 per box), never N x N.
"""
from __future__ import annotations

import numpy as np

from engine.darknet.overlaps import candidate_parts, ordered_pairs


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of centre-format boxes a and b (broadcast: (4,) with (N, 4), or (N, 4) pairwise), as
    Darknet's `box_iou`. Symmetric bit for bit: min, max, + and * commute exactly in IEEE."""
    a, b = np.asarray(a).T, np.asarray(b).T
    with np.errstate(over="ignore", invalid="ignore"):  # inf/huge boxes: union inf or NaN -> IoU 0
        return _iou(a, b)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ow = np.minimum(a[0] + a[2] / 2, b[0] + b[2] / 2) - np.maximum(a[0] - a[2] / 2, b[0] - b[2] / 2)
    oh = np.minimum(a[1] + a[3] / 2, b[1] + b[3] / 2) - np.maximum(a[1] - a[3] / 2, b[1] - b[3] / 2)
    inter = np.where((ow < 0) | (oh < 0), 0.0, ow * oh)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_diou(a: np.ndarray, b: np.ndarray, beta: float = 0.6) -> np.ndarray:
    """AB's DIoU used by `nms_kind=greedynms`: IoU - (d^2/c^2)^beta (broadcast as box_iou)."""
    iou = box_iou(a, b)
    a, b = np.asarray(a).T, np.asarray(b).T
    with np.errstate(over="ignore", invalid="ignore"):
        return iou - _diou_penalty(a, b, beta)


def _diou_penalty(a: np.ndarray, b: np.ndarray, beta: float) -> np.ndarray:
    cw = np.maximum(a[0] + a[2] / 2, b[0] + b[2] / 2) - np.minimum(a[0] - a[2] / 2, b[0] - b[2] / 2)
    ch = np.maximum(a[1] + a[3] / 2, b[1] + b[3] / 2) - np.minimum(a[1] - a[3] / 2, b[1] - b[3] / 2)
    c2 = cw * cw + ch * ch
    d2 = (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2
    ratio = np.divide(d2, c2, out=np.zeros_like(d2), where=c2 > 0)
    return ratio ** beta


def overlap_pairs(boxes: np.ndarray, nms: float, kind: str = "default") -> np.ndarray:
    """Pairs (E, 2), i < j, whose overlap (IoU, or DIoU for greedynms) exceeds `nms` > 0."""
    parts = candidate_parts(boxes, nms)       # each pair once, in either order
    if not sum(i.size for i, _ in parts):
        return np.zeros((0, 2), np.int64)
    if kind == "greedynms":                   # DIoU <= IoU: the IoU candidates contain them all
        pi, pj = np.concatenate([i for i, _ in parts]), np.concatenate([j for _, j in parts])
        keep = box_diou(boxes[pi], boxes[pj]) > nms
        return ordered_pairs(pi[keep], pj[keep])
    # box_iou's arithmetic on per-box edge columns (the same float64 values, computed once per box)
    cx, cy, w, h = (np.ascontiguousarray(c) for c in boxes.T)
    with np.errstate(over="ignore"):       # exp() of a wild logit gives inf boxes, as in Darknet
        x1, x2, y1, y2, area = cx - w / 2, cx + w / 2, cy - h / 2, cy + h / 2, w * h
    keeps = [np.empty(i.size, bool) for i, _ in parts]
    # cache-sized chunks in the calling thread (see nms_suppressed), into scratch rows reused chunk
    # after chunk: box_iou's values, in place and masked rather than zeroed: a negative overlap
    # (IoU 0) or a union <= 0 or NaN (box_iou's 0) fails the test whatever the quotient
    m = min(CHUNK, max(i.size for i, _ in parts))
    ow, oh, t, union = (np.empty(m) for _ in range(4))
    ok, ok2 = np.empty(m, bool), np.empty(m, bool)

    def take(values: np.ndarray, idx: np.ndarray, out: np.ndarray) -> np.ndarray:
        return np.take(values, idx, out=out, mode="clip")   # "clip": unbuffered (the indices are valid)

    with np.errstate(all="ignore"):        # inf/NaN boxes: masked out below, as box_iou zeroes them
        for (pi, pj), keep in zip(parts, keeps):
            for lo in range(0, pi.size, CHUNK):
                i, j = pi[lo:lo + CHUNK], pj[lo:lo + CHUNK]
                n = i.size
                a, b, c, d, k, k2 = ow[:n], oh[:n], t[:n], union[:n], ok[:n], ok2[:n]
                np.minimum(take(x2, i, a), take(x2, j, c), out=a)
                np.subtract(a, np.maximum(take(x1, i, b), take(x1, j, c), out=b), out=a)
                np.greater_equal(a, 0, out=k)
                np.minimum(take(y2, i, b), take(y2, j, c), out=b)
                np.subtract(b, np.maximum(take(y1, i, c), take(y1, j, d), out=c), out=b)
                k &= np.greater_equal(b, 0, out=k2)
                a *= b                                   # the intersection, where k
                np.add(take(area, i, d), take(area, j, c), out=d)
                d -= a
                k &= np.greater(d, 0, out=k2)
                np.divide(a, d, out=a)
                k &= np.greater(a, nms, out=k2)
                keep[lo:lo + n] = k
    return np.concatenate([ordered_pairs(i[k], j[k]) for (i, j), k in zip(parts, keeps)])


CHUNK = 1 << 14   # candidate pairs per IoU chunk (temporaries of 128 kB: cache-sized; 1 << 16: 5% slower)


def nms_sort(c, nms: float, kind: str = "default") -> np.ndarray:
    """Darknet `do_nms_sort` on Candidates c: per class, greedy by probability; returns the
    filtered probs (N, K) (a copy; suppressed entries set to 0)."""
    gone = nms_suppressed(c, nms, kind)
    return c.probs.copy() if gone is None else np.where(gone, 0.0, c.probs)   # the copy, zeroed


def nms_suppressed(c, nms: float, kind: str = "default") -> np.ndarray | None:
    """The (box, class) entries `nms_sort` zeroes, (N, K) bool, or None if it zeroes none."""
    probs = c.probs
    if nms <= 0 or probs.shape[0] < 2 or probs.shape[1] == 0:   # no pair, or no class to suppress in
        return None
    # in the calling thread: the kernel threads' fresh buffers page-faulted after a forward (~700
    # faults, 10 ms on random yolov3), more than their second core saved
    edges = overlap_pairs(np.asarray(c.boxes, np.float64), nms, kind)
    return _suppressed(probs, edges[:, 0], edges[:, 1]) if edges.size else None


BLOCK = 1024   # edges per block when comparing probabilities: 2 x 1024 x K float64 rows (2 x 655 kB at K = 80)


def _directed(probs: np.ndarray, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per edge (u < v), the classes where both boxes stand, as bit columns (W, E) of 64-bit words:
    `fwd` where u comes first in the class (higher probability; a tie goes to the lower index,
    as the stable sort), `bwd` where v does. One comparison per (edge, class): where both stand
    (> 0, so not NaN), pu >= pv or else pv > pu; the standing bits are packed once per box.
    Word-major (W, E): gathers and compressions of 1-D word rows are 5-10x faster than of (E, 2) rows."""
    words = (probs.shape[1] + 63) // 64
    stand = np.zeros((probs.shape[0], words), np.uint64)
    _pack(probs > 0, stand)
    stand = np.ascontiguousarray(stand.T)
    both = _take(stand, u) & _take(stand, v)
    fwd = np.zeros((u.size, words), np.uint64)
    m = min(BLOCK, u.size)
    pu, pv, ge = np.empty((m, probs.shape[1])), np.empty((m, probs.shape[1])), np.empty((m, probs.shape[1]), bool)
    for lo in range(0, u.size, BLOCK):          # rows reused block after block, in the calling thread
        n = min(BLOCK, u.size - lo)
        np.take(probs, u[lo:lo + n], axis=0, out=pu[:n], mode="clip")
        np.take(probs, v[lo:lo + n], axis=0, out=pv[:n], mode="clip")
        _pack(np.greater_equal(pu[:n], pv[:n], out=ge[:n]), fwd[lo:lo + n])
    fwd = np.ascontiguousarray(fwd.T)
    bwd = ~fwd & both                           # the padding bits of ~fwd: cleared by `both`
    fwd &= both
    return fwd, bwd


def _pack(bits: np.ndarray, out: np.ndarray) -> None:
    out.view(np.uint8)[:, :(bits.shape[1] + 7) // 8] = np.packbits(bits, axis=1)


def _take(words: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Columns idx of a word-major (W, M) array."""
    return words[0][idx][None] if words.shape[0] == 1 else np.take(words, idx, axis=1)


def _nonzero_cols(m: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.bitwise_or.reduce(m, axis=0) if m.shape[0] > 1 else m[0])


def _group_order(keys: np.ndarray, n: int) -> np.ndarray:
    """A permutation grouping equal keys in [0, n) (any order inside a group does): NumPy's stable
    sort is a radix sort on 16-bit keys, 5-8x faster than its timsort on 44k int64 keys."""
    if n <= 1 << 16:
        return np.argsort(keys.astype(np.uint16), kind="stable")
    return np.argsort(keys, kind="stable")


def _suppressed(probs: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The (box, class) entries greedy NMS suppresses, (N, K) bool, given the overlapping pairs.

    Each directed edge src -> dst carries the bits of the classes where src comes first (a column
    of the word-major (W, E) mask). A node
    (box, class) is kept iff none of its predecessors is kept: as a fixed point, all classes at once
    in 64-bit words, edges grouped by target so that "has a live predecessor" is one OR-reduceat.
    A round keeps every undecided node without an undecided predecessor and suppresses the targets
    of the kept; edges that touch a decided node are dropped. Nodes without edges are kept and never
    looked at.
    """
    n, k = probs.shape
    fwd, bwd = _directed(probs, u, v)
    src, dst, mask = np.concatenate([u, v]), np.concatenate([v, u]), np.concatenate([fwd, bwd], axis=1)
    cols = _nonzero_cols(mask)
    cols = cols[_group_order(dst[cols], n)]
    src, dst, mask = src[cols], dst[cols], _take(mask, cols)
    undecided = np.full((mask.shape[0], n), ~np.uint64(0))   # word-major (W, N), as the edges
    suppressed = np.zeros_like(undecided)
    while dst.size:
        starts = np.flatnonzero(np.concatenate(([True], dst[1:] != dst[:-1])))
        targets = dst[starts]                                # unique: dst stays sorted
        blocked = np.zeros_like(undecided)
        reached = np.bitwise_or.reduceat(mask, starts, axis=1)
        for w in range(blocked.shape[0]):       # 1-D scatters per word row: 5x faster than [:, targets]
            blocked[w][targets] = reached[w]
        kept = undecided & ~blocked
        hit = np.bitwise_or.reduceat(mask & _take(kept, src), starts, axis=1)
        undecided &= ~kept
        for w in range(hit.shape[0]):
            suppressed[w][targets] |= hit[w]
            undecided[w][targets] &= ~hit[w]
        mask &= _take(undecided, src) & _take(undecided, dst)
        cols = _nonzero_cols(mask)
        src, dst, mask = src[cols], dst[cols], _take(mask, cols)
    return np.unpackbits(np.ascontiguousarray(suppressed.T).view(np.uint8), axis=1, count=k).view(bool)
