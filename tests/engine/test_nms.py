"""The vectorised NMS against Darknet's literal O(n^2) `do_nms_sort`, kept here as the reference."""
from __future__ import annotations

import numpy as np
import pytest

from engine.darknet.detect import Candidates, detect_outputs
from engine.darknet.nms import box_diou, box_iou, nms_sort, overlap_pairs


def naive_nms_sort(c: Candidates, nms: float, kind: str = "default") -> np.ndarray:
    """Darknet do_nms_sort as written: per class, sort (stable), greedy, one IoU row per kept box."""
    probs = c.probs.copy()
    overlap = box_diou if kind == "greedynms" else box_iou
    if nms <= 0:
        return probs
    for k in range(probs.shape[1]):
        idx = np.flatnonzero(probs[:, k] > 0)
        idx = idx[np.argsort(-probs[idx, k], kind="stable")]
        for pos, i in enumerate(idx):
            if probs[i, k] == 0:
                continue
            rest = idx[pos + 1:]
            rest = rest[probs[rest, k] > 0]
            if rest.size:
                probs[rest[overlap(c.boxes[i], c.boxes[rest]) > nms], k] = 0.0
    return probs


def yolo_like(rng: np.random.Generator, grid: int, anchors: list[tuple[float, float]], classes: int,
              levels: int = 0) -> Candidates:
    """Boxes on a grid of cells (dense, overlapping neighbours, like a head), probs with ties."""
    n = grid * grid * len(anchors)
    cell = np.arange(n) // len(anchors)
    an = np.array(anchors)[np.arange(n) % len(anchors)]
    boxes = np.stack([(cell % grid + rng.random(n)) / grid, (cell // grid + rng.random(n)) / grid,
                      an[:, 0] * np.exp(rng.normal(0, 0.3, n)), an[:, 1] * np.exp(rng.normal(0, 0.3, n))], 1)
    probs = rng.random((n, classes))
    if levels:                                   # few distinct values: many exact ties
        probs = np.round(probs * levels) / levels
    probs[probs < 0.3] = 0.0
    return Candidates(boxes, probs.max(1), probs)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("nms", [0.3, 0.45, 0.7])
def test_nms_equals_darknet_loop_on_dense_grids(seed, nms):
    rng = np.random.default_rng(seed)
    c = yolo_like(rng, 13, [(0.1, 0.12), (0.25, 0.2), (0.6, 0.5)], 5, levels=4 if seed % 2 else 0)
    ref = naive_nms_sort(c, nms)
    got = nms_sort(c, nms)
    assert np.array_equal(got, ref)
    assert 0 < np.count_nonzero(got) < np.count_nonzero(c.probs)  # NMS removed some, kept some


@pytest.mark.parametrize("seed", range(4))
def test_nms_equals_darknet_loop_with_duplicates_ties_and_degenerate_boxes(seed):
    rng = np.random.default_rng(100 + seed)
    n = 300
    boxes = np.column_stack([rng.random((n, 2)), rng.uniform(0.01, 0.5, (n, 2))])
    boxes[50:80] = boxes[20:50]                  # exact duplicates: IoU 1
    boxes[80:90, 2] = 0.0                        # zero width
    boxes[90:95, 3] = np.inf                     # infinite height
    boxes[95:100, 2:] = 1e300                    # areas that overflow to inf
    probs = np.round(rng.random((n, 3)) * 3) / 3  # values 0, 1/3, 2/3, 1: heavy ties
    probs[60:70] = probs[30:40]                  # duplicate boxes with tied probabilities
    c = Candidates(boxes, probs.max(1), probs)
    for nms in (0.1, 0.45, 0.9, 1.0):
        assert np.array_equal(nms_sort(c, nms), naive_nms_sort(c, nms)), nms


@pytest.mark.parametrize("seed", range(3))
def test_greedynms_diou_equals_darknet_loop(seed):
    rng = np.random.default_rng(200 + seed)
    c = yolo_like(rng, 10, [(0.15, 0.15), (0.4, 0.3)], 4, levels=5)
    for nms in (0.2, 0.45):
        assert np.array_equal(nms_sort(c, nms, "greedynms"), naive_nms_sort(c, nms, "greedynms"))


def test_overlap_pairs_are_exactly_the_pairs_above_threshold():
    rng = np.random.default_rng(7)
    c = yolo_like(rng, 9, [(0.05, 0.3), (0.3, 0.05), (0.2, 0.2), (0.9, 0.8)], 1)  # extreme aspect ratios too
    for nms in (0.05, 0.3, 0.6):
        full = box_iou(c.boxes[:, None, :], c.boxes[None, :, :]) if False else \
            np.stack([box_iou(b, c.boxes) for b in c.boxes])
        i, j = np.nonzero(np.triu(full > nms, 1))
        got = overlap_pairs(c.boxes, nms)
        assert sorted(map(tuple, got.tolist())) == sorted(zip(i.tolist(), j.tolist()))


def test_pairwise_iou_is_symmetric_and_equals_the_row_form():
    rng = np.random.default_rng(3)
    a = np.column_stack([rng.random((500, 2)), rng.uniform(0.01, 0.4, (500, 2))])
    b = a[rng.permutation(500)]
    assert np.array_equal(box_iou(a, b), box_iou(b, a))
    assert np.array_equal(box_iou(a, b), np.array([box_iou(x, y[None])[0] for x, y in zip(a, b)]))


def test_random_weight_detections_equal_the_darknet_loop():
    """A random-weight yolov3-tiny: nearly every box passes, as the pathological case of the issue."""
    import engine
    from helpers import TINY_CFG
    model = engine.load(TINY_CFG, random_weights=3)
    x = np.random.default_rng(0).random(model.input_shape, dtype=np.float32)
    outs = model.forward(x)
    from engine.darknet.detect import candidates
    c, kind = candidates(model, outs, 0.2)
    assert c.probs.shape[0] > 1000 and np.count_nonzero(c.probs) > 10000
    assert np.array_equal(nms_sort(c, 0.45, kind), naive_nms_sort(c, 0.45, kind))
    pre = model.preprocess(np.zeros((416, 416, 3), np.uint8))
    dets = detect_outputs(model, outs, pre, 0.2, 0.45)
    assert len(dets) == np.count_nonzero(naive_nms_sort(c, 0.45, kind) > 0.2)


def test_tiny_and_far_boxes_near_threshold_one():
    """Scaled coordinates get large (tiny boxes, nms near 1): the grid join must still find every pair."""
    rng = np.random.default_rng(11)
    n = 200
    centre = rng.random((n, 2)) * 1e3
    boxes = np.column_stack([centre, rng.uniform(1e-7, 2e-7, (n, 2))])
    boxes[100:150] = boxes[:50]
    boxes[150:200, :2] = boxes[:50, :2] + 1e-9               # near-duplicates
    probs = np.round(rng.random((n, 2)) * 4) / 4
    c = Candidates(boxes, probs.max(1), probs)
    for nms in (0.5, 0.99, 0.999999, 1.0):
        assert np.array_equal(nms_sort(c, nms), naive_nms_sort(c, nms)), nms


@pytest.mark.parametrize("classes", [1, 63, 64, 65, 130])
def test_nms_across_64_bit_word_boundaries_with_equal_scores(classes):
    """Classes are packed 64 per word: 1, 63-65 and 130 classes, scores tied across boxes and classes."""
    rng = np.random.default_rng(classes)
    c = yolo_like(rng, 8, [(0.15, 0.15), (0.3, 0.25)], classes, levels=3)
    c.probs[:, classes // 2] = 0.5                        # one class where every box ties
    for nms in (0.2, 0.45):
        ref = naive_nms_sort(c, nms)
        assert np.array_equal(nms_sort(c, nms), ref)
        assert np.count_nonzero(ref[:, classes // 2]) < c.probs.shape[0]   # the tied class was thinned


def test_nms_long_chain_needs_many_rounds():
    """Boxes in a row, each overlapping the next, scores falling along the row: greedy keeps every
    other box, and each round of the fixed point settles only the front of the chain."""
    n = 200
    boxes = np.column_stack([np.arange(n) * 0.3, np.zeros(n), np.ones(n), np.ones(n)])  # IoU 0.54 with the next
    probs = np.linspace(0.9, 0.3, n)[:, None].repeat(2, 1)
    probs[:, 1] = probs[::-1, 1]                          # class 1: the chain runs the other way
    c = Candidates(boxes, probs.max(1), probs)
    got = nms_sort(c, 0.45)
    assert np.array_equal(got, naive_nms_sort(c, 0.45))
    assert np.array_equal(got[:, 0] > 0, np.arange(n) % 2 == 0)


def tiny_like(rng: np.random.Generator, classes: int, levels: int = 0) -> Candidates:
    """Two heads as yolov3-tiny's (a coarse and a fine grid, 3 anchors each) with random weights:
    every box passes in every class, probs objectness x class score in float32 products."""
    parts = [yolo_like(rng, g, an, classes) for g, an in
             ((6, [(0.2, 0.25), (0.35, 0.3), (0.6, 0.55)]), (12, [(0.05, 0.07), (0.1, 0.12), (0.2, 0.16)]))]
    boxes = np.concatenate([p.boxes for p in parts])
    obj = rng.uniform(0.5, 1.0, boxes.shape[0]).astype(np.float32)
    cls = rng.uniform(0.55, 1.0, (boxes.shape[0], classes)).astype(np.float32)
    if levels:                                   # few distinct class scores: ties within a box and across
        cls = (np.round(cls * levels) / levels).astype(np.float32)
        obj[::3] = obj[1::3][:obj[::3].size]     # equal objectness too: exact ties across boxes
    probs = obj[:, None].astype(np.float64) * cls
    assert (probs > 0.25).all()
    return Candidates(boxes, obj.astype(np.float64), probs)


@pytest.mark.parametrize("levels", [0, 4])
@pytest.mark.parametrize("kind", ["default", "greedynms"])
def test_nms_when_every_box_stands_in_every_class(levels, kind):
    """Random yolov3-tiny's structure: every box passes in every class, so every overlapping pair is
    an edge in every class (in one direction or the other, by that class's scores); with and
    without exact ties in the scores, IoU and DIoU."""
    rng = np.random.default_rng(40 + levels)
    c = tiny_like(rng, 9, levels)
    for nms in (0.3, 0.45):
        ref = naive_nms_sort(c, nms, kind)
        assert np.array_equal(nms_sort(c, nms, kind), ref)
        assert 0 < np.count_nonzero(ref) < ref.size


def test_score_order_of_many_scores_in_two_radix_passes():
    """Over 2^16 keys (both 16-bit digits in play), with ties far apart, few-ulp neighbours and
    float32 collisions of different scores, on 1 and 2 threads."""
    from engine.darknet.detect import score_order
    from engine.kernels.threads import blas_limit
    rng = np.random.default_rng(9)
    n = 2 * (1 << 15) + 1001
    base = np.float32(rng.random(n // 2)).astype(np.float64) * np.float32(rng.random(n // 2))
    near = base[rng.integers(0, 60, n - n // 2)] * (1 + rng.integers(-6, 7, n - n // 2) * 2.0 ** -52)
    s = np.concatenate([base, near])[rng.permutation(n)]
    s[:200] = s[-200:]                           # equal scores in both halves
    ref = np.argsort(-s, kind="stable")
    for threads in (1, 2):
        with blas_limit(threads):
            assert np.array_equal(score_order(s), ref)


@pytest.mark.parametrize("case", ["finite", "infinite scores"])
def test_ranked_equals_a_stable_argsort_of_the_survivors(case):
    """`ranked` of a subset of indices: the stable argsort of their scores, with ties, few-ulp
    neighbours and float32 collisions, on 1 and 2 threads, and on the argsort path (infinite scores)."""
    from engine.darknet import detect as detect_module
    from engine.kernels.threads import blas_limit
    rng = np.random.default_rng(12)
    base = np.float32(rng.random(25000)).astype(np.float64) * np.float32(rng.random(25000))
    near = base[rng.integers(0, 50, 45000)] * (1 + rng.integers(-6, 7, 45000) * 2.0 ** -52)
    scores = np.concatenate([base, near, base[:3000]])[rng.permutation(73000)]
    scores[rng.random(scores.size) < 0.2] = 0.0
    if case == "infinite scores":
        scores[rng.random(scores.size) < 0.01] = np.inf
    idx = np.flatnonzero((scores > 0) & (rng.random(scores.size) < 0.9))
    assert idx.size > 50000
    ref = idx[np.argsort(-scores[idx], kind="stable")]
    for threads in (1, 2):
        with blas_limit(threads):
            out, s = detect_module.ranked(scores, idx)
        assert np.array_equal(out, ref) and np.array_equal(s, scores[ref])


def test_detections_order_equals_a_stable_sort_with_ties():
    from engine.darknet.detect import score_order
    rng = np.random.default_rng(5)
    for levels in (1, 3, 50, 0):
        s = rng.random(20000) if not levels else np.round(rng.random(20000) * levels) / levels + 0.3
        assert np.array_equal(score_order(s), np.argsort(-s, kind="stable"))
    assert score_order(np.zeros(0)).size == 0


def test_score_order_when_different_scores_share_their_top_bits():
    """The packed-key sort keeps a score's top bits only: scores a few ulps apart, out of index
    order, in runs among exact ties, must still come out as the stable argsort; negative and NaN
    scores take the argsort path."""
    from engine.darknet.detect import score_order
    rng = np.random.default_rng(8)
    base = np.float32(rng.random(3000)).astype(np.float64) * np.float32(rng.random(3000))
    near = base[rng.integers(0, 40, 5000)] * (1 + rng.integers(-6, 7, 5000) * 2.0 ** -52)  # few-ulp neighbours
    s = np.concatenate([base, near, base[:500]])[rng.permutation(8500)]
    assert np.array_equal(score_order(s), np.argsort(-s, kind="stable"))
    for bad in (np.array([0.5, -0.25, 0.5, np.nan, 0.1]), np.array([0.0, -0.0, 0.3, 0.0])):
        assert np.array_equal(score_order(bad), np.argsort(-bad, kind="stable"))


def test_nms_with_nan_and_infinite_probabilities():
    """A NaN probability stands in no class (Darknet's `> 0` is false) and an infinite one ties
    with other infinities: the one-comparison bit rows must still give the loop's result."""
    rng = np.random.default_rng(31)
    c = yolo_like(rng, 10, [(0.15, 0.15), (0.3, 0.25)], 5, levels=4)
    c.probs[rng.random(c.probs.shape) < 0.1] = np.nan
    c.probs[rng.random(c.probs.shape) < 0.05] = np.inf
    c.probs[rng.random(c.probs.shape[0]) < 0.5, 0] = np.inf      # class 0: many tied infinities
    for nms in (0.3, 0.6):
        ref = naive_nms_sort(c, nms)
        assert np.array_equal(nms_sort(c, nms), ref, equal_nan=True)
        assert np.count_nonzero(ref == np.inf) < np.count_nonzero(c.probs == np.inf)   # infinities suppressed too


def test_nms_is_the_same_on_one_or_two_kernel_threads():
    """The candidate rows, IoU chunks and comparison blocks run in the calling thread now (fresh
    buffers on the kernel threads page-faulted), in fixed chunks and blocks: a big dense case (several
    chunks and blocks) gives the same bits with BLAS at 1 and 2 threads."""
    from engine.darknet import nms as nms_module
    from engine.kernels.threads import blas_limit
    rng = np.random.default_rng(21)
    c = yolo_like(rng, 40, [(0.03, 0.04), (0.06, 0.05), (0.1, 0.12)], 20, levels=6)   # 4800 boxes
    old = nms_module.CHUNK, nms_module.BLOCK
    nms_module.CHUNK, nms_module.BLOCK = 4096, 512                 # many chunks and blocks
    try:
        with blas_limit(1):
            one = nms_sort(c, 0.3)
        with blas_limit(2):
            two = nms_sort(c, 0.3)
    finally:
        nms_module.CHUNK, nms_module.BLOCK = old
    assert np.array_equal(one, two)
    assert np.array_equal(one, naive_nms_sort(c, 0.3))


def test_detect_outputs_same_on_one_or_two_threads_and_equal_to_the_loop():
    """The [yolo] heads write into one probs array, the NMS passes run on the kernel threads, the
    ranking sorts packed (score, index) keys: a random-weight yolov3-tiny gives the same Detections
    on 1 and 2 threads, equal to the loop's survivors sorted by a stable argsort of -score."""
    import engine
    from engine.darknet.detect import candidates, correct_boxes
    from engine.kernels.threads import blas_limit
    from helpers import TINY_CFG
    model = engine.load(TINY_CFG, random_weights=5)
    x = np.random.default_rng(1).random(model.input_shape, dtype=np.float32)
    outs = model.forward(x)
    pre = model.preprocess(np.zeros((300, 500, 3), np.uint8))
    with blas_limit(1):
        one = detect_outputs(model, outs, pre, 0.2, 0.45)
    with blas_limit(2):
        two = detect_outputs(model, outs, pre, 0.2, 0.45)
    assert len(one) > 5000
    assert np.array_equal(one.class_ids, two.class_ids) and np.array_equal(one.values, two.values)
    c, kind = candidates(model, outs, 0.2)
    c.boxes = correct_boxes(c.boxes, pre)
    ref = naive_nms_sort(c, 0.45, kind)
    flat = np.flatnonzero(ref > 0.2)
    flat = flat[np.argsort(-ref.reshape(-1)[flat], kind="stable")]
    i, k = np.divmod(flat, ref.shape[1])
    assert np.array_equal(one.class_ids, k)
    assert np.array_equal(one.values[0], ref.reshape(-1)[flat]) and np.array_equal(one.values[1], c.objectness[i])
    assert np.array_equal(one.values[2:6], c.boxes[i].T)
    assert np.array_equal(one.values[6], (c.boxes[i, 0] - c.boxes[i, 2] / 2) * 500)


def test_lazily_ranked_detections_equal_the_eager_ranking_and_the_loop():
    """detect_outputs ranks the survivors on the first read that needs the order (`len` needs none):
    whichever read comes first (an item, `class_ids`, `values`, iteration), on 1 or 2 threads, the
    view equals the every-box-every-class loop's survivors in a stable order."""
    import engine
    from engine.darknet.detect import Detection, candidates, correct_boxes
    from engine.kernels.threads import blas_limit
    from helpers import TINY_CFG
    model = engine.load(TINY_CFG, random_weights=3)
    x = np.random.default_rng(4).random(model.input_shape, dtype=np.float32)
    outs = model.forward(x)
    pre = model.preprocess(np.zeros((320, 480, 3), np.uint8))
    c, kind = candidates(model, outs, 0.25)
    c.boxes = correct_boxes(c.boxes, pre)
    probs = c.probs.reshape(-1)
    ref = naive_nms_sort(c, 0.45, kind).reshape(-1)
    eager = np.flatnonzero(ref > 0.25)
    eager = eager[np.argsort(-ref[eager], kind="stable")]
    score = probs[eager]
    assert eager.size > 5000
    i, k = np.divmod(eager, c.probs.shape[1])
    first = [lambda d: d[7], lambda d: d.class_ids, lambda d: d.values, lambda d: list(d), lambda d: d[-3:]]
    for threads in (1, 2):
        for read in first:
            with blas_limit(threads):
                dets = detect_outputs(model, outs, pre, 0.25, 0.45)
                assert len(dets) == eager.size and dets and dets._order is None   # not ranked yet
                read(dets)
            assert np.array_equal(dets.class_ids, k) and np.array_equal(dets.values[0], score)
            assert np.array_equal(dets.values[1], c.objectness[i]) and np.array_equal(dets.values[2:6], c.boxes[i].T)
            for j in (0, 7, eager.size - 1):
                d = dets[j]
                assert type(d) is Detection and d.class_id == k[j] and d.score == score[j] and d.cx == c.boxes[i[j], 0]
                assert d.x2 == (c.boxes[i[j], 0] + c.boxes[i[j], 2] / 2) * 480
