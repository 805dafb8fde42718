"""detect_outputs end to end against Darknet's literal loop where the vectorised NMS is most fragile:
classes over several 64-bit words with tied scores, nothing to detect, and no class at all."""
from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.darknet.detect import Candidates, candidates, correct_boxes, detect_outputs
from engine.darknet.nms import nms_sort, nms_suppressed
from engine.kernels.threads import blas_limit
from test_nms import naive_nms_sort


def one_head_model(tmp_path, classes: int) -> engine.Model:
    """A 32 x 32 model with one [yolo] head of `classes` classes on a 16 x 16 grid (768 boxes), its
    anchors wide enough that neighbouring boxes overlap."""
    cfg = tmp_path / f"head{classes}.cfg"
    cfg.write_text("[net]\nwidth=32\nheight=32\nchannels=3\n\n"
                   "[convolutional]\nfilters=16\nsize=3\nstride=2\npad=1\nbatch_normalize=1\nactivation=leaky\n\n"
                   f"[convolutional]\nfilters={3 * (5 + classes)}\nsize=1\nstride=1\npad=1\nactivation=linear\n\n"
                   f"[yolo]\nmask=0,1,2\nanchors=6,6, 9,12, 14,10\nclasses={classes}\nnum=3\n")
    return engine.load(cfg, random_weights=2)


def head_outputs(model: engine.Model, levels: int) -> list[np.ndarray]:
    """The layer outputs of one forward, the head's rounded to 1/levels (scores tied across boxes and classes)."""
    outs = list(model.forward(np.random.default_rng(3).random(model.input_shape, dtype=np.float32)))
    head = next(layer.index for layer in model.layers if layer.kind == "yolo")
    outs[head] = (np.round(outs[head] * levels) / levels).astype(np.float32)
    return outs


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("classes", [65, 130])
def test_many_classes_with_tied_scores_equal_the_loop(tmp_path, classes, threads):
    """Classes over two and three 64-bit words, head outputs rounded to eighths: the survivors, their
    order (ties in (box, class) order) and scores equal Darknet's per-class loop, on 1 and 2 threads."""
    model = one_head_model(tmp_path, classes)
    outs = head_outputs(model, 8)
    pre = model.preprocess(np.zeros((40, 60, 3), np.uint8))
    with blas_limit(threads):
        dets = detect_outputs(model, outs, pre, 0.2, 0.45)
    c, _ = candidates(model, outs, 0.2)
    c.boxes = correct_boxes(c.boxes, pre)
    ref = naive_nms_sort(c, 0.45).reshape(-1)
    flat = np.flatnonzero(ref > 0.2)
    flat = flat[np.argsort(-ref[flat], kind="stable")]
    assert c.probs.shape[1] == classes and 0 < len(dets) < np.count_nonzero(c.probs)   # NMS thinned them
    assert np.unique(ref[flat]).size * 100 < flat.size                                # ties throughout
    assert np.array_equal(dets.class_ids, flat % classes) and np.array_equal(dets.values[0], ref[flat])
    assert np.array_equal(dets.values[2:6], c.boxes[flat // classes].T)


def test_nothing_above_the_threshold_gives_no_detections(tmp_path):
    model = one_head_model(tmp_path, 3)
    outs = head_outputs(model, 8)
    head = next(layer.index for layer in model.layers if layer.kind == "yolo")
    outs[head][:] = 0.0                                  # objectness 0: no box kept
    pre = model.preprocess(np.zeros((32, 32, 3), np.uint8))
    dets = detect_outputs(model, outs, pre, 0.25, 0.45)
    assert len(dets) == 0 and list(dets) == [] and dets.class_ids.size == 0 and dets.values.shape == (10, 0)


def test_nms_of_candidates_without_classes_suppresses_nothing():
    """(regression) Candidates of zero classes (a (N, 0) probs from code, not a cfg: [yolo] needs
    classes >= 1) with overlapping boxes raised a raw IndexError from the bit packing; there is
    nothing to suppress: nms_sort returns the empty (N, 0) probs."""
    boxes = np.array([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2], [0.52, 0.5, 0.2, 0.2]])
    c = Candidates(boxes, np.array([0.9, 0.8, 0.7]), np.zeros((3, 0)))
    assert nms_suppressed(c, 0.45) is None
    out = nms_sort(c, 0.45)
    assert out.shape == (3, 0) and out is not c.probs
