"""fitness.error_stats (blockwise float64 sums) against the plain whole-tensor formulation."""
from __future__ import annotations

import numpy as np
import pytest

from engine.kernels import threads
from engine.quant import fitness
from engine.quant.fitness import error_stats


def plain_error_stats(ref, y, q=None, saturated=0):
    """The formulation before (whole-tensor float64 copies, one BLAS dot each), the reference here."""
    r = ref.astype(np.float64).ravel()
    e = y.astype(np.float64).ravel() - r
    sig, noise = float(r @ r), float(e @ e)
    sqnr = float("inf") if noise == 0 else (10 * np.log10(sig / noise) if sig > 0 else float("-inf"))
    ny = float(np.linalg.norm(y.astype(np.float64)))
    nr = float(np.sqrt(sig))
    cos = float(r @ y.astype(np.float64).ravel() / (nr * ny)) if nr > 0 and ny > 0 else float(nr == ny)
    use = float(np.abs(q.astype(np.int16)).max() / 127) if q is not None and q.size else float("nan")
    return np.array([sqnr, cos, noise / max(1, r.size), float(np.abs(e).max()) if e.size else 0.0, use,
                     saturated / max(1, r.size)])


def as_array(s: fitness.ErrorStats) -> np.ndarray:
    return np.array([s.sqnr_db, s.cosine, s.mse, s.max_abs, s.range_use, s.saturation])


def quantized(ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = np.clip(np.round(ref / np.abs(ref).max() * 127), -128, 127).astype(np.int8)
    q.flat[0] = -128                                   # |-128| must not wrap in int8
    return q, (q.astype(np.float32) * (np.abs(ref).max() / 127)).astype(np.float32)


@pytest.mark.parametrize("shape", [(64, 13, 13), (16, 416, 416), (255, 26, 26), (1, 1, 1)])
def test_error_stats_equal_the_plain_formulation_to_float64_rounding(shape):
    rng = np.random.default_rng(sum(shape))
    ref = rng.standard_normal(shape).astype(np.float32)
    q, y = quantized(ref)
    got, want = as_array(error_stats(ref, y, q, 7)), plain_error_stats(ref, y, q, 7)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[3] == want[3] and got[4] == want[4] == 128 / 127 and got[5] == want[5]  # max|e|, range, saturation


def test_error_stats_are_the_same_bits_on_1_and_2_threads(monkeypatch):
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((32, 104, 104)).astype(np.float32)
    q, y = quantized(ref)
    with threads.blas_limit(1):
        one = as_array(error_stats(ref, y, q))
    with threads.blas_limit(2):
        two = as_array(error_stats(ref, y, q))
    assert np.array_equal(one, two)
    monkeypatch.setattr(fitness, "STATS_BLOCK", 1000)       # another block size: same values to rounding
    np.testing.assert_allclose(as_array(error_stats(ref, y, q)), one, rtol=1e-12)


def test_error_stats_edge_cases_match():
    z = np.zeros((4, 2, 2), np.float32)
    one = np.ones((4, 2, 2), np.float32)
    for ref, y in ((z, z), (one, one), (z, one), (one, z), (one, -one), (z[:0], z[:0])):
        got, want = as_array(error_stats(ref, y)), plain_error_stats(ref, y)
        assert np.array_equal(got, want, equal_nan=True), (ref.shape, got, want)


@pytest.mark.parametrize("zero_point", [0, 3])
def test_error_stats_of_a_qtensor_and_a_known_rr_are_the_same_bits(zero_point):
    """The int8 tensor dequantized block by block, and r.r kept from an earlier call, change nothing."""
    from engine.quant.qtensor import QTensor
    rng = np.random.default_rng(5)
    ref = rng.standard_normal((24, 77, 91)).astype(np.float32)
    q, _ = quantized(ref)
    if zero_point:
        q = (q.astype(np.int16) + 128).astype(np.uint8)
    qt = QTensor(q, 0.0173, zero_point)
    want = as_array(error_stats(ref, qt.dequantize(), q, 5))
    assert np.array_equal(as_array(error_stats(ref, qt, q, 5)), want)
    rr = fitness.ref_power(ref)
    r64 = ref.astype(np.float64).ravel()
    np.testing.assert_allclose(rr, float(r64 @ r64), rtol=1e-13)
    assert np.array_equal(as_array(error_stats(ref, qt, q, 5, rr=rr)), want)
    if not zero_point:
        np.testing.assert_allclose(want, plain_error_stats(ref, qt.dequantize(), q, 5), rtol=1e-12)


@pytest.mark.parametrize("kind", ["float", "qtensor", "uint8", "edges"])
def test_sqnr_only_gives_the_full_statistics_bits(kind):
    """compare's lean statistics (e.e alone, r.r known): SQNR, MSE, range use and saturation are the
    very bits of the full computation, on 1 and 2 threads; cosine and max|e| are not computed."""
    from engine.quant.qtensor import QTensor
    rng = np.random.default_rng(9)
    ref = rng.standard_normal((40, 52, 61)).astype(np.float32)
    q, y = quantized(ref)
    cases = [(ref, y, None)]
    if kind == "qtensor":
        cases = [(ref, QTensor(q, 0.0231), q)]
    elif kind == "uint8":
        u8 = (q.astype(np.int16) + 128).astype(np.uint8)
        cases = [(ref, QTensor(u8, 0.0173, 3), u8)]
    elif kind == "edges":
        z, one = np.zeros((4, 2, 2), np.float32), np.ones((4, 2, 2), np.float32)
        cases = [(a, b, None) for a, b in ((z, z), (one, one), (z, one), (one, z), (one, -one), (z[:0], z[:0]))]
    for r, yy, qq in cases:
        full = error_stats(r, yy, qq, 3)
        for n in (1, 2):
            with threads.blas_limit(n):
                lean = error_stats(r, yy, qq, 3, sqnr_only=True)
                lean_rr = error_stats(r, yy, qq, 3, rr=fitness.ref_power(r), sqnr_only=True)
            for s in (lean, lean_rr):
                got, want = as_array(s), as_array(full)
                assert np.array_equal(got[[0, 2, 4, 5]], want[[0, 2, 4, 5]], equal_nan=True), (n, got, want)
                assert np.isnan(s.cosine) and np.isnan(s.max_abs)


def test_statistics_in_the_calling_thread_or_on_the_kernel_threads_are_the_same_bits(monkeypatch):
    """A few blocks run in the calling thread (SERIAL_BLOCKS), more on the kernel threads: same bits."""
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((16, 52, 52)).astype(np.float32)          # 43264 values: 2 blocks
    q, y = quantized(ref)
    assert 1 < -(-ref.size // fitness.STATS_BLOCK) < fitness.SERIAL_BLOCKS
    with threads.blas_limit(2):
        here = as_array(error_stats(ref, y, q)), as_array(error_stats(ref, y, q, sqnr_only=True))
        monkeypatch.setattr(fitness, "SERIAL_BLOCKS", 1)
        pool = as_array(error_stats(ref, y, q)), as_array(error_stats(ref, y, q, sqnr_only=True))
    for a, b in zip(here, pool):
        assert np.array_equal(a, b, equal_nan=True)


def test_max_abs_of_equal_tensors_is_positive_zero():
    # the max of -min over zero errors was -0.0, printed "-0" by the CLI's JSON and the Explorer
    x = np.linspace(-3, 3, 4096, dtype=np.float32).reshape(4, 32, 32)
    s = error_stats(x, x.copy())
    assert s.max_abs == 0.0 and not np.signbit(s.max_abs)
