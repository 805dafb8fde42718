"""[yolo] decoding against a per-box loop written as Darknet's get_yolo_detections (float64 maths)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from engine.darknet.detect import decode_yolo


def naive_decode_yolo(y, mask, anchors, classes, net_w, net_h, thresh):
    a = len(mask)
    _, h, w = y.shape
    y = y.reshape(a, 5 + classes, h, w)
    boxes, objs, probs = [], [], []
    for row in range(h):
        for col in range(w):
            for n in range(a):
                obj = float(y[n, 4, row, col])
                if not obj > thresh:
                    continue
                tx, ty, tw, th = (float(y[n, j, row, col]) for j in range(4))
                boxes.append([(col + tx) / w, (row + ty) / h, math.exp(tw) * anchors[2 * mask[n]] / net_w,
                              math.exp(th) * anchors[2 * mask[n] + 1] / net_h])
                objs.append(obj)
                p = [obj * float(y[n, 5 + k, row, col]) for k in range(classes)]
                probs.append([v if not v <= thresh else 0.0 for v in p])
    return np.array(boxes).reshape(-1, 4), np.array(objs), np.array(probs).reshape(-1, classes)


@pytest.mark.parametrize("thresh", [0.0, 0.25, 0.7, 0.9])   # 0.7, 0.9: under 1/COPY_KEPT kept, no copy
def test_decode_yolo_equals_the_per_box_loop(thresh):
    rng = np.random.default_rng(int(thresh * 10))
    mask, anchors, classes = [3, 4, 5], [10, 13, 16, 30, 33, 23, 30, 61, 62, 45, 59, 119], 7
    y = rng.random((3 * (5 + classes), 5, 6), dtype=np.float32)
    y[:, 2, 3] = np.nan                                  # NaN scores pass no threshold (as Darknet's `>`)
    y[4, 1, :] = 0.5                                     # ties
    y[5 + 2, 0, 0] = np.nan                              # a NaN class score stays NaN, as in the loop
    got = decode_yolo(y, mask, anchors, classes, 416, 320, thresh)
    boxes, objs, probs = naive_decode_yolo(y, mask, anchors, classes, 416, 320, thresh)
    from engine.darknet.detect import COPY_KEPT
    assert (boxes.shape[0] * COPY_KEPT > y.size // (5 + classes)) == (thresh < 0.5)   # both paths taken
    assert got.boxes.shape[0] == boxes.shape[0] > 0
    assert np.array_equal(got.boxes[:, :2], boxes[:, :2]) and np.array_equal(got.objectness, objs)
    # w, h: NumPy's vectorised exp (SIMD since NumPy 2.4) and libm's may differ in the last bit
    np.testing.assert_array_max_ulp(got.boxes[:, 2:], boxes[:, 2:], maxulp=2)
    assert np.array_equal(got.probs, probs, equal_nan=True)


def naive_decode_detection(y, side, num, classes, sqrt, thresh):
    """Darknet's detection_layer.c:get_detection_detections (w = h = 1), box by box; confidence-0 boxes
    left out, as do_nms_sort leaves them out."""
    p = [float(v) for v in y.reshape(-1)]
    boxes, objs, probs = [], [], []
    for i in range(side * side):
        row, col = i // side, i % side
        for n in range(num):
            scale = p[side * side * classes + i * num + n]
            bi = side * side * (classes + num) + (i * num + n) * 4
            if scale == 0:
                continue
            boxes.append([(p[bi] + col) / side, (p[bi + 1] + row) / side,
                          p[bi + 2] ** (2 if sqrt else 1), p[bi + 3] ** (2 if sqrt else 1)])
            objs.append(scale)
            probs.append([scale * p[i * classes + j] if scale * p[i * classes + j] > thresh else 0.0
                          for j in range(classes)])
    return np.array(boxes).reshape(-1, 4), np.array(objs), np.array(probs).reshape(-1, classes)


@pytest.mark.parametrize("sqrt", [0, 1])
@pytest.mark.parametrize("thresh", [0.0, 0.2])
def test_decode_detection_equals_darknets_box_loop(sqrt, thresh):
    from engine.darknet.detect import decode_detection
    side, num, classes = 3, 2, 4
    y = np.random.default_rng(sqrt).uniform(-0.5, 1, side * side * (classes + 5 * num)).astype(np.float32)
    y[side * side * classes + 3] = 0.0                    # a box of confidence 0: no candidate
    got = decode_detection(y.reshape(-1, 1, 1), side, num, classes, sqrt, thresh)
    boxes, objs, probs = naive_decode_detection(y, side, num, classes, sqrt, thresh)
    assert got.boxes.shape == (side * side * num - 1, 4)
    np.testing.assert_allclose(got.boxes, boxes, rtol=1e-15, atol=0)
    assert np.array_equal(got.objectness, objs) and np.array_equal(got.probs, probs)
    assert (probs > 0).sum() >= 10


def test_yolov1_head_gives_its_detections(tmp_path):
    """A [detection] (YOLOv1) model found nothing: detect_outputs decoded [yolo] and [region] heads only, so
    yolov1-tiny gave no box whatever its outputs. Here a connected layer of zero weights hands the head
    chosen values: side 2, 2 boxes per cell, 3 classes."""
    import engine
    from engine.darknet.detect import detect_outputs
    from engine.darknet.image import Preprocessed
    cfg = tmp_path / "v1.cfg"
    cfg.write_text("[net]\nwidth=8\nheight=8\nchannels=3\n\n[connected]\noutput=52\nactivation=linear\n\n"
                   "[detection]\nclasses=3\ncoords=4\nrescore=1\nside=2\nnum=2\nsoftmax=0\nsqrt=1\n")
    model = engine.load(cfg, random_weights=0)
    scores = [0.9, 0.1, 0.0, 0, 0, 0, 0.2, 0.7, 0.1, 0, 0, 0]           # cells 0..3 x classes 0..2
    conf = [0.8, 0.5, 0, 0, 0.6, 0, 0, 0]                              # cells 0..3 x boxes 0..1
    coords = [0.5, 0.5, 0.6, 0.4, 0.5, 0.5, 0.2, 0.2] + [0] * 8 + [0.25, 0.75, 0.5, 0.5] + [0] * 12
    model.set_param(0, "weights", np.zeros_like(model.params[0]["weights"]))
    model.set_param(0, "biases", np.array(scores + conf + coords, np.float32))
    x = np.zeros(model.input_shape, np.float32)
    dets = detect_outputs(model, model.forward(x), Preprocessed(x, 8, 8, "stretch"), 0.25, 0.45)
    got = [(d.class_id, round(d.score, 6), round(d.cx, 6), round(d.cy, 6), round(d.w, 6), round(d.h, 6)) for d in dets]
    assert got == [(0, 0.72, 0.25, 0.25, 0.36, 0.16),      # cell 0 box 0: 0.8 x 0.9, w = 0.6^2, h = 0.4^2
                   (0, 0.45, 0.25, 0.25, 0.04, 0.04),      # cell 0 box 1: 0.5 x 0.9 (IoU 0.11 with box 0: kept)
                   (1, 0.42, 0.125, 0.875, 0.25, 0.25)]    # cell 2 (row 1, col 0) box 0: 0.6 x 0.7
