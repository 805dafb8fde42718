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
    from engine.session.stats import code_counts
    # the message names the function the caller called, not its caller
    with pytest.raises(TypeError, match=r"^code_counts: expected int8 or uint8 codes, got float32"):
        code_counts(QTensor(np.zeros((1, 2, 2), np.float32), 1.0))


def test_route_inputs_histogram_row_and_error_row_from_codes(tiny, tiny_q):
    """A route's concatenated int8 inputs (two grids): one histogram from both parts' code counts equals
    np.histogram of the concatenated float copy; qtensor_row equals tensor_row; the error row of a QTensor
    (mean |err| in blocks) equals the float one."""
    from engine.session.stats import code_counts, error_row, qtensor_row, tensor_row
    s = engine.Session(tiny, tiny_q, mode="int", image=sample("dog"))
    s.run_to(20)
    route = next(i for i in range(21) if tiny.layers[i].kind == "route" and len(tiny.layers[i].inputs) == 2)
    parts = [s.output_q(p) for p in tiny.layers[route].inputs]
    assert None not in parts and parts[0].scale != parts[1].scale
    x = np.concatenate([p.dequantize() for p in parts])
    c, e = qtensor_histogram_counts(parts, 128, codes=[code_counts(p) for p in parts])
    c_ref, e_ref = np.histogram(x, bins=128)
    np.testing.assert_array_equal(e, e_ref)
    np.testing.assert_array_equal(c, c_ref)
    row, ref_row = qtensor_row("in", parts, shape=x.shape), tensor_row("in", x)
    assert row.keys() == ref_row.keys() and row["shape"] == ref_row["shape"]
    for k in ("min", "max", "max|x|", "zeros %"):
        assert row[k] == ref_row[k], k
    # float64 sums from the codes: the exact moments (tensor_row's float32 dot is off by ~1e-5 here)
    x64 = x.astype(np.float64)
    assert row["mean"] == pytest.approx(x64.mean(), rel=1e-12)
    assert row["std"] == pytest.approx(x64.std(), rel=1e-9)
    assert row["std"] == pytest.approx(ref_row["std"], rel=1e-4)
    ref = s.float_reference()[route - 1]
    qt = s.output_q(route - 1)
    got, want = error_row("e", ref, qt), error_row("e", ref, qt.dequantize())
    assert got["shape"] == want["shape"] and got["SQNR dB"] == want["SQNR dB"] and got["max|err|"] == want["max|err|"]
    assert got["mean|err|"] == pytest.approx(want["mean|err|"], rel=1e-9) and got["mean|err|"] > 0


def test_mean_abs_error_same_on_any_block_split(monkeypatch):
    import engine.quant.fitness as fitness
    from engine.session import stats
    rng = np.random.default_rng(3)
    qt = QTensor(rng.integers(-127, 128, (3, 50, 41)).astype(np.int8), 0.02, 0)
    ref = rng.normal(0, 1, qt.q.shape).astype(np.float32)
    want = float(np.abs(qt.dequantize() - ref).astype(np.float64).mean())
    for block in (1 << 15, 1000, 7):
        monkeypatch.setattr(stats, "STATS_BLOCK", block)
        assert stats.mean_abs_error(ref, qt) == pytest.approx(want, rel=1e-12)
    assert fitness.STATS_BLOCK == 1 << 15


@pytest.mark.parametrize("zero_point,dtype", [(0, np.int8), (131, np.uint8), (-3, np.int8)])
def test_dequantize_of_some_channels_is_those_channels_real_values(zero_point, dtype):
    """What a view shows of an int8 map (its first channels) comes from QTensor.dequantize(channels):
    checked against (q - zero_point) * scale in float64, rounded once to float32."""
    rng = np.random.default_rng(7)
    info = np.iinfo(dtype)
    qt = QTensor(rng.integers(info.min, info.max + 1, (20, 5, 6)).astype(dtype), 0.0371, zero_point)
    want = ((qt.q[:16].astype(np.float64) - zero_point) * np.float64(np.float32(qt.scale))).astype(np.float32)
    got = qt.dequantize(slice(0, 16))
    assert got.dtype == np.float32 and got.shape == (16, 5, 6)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(qt.dequantize()[:16], got)


def test_dequantize_weights_per_filter_and_per_layer():
    from engine.quant.qtensor import dequantize_weights
    rng = np.random.default_rng(8)
    w_q = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    scales = np.array([0.5, 0.013, 2.0 ** -9, 0.1], np.float64)
    got = dequantize_weights(w_q, scales)
    for n in range(4):                 # one filter at a time, float64 product of float32 operands
        want = (w_q[n].astype(np.float64) * np.float64(np.float32(scales[n]))).astype(np.float32)
        np.testing.assert_array_equal(got[n], want)
    one = dequantize_weights(w_q, np.array([0.013]))
    np.testing.assert_array_equal(one, (w_q.astype(np.float64) * np.float64(np.float32(0.013))).astype(np.float32))
    with pytest.raises(ValueError, match="3 scales for 4 filters"):
        dequantize_weights(w_q, scales[:3])


def test_error_map_and_value_range_against_numpy():
    from engine.session.stats import error_map, value_range
    rng = np.random.default_rng(9)
    y, ref = rng.normal(0, 1, (20, 4, 5)).astype(np.float32), rng.normal(0, 1, (20, 4, 5)).astype(np.float32)
    d, vmax = error_map(y, ref, channels=16)
    np.testing.assert_array_equal(d, y[:16] - ref[:16])
    assert vmax == max(abs(float(v)) for v in (y[:16] - ref[:16]).ravel())
    d, vmax = error_map(y, y)
    assert d.shape == y.shape and vmax == 0.0 and str(vmax) == "0.0"        # no error: +0, never -0
    assert value_range(y) == (float(min(y.ravel())), float(max(y.ravel())))
