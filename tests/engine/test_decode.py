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
