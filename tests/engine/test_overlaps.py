"""candidate_pairs (engine/darknet/overlaps.py) against the full IoU matrix, on both of its paths."""
from __future__ import annotations

import numpy as np
import pytest

from engine.darknet import overlaps
from engine.darknet.nms import box_iou, overlap_pairs


def naive_pairs(boxes: np.ndarray, t: float) -> set[tuple[int, int]]:
    """Every pair i < j with box_iou > t, one row of the matrix at a time."""
    out = set()
    for i in range(len(boxes) - 1):
        js = np.flatnonzero(box_iou(boxes[i], boxes[i + 1:]) > t) + i + 1
        out.update((i, int(j)) for j in js)
    return out


def mixed_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Sizes over 4 octaves, aspect ratios 1:8 to 8:1, duplicates, near-duplicates, degenerate sides."""
    size = 0.02 * 2.0 ** rng.uniform(0, 4, n)
    aspect = 2.0 ** rng.uniform(-3, 3, n)
    boxes = np.column_stack([rng.random((n, 2)), size * np.sqrt(aspect), size / np.sqrt(aspect)])
    boxes[10:30] = boxes[30:50]                               # exact duplicates: IoU 1
    boxes[50:70] = boxes[70:90] * (1 + 1e-12)                 # near-duplicates
    boxes[90:100] = boxes[100:110]                            # same centre and height, width ratio
    boxes[90:100, 2] *= 0.45 + rng.uniform(-1e-9, 1e-9, 10)   # at the threshold's edge (IoU = ratio)
    boxes[110:115, 2] = 0.0                                   # zero width
    boxes[115:118, 3] = np.inf
    boxes[118:120, 0] = np.nan
    return boxes


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("t", [0.05, 0.3, 0.45, 0.7, 0.95, 1.0])
def test_candidates_hold_every_pair_above_threshold(seed, t):
    boxes = mixed_boxes(np.random.default_rng(seed), 600)
    ref = naive_pairs(boxes, t)
    cand = overlaps.candidate_pairs(boxes, t)
    assert np.all(cand[:, 0] < cand[:, 1])
    assert ref <= set(map(tuple, cand.tolist()))
    assert set(map(tuple, overlap_pairs(boxes, t).tolist())) == ref
    assert len(ref) > 20 or t >= 0.95                         # the case is not empty


def test_both_paths_give_the_naive_pairs(monkeypatch):
    """Well-conditioned boxes take the binned join; a box tiny and far from the origin (its edges
    round at 1e-13, 1e-4 of its side) sends the whole set to the per-level joins."""
    boxes = mixed_boxes(np.random.default_rng(9), 500)
    far = np.vstack([boxes, [[1e3, 1e3, 1e-9, 1e-9], [1e3, 1e3 + 1e-10, 1e-9, 1e-9]]])
    ref, ref_far = naive_pairs(boxes, 0.45), naive_pairs(far, 0.45)
    assert (500, 501) in ref_far and ref_far - {(500, 501)} == ref
    assert set(map(tuple, overlap_pairs(far, 0.45).tolist())) == ref_far
    level_pairs = overlaps._level_pairs
    monkeypatch.setattr(overlaps, "_level_pairs", None)       # the fast path must not need it
    assert set(map(tuple, overlap_pairs(boxes, 0.45).tolist())) == ref
    with pytest.raises(TypeError):
        overlap_pairs(far, 0.45)
    monkeypatch.setattr(overlaps, "_level_pairs", level_pairs)


def test_ties_at_exact_threshold_are_not_pairs():
    """IoU exactly t is not above t (Darknet's `>`): side by side unit boxes with IoU 1/3 exactly."""
    boxes = np.array([[0.0, 0.0, 1.0, 1.0], [0.5, 0.0, 1.0, 1.0], [0.25, 0.0, 1.0, 1.0]])
    assert box_iou(boxes[0], boxes[1:2])[0] == 1 / 3
    assert set(map(tuple, overlap_pairs(boxes, 1 / 3).tolist())) == naive_pairs(boxes, 1 / 3) == {(0, 2), (1, 2)}


@pytest.mark.parametrize("seed", range(3))
def test_candidate_ij_proposes_each_pair_once(seed):
    """Pairs within one area bin are searched from one member only (after its place in the sorted
    data): no pair twice, in either order, no box with itself; duplicate boxes (equal keys) too."""
    boxes = mixed_boxes(np.random.default_rng(40 + seed), 600)
    boxes[300:340] = boxes[200:240]                            # exact duplicates share a cell and column
    for t in (0.3, 0.45, 0.7):
        i, j = overlaps.candidate_ij(boxes, t)
        assert np.all(i != j)
        pairs = set(zip(np.minimum(i, j).tolist(), np.maximum(i, j).tolist()))
        assert len(pairs) == i.size
        assert naive_pairs(boxes, t) <= pairs


@pytest.mark.parametrize("rows, cols", [(5, 40), (300, 900), (60000, 500000)])
def test_key_order_sorts_the_grid_keys(rows, cols):
    """`_key_order` (the join's data-side sort): one radix pass (dense keys < 2^16), two (< 2^32), or
    the argsort of the packed key past 32 bits: the keys in that order are sorted, as the argsort's."""
    rng = np.random.default_rng(rows)
    n = 5000
    pair = np.sort(rng.integers(0, 40, n))
    row, col = rng.integers(0, rows, n), rng.integers(0, cols, n)
    row[:3], col[:3] = rows - 1, cols - 1
    pair[-1] = 39
    key = (pair << 42) | (row << 24) | col
    o = overlaps._key_order(pair, row, col)
    assert np.array_equal(np.sort(o), np.arange(n)) and np.array_equal(key[o], np.sort(key))
