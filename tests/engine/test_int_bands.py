"""The banded exact int8 kernels against naive integer loops: `intops.conv_int_bands` (bands that pad
their own input rows, `band_edges`, `band_rows`) on small odd shapes with many bands, stride 2,
padding 0-2, the bias folded or not, the K reduction split, int16 inputs, on 1 and 2 threads; and
`intwinograd.conv3x3_fused` (output transform + epilogue per filter block) against the same loops."""
from __future__ import annotations

import numpy as np
import pytest

from engine.kernels import threads
from engine.quant import intops, intwinograd
from engine.quant.intops import _scratch, band_edges, conv_int_bands, conv_int_naive, row_abs_max


def _data(seed: int, c: int, n: int, h: int, w: int, k: int, xmax: int = 127, wmax: int = 127,
          dtype=np.int8):
    rng = np.random.default_rng(seed)
    x = rng.integers(-xmax, xmax + 1, (c, h, w)).astype(dtype)
    w_q = rng.integers(-wmax, wmax + 1, (n, c, k, k)).astype(np.int8)
    b_q = rng.integers(-5000, 5000, n).astype(np.int32)
    return x, w_q, b_q


def _banded(x, w_q, k, s, p, bias=None, band_floats=None, monkeypatch=None, nthreads=1):
    """conv_int_bands' accumulators collected from its epilogue calls (+ the bias when folded)."""
    n = w_q.shape[0]
    w_f = w_q.reshape(n, -1).astype(np.float32)
    ho, wo = (x.shape[1] + 2 * p - k) // s + 1, (x.shape[2] + 2 * p - k) // s + 1
    got = np.full((n, ho, wo), np.nan)
    seen = np.zeros((n, ho), np.int64)
    folded = []

    def epilogue(part, r0, r1, acc, ch):
        assert acc.shape == (ch.stop - ch.start, r1 - r0, wo) and acc.flags.c_contiguous
        got[ch, r0:r1] = acc
        seen[ch, r0:r1] += 1

    if band_floats is not None:
        monkeypatch.setattr(intops, "BAND_FLOATS", band_floats)
        monkeypatch.setattr(intops, "MIN_BAND", 1)
    with threads.blas_limit(nthreads):
        conv_int_bands(x, w_f, k, s, p, epilogue, row_abs_max(w_q), bias=bias,
                       on_fold=(lambda: folded.append(True)) if bias is not None else None)
    assert (seen == 1).all()                            # every output row of every filter exactly once
    return got, bool(folded)


@pytest.mark.parametrize("total,rows", [(1, 1), (5, 1), (7, 2), (13, 4), (13, 13), (208, 10), (416, 16), (9, 100)])
def test_band_edges_even_count_equal_heights(total, rows):
    e = band_edges(total, rows)
    heights = np.diff(e)
    assert e[0] == 0 and e[-1] == total and (heights >= 1).all()
    assert heights.max() - heights.min() <= 1
    assert len(heights) == 1 or len(heights) % 2 == 0 or len(heights) == total
    assert heights.max() <= max(rows, -(-total // len(heights)))


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("c,n,h,w,k,s,p", [
    (3, 5, 11, 13, 3, 1, 1),      # odd map, many 1-row bands
    (4, 6, 13, 9, 3, 2, 1),       # stride 2, odd sizes
    (2, 3, 10, 7, 3, 2, 0),       # stride 2, no padding
    (3, 4, 9, 11, 5, 1, 2),       # 5x5, padding 2
    (5, 34, 7, 5, 1, 1, 0),       # pointwise, one band: filter halves
    (3, 4, 8, 6, 1, 2, 0),        # 1x1 stride 2
    (2, 3, 6, 5, 3, 1, 2),        # padding larger than needed for 'same'
])
def test_bands_equal_naive_loops(monkeypatch, nthreads, c, n, h, w, k, s, p):
    x, w_q, b_q = _data(c * 7 + h, c, n, h, w, k)
    want = conv_int_naive(x, w_q, np.zeros(n, np.int32), s, p)
    for band_floats in (1, 200, 1 << 20):               # 1-row bands .. one band
        got, _ = _banded(x, w_q, k, s, p, band_floats=band_floats, monkeypatch=monkeypatch, nthreads=nthreads)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("nthreads", [1, 2])
def test_folded_bias_equals_naive_loops(monkeypatch, nthreads):
    x, w_q, b_q = _data(5, 3, 6, 9, 11, 3)
    got, folded = _banded(x, w_q, 3, 1, 1, bias=b_q, band_floats=300, monkeypatch=monkeypatch, nthreads=nthreads)
    assert folded
    np.testing.assert_array_equal(got, conv_int_naive(x, w_q, b_q, 1, 1))


def test_split_reduction_and_int16_inputs_equal_naive_loops(monkeypatch):
    """K = 1152 (> K_CHUNK) with big weights and inputs: float64 sums of K_CHUNK pieces; int16 inputs
    (zero-point-centred uint8, |x| <= 255) take their max from the data, never the int8 bound."""
    x, w_q, _ = _data(9, 128, 4, 5, 7, 3)
    got, _ = _banded(x, w_q, 3, 1, 1, band_floats=1, monkeypatch=monkeypatch)
    np.testing.assert_array_equal(got, conv_int_naive(x, w_q, np.zeros(4, np.int32), 1, 1))
    x16, w_q, _ = _data(10, 40, 4, 5, 7, 3, xmax=255, dtype=np.int16)
    got, _ = _banded(x16, w_q, 3, 2, 1, band_floats=1, monkeypatch=monkeypatch)
    np.testing.assert_array_equal(got, conv_int_naive(x16, w_q, np.zeros(4, np.int32), 2, 1))


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("c,n,h,w,vmax", [(64, 70, 13, 13, 127), (64, 66, 17, 23, 20), (64, 64, 8, 10, 20),
                                          (128, 64, 7, 9, 127)])
def test_winograd_fused_blocks_equal_naive_loops(nthreads, c, n, h, w, vmax):
    """Every filter exactly once, in contiguous (filters, H, W) blocks, float32 or int32 exact integers."""
    x, w_q, _ = _data(c + n + h, c, n, h, w, 3, xmax=vmax, wmax=vmax)
    got = np.full((n, h, w), np.nan)
    seen = np.zeros(n, np.int64)

    def epilogue(part, r0, r1, acc, ch):
        assert (r0, r1) == (0, h) and acc.shape == (ch.stop - ch.start, h, w) and acc.flags.c_contiguous
        assert acc.dtype in (np.float32, np.int32)
        got[ch] = acc
        seen[ch] += 1

    with threads.blas_limit(nthreads):
        ok = intwinograd.conv3x3_fused(x, w_q, _scratch(), epilogue)
    assert ok and (seen == 1).all()
    np.testing.assert_array_equal(got, conv_int_naive(x, w_q, np.zeros(n, np.int32), 1, 1))


@pytest.mark.parametrize("n,per", [(64, 10), (70, 1000), (128, 24), (5, 1), (1, 1)])
def test_filter_edges_even_and_balanced(n, per):
    e = intwinograd.filter_edges(n, per)
    sizes = np.diff(e)
    assert e[0] == 0 and e[-1] == n and (sizes >= 1).all() and sizes.max() - sizes.min() <= 1
    assert len(sizes) == n or len(sizes) % 2 == 0 or len(sizes) == 1
