"""qtensor_histogram_counts: the histogram of an int8 output from its 256 codes equals np.histogram of its
float copy, count for count and edge for edge (real yolov3-tiny INT outputs, an asymmetric uint8 grid,
explicit ranges and edges)."""
from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.imaging.samples import sample
from engine.quant.qtensor import QTensor
from engine.session.stats import histogram_counts, qtensor_histogram_counts


def test_equals_numpy_on_the_int8_outputs_of_yolov3_tiny(tiny, tiny_q):
    s = engine.Session(tiny, tiny_q, mode="int", image=sample("dog"))
    s.run_to(15)
    checked = 0
    for i in range(16):
        qt = s.output_q(i)
        if qt is None:
            continue
        y = qt.dequantize()
        for bins in (128, 7):
            c, e = qtensor_histogram_counts(qt, bins)
            c_ref, e_ref = np.histogram(y, bins=bins)          # the float copy, straight numpy
            np.testing.assert_array_equal(e, e_ref)
            np.testing.assert_array_equal(c, c_ref)
            assert c.dtype == np.int64 and c.sum() == y.size
        checked += 1
    assert checked >= 12


@pytest.mark.parametrize("zero_point,dtype", [(0, np.int8), (131, np.uint8), (-3, np.int8)])
def test_equals_numpy_for_every_grid_range_and_edges(zero_point, dtype):
    rng = np.random.default_rng(7)
    lo, hi = (0, 256) if dtype == np.uint8 else (-127, 128)
    q = rng.integers(lo, hi, size=(5, 31, 17)).astype(dtype)
    q[q == q.flat[0]] = q.flat[1]              # a code that never occurs
    qt = QTensor(q, 0.0371, zero_point)
    y = qt.dequantize()
    for kw in ({"bins": 128}, {"bins": 10, "range": (-1.0, 2.5)}, {"bins": [-3.0, -0.5, 0.0, 0.25, 9.0]}):
        c, e = qtensor_histogram_counts(qt, **kw)
        c_ref, e_ref = histogram_counts(y, **kw)
        np.testing.assert_array_equal(c, c_ref)
        np.testing.assert_array_equal(e, e_ref)


def test_refuses_float_codes():
    with pytest.raises(TypeError, match="int8 or uint8"):
        qtensor_histogram_counts(QTensor(np.zeros((1, 2, 2), np.float32), 1.0))
