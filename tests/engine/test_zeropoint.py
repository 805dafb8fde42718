"""Zero-point convolutions on the int8 kernels (engine/quant/zeropoint.py): the exact accumulators
`sum w * (x - zp)` against naive int64 loops over the zero-point-padded input, bit for bit, through
the integer Winograd, the int8 bands (stride 1 and 2, 1x1, odd sizes, split reductions) and every
border pattern; and the asymmetric profiles' INT layers identical to the int16 GEMM they ran before."""
from __future__ import annotations

import numpy as np
import pytest

from engine.kernels import threads
from engine.quant.intops import conv_int_bands, conv_int_naive
from engine.quant.zeropoint import borders, conv_zero_point


def _naive(x_q: np.ndarray, zp: int, w_q: np.ndarray, s: int, p: int) -> np.ndarray:
    """sum w * (x - zp) with the padding at x = zp (0 after the shift): int64 loops."""
    xc = x_q.astype(np.int64) - zp
    return conv_int_naive(xc, w_q, np.zeros(w_q.shape[0], np.int64), s, p).astype(np.int64)


DTYPES: set = set()       # the band dtypes the last _run handed over


def _run(x_q, zp, w_q, k, s, p):
    n = w_q.shape[0]
    ho = (x_q.shape[1] + 2 * p - k) // s + 1
    wo = (x_q.shape[2] + 2 * p - k) // s + 1
    out = np.full((n, ho, wo), np.nan)
    seen = np.zeros((n, ho, wo), int)
    DTYPES.clear()

    def keep(part, r0, r1, acc, ch):
        assert np.array_equal(acc, np.rint(acc))              # integers, however they are held
        DTYPES.add(acc.dtype)
        out[ch, r0:r1] = acc
        seen[ch, r0:r1] += 1

    w_f = w_q.reshape(n, -1).astype(np.float32)
    kernel = conv_zero_point(x_q, zp, w_q, lambda: w_f, k, s, p, keep)
    assert (seen == 1).all()                                   # every output handed over once
    return out.astype(np.int64), kernel


CASES = [  # c, n, h, w, k, s, p
    (64, 64, 13, 13, 3, 1, 1),      # integer Winograd
    (70, 66, 9, 12, 3, 1, 1),       # odd sizes, uneven blocks
    (16, 32, 20, 18, 3, 1, 1),      # int8 bands
    (32, 64, 15, 16, 3, 2, 1),      # stride 2: padding on the top and left only when even
    (48, 24, 7, 9, 1, 1, 0),        # 1x1: no border at all
    (8, 16, 6, 5, 5, 1, 2),         # two rows and columns of padding each side
    (3, 16, 11, 11, 3, 1, 0),       # no padding
    (256, 16, 5, 6, 3, 1, 1),       # sums that may pass 2**24: float64 bands, split reductions
]


@pytest.mark.parametrize("c,n,h,w,k,s,p", CASES)
@pytest.mark.parametrize("zp", [0, 37, 128, 255])
def test_accumulators_equal_naive_loops(c, n, h, w, k, s, p, zp):
    rng = np.random.default_rng(c * 31 + h + zp)
    x_q = rng.integers(0, 256, (c, h, w)).astype(np.uint8)
    w_q = rng.integers(-127, 128, (n, c, k, k)).astype(np.int8)
    got, _ = _run(x_q, zp, w_q, k, s, p)
    np.testing.assert_array_equal(got, _naive(x_q, zp, w_q, s, p))


def test_bands_are_float32_only_where_every_sum_stays_below_2_24():
    rng = np.random.default_rng(4)
    x_q = rng.integers(0, 256, (256, 5, 6)).astype(np.uint8)
    for wmax, dtype in ((127, np.float64), (20, np.float32)):
        w_q = rng.integers(-wmax, wmax + 1, (16, 256, 3, 3)).astype(np.int8)
        got, _ = _run(x_q, 3, w_q, 3, 1, 1)
        assert DTYPES == {np.dtype(dtype)}
        np.testing.assert_array_equal(got, _naive(x_q, 3, w_q, 1, 1))


def test_int8_codes_with_a_zero_point():
    rng = np.random.default_rng(5)
    x_q = rng.integers(-128, 128, (64, 10, 10)).astype(np.int8)
    w_q = rng.integers(-127, 128, (64, 64, 3, 3)).astype(np.int8)
    for zp in (0, -20, 90):
        got, _ = _run(x_q, zp, w_q, 3, 1, 1)
        np.testing.assert_array_equal(got, _naive(x_q, zp, w_q, 1, 1))


def test_big_layers_take_the_integer_winograd_and_match_the_int16_gemm():
    """A 3x3 layer of 128 channels runs on the integer Winograd now; the int16 `x - zp` GEMM the
    asymmetric profiles ran before gives the same accumulators, on 1 and 2 threads."""
    rng = np.random.default_rng(9)
    x_q = rng.integers(0, 256, (128, 13, 13)).astype(np.uint8)
    w_q = rng.integers(-40, 41, (128, 128, 3, 3)).astype(np.int8)
    before = np.zeros((128, 13, 13))

    def keep(part, r0, r1, acc, ch):
        before[ch, r0:r1] = acc

    conv_int_bands(x_q.astype(np.int16) - np.int16(77), w_q.reshape(128, -1).astype(np.float32), 3, 1, 1, keep)
    for n_threads in (1, 2):
        with threads.blas_limit(n_threads):
            got, kernel = _run(x_q, 77, w_q, 3, 1, 1)
        assert kernel == "winograd"
        np.testing.assert_array_equal(got, before.astype(np.int64))


def test_border_sums_are_the_taps_on_padding():
    """The tables themselves, against the taps counted one output position at a time."""
    rng = np.random.default_rng(2)
    w_q = rng.integers(-127, 128, (5, 4, 3, 3)).astype(np.int8)
    b = borders(w_q, 6, 8, 3, 2, 1)
    assert b.rows.tolist() == [0] and b.cols.tolist() == [0]    # stride 2 on even sizes: the far side is inside
    per_tap = w_q.astype(np.int64).sum(axis=1)
    np.testing.assert_array_equal(b.total, per_tap.sum(axis=(1, 2)))
    np.testing.assert_array_equal(b.row_sums[:, 0], per_tap[:, 0, :].sum(axis=1))
    np.testing.assert_array_equal(b.col_sums[:, 0], per_tap[:, :, 0].sum(axis=1))
    np.testing.assert_array_equal(b.corners[:, 0, 0], per_tap[:, 0, 0])


@pytest.mark.parametrize("size", [2 * 65536, 2 * 65536 + 1, 100])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_lookup_tables_by_code_pairs_equal_the_plain_lookup(size, dtype):
    """`asym.apply_lut`'s pair table (big even maps) against table[codes] (odd and small ones take it)."""
    from engine.quant import asym
    rng = np.random.default_rng(size)
    table = rng.integers(0, 256, 256).astype(np.uint8).view(dtype)
    q = rng.integers(0, 256, (4, size // 16, 4) if size % 16 == 0 else size).astype(np.uint8).view(dtype)
    from engine.kernels import threads
    for n_threads in (1, 2):         # big maps: halves on the kernel threads
        with threads.blas_limit(n_threads):
            got = asym.apply_lut(q, table)
        assert got.dtype == table.dtype and got.shape == q.shape
        np.testing.assert_array_equal(got, table[q.view(np.uint8)])


@pytest.mark.parametrize("c,n,kernel", [(64, 64, "winograd"), (16, 32, "im2col")])
def test_the_filter_sums_and_bias_fold_into_either_kernel(monkeypatch, c, n, kernel):
    """Where every sum fits float32 the constant rides in the kernel (the bands' bias column, the
    Winograd's M[1, 1]): the sums with a bias are still exact, and no add pass was needed."""
    import engine.quant.zeropoint as zp_mod
    folds = []
    real = zp_mod.conv_int_unshared

    def spy(*args):
        on_fold = args[8] if len(args) > 8 else None
        name = real(*args[:8], (lambda: (folds.append(True), on_fold())) if on_fold else None)
        return name

    monkeypatch.setattr(zp_mod, "conv_int_unshared", spy)
    rng = np.random.default_rng(c)
    x_q = rng.integers(0, 256, (c, 14, 13)).astype(np.uint8)
    w_q = rng.integers(-20, 21, (n, c, 3, 3)).astype(np.int8)
    bias = rng.integers(-5000, 5000, n)
    out = np.zeros((n, 14, 13))

    def keep(part, r0, r1, acc, ch):
        out[ch, r0:r1] = acc

    assert conv_zero_point(x_q, 40, w_q, lambda: w_q.reshape(n, -1).astype(np.float32), 3, 1, 1, keep,
                           bias=bias) == kernel
    assert folds == [True]
    np.testing.assert_array_equal(out.astype(np.int64), _naive(x_q, 40, w_q, 1, 1) + bias[:, None, None])


@pytest.mark.parametrize("spread", [50, 5000, 200000])       # no saturation, none, much
def test_band_requantization_with_extremes_equals_the_plain_rules(spread):
    """The epilogues' shortcuts (per-channel extremes instead of saturation passes, buffers reused, the
    accumulator band as its own work array) give the codes and counts of the plain rules."""
    from engine.quant import asym
    from engine.quant.profiles.qwidgets_asym import fixed, requantize_u8, requantize_u8_band
    rng = np.random.default_rng(spread)
    u = rng.integers(-spread, spread, (6, 5, 7)).astype(np.float32)
    u2 = u.reshape(6, -1)
    lo, hi = u2.min(axis=1), u2.max(axis=1)
    scales = asym.conv_output_scales(0.02, rng.uniform(0.001, 0.01, 6), 0.05)
    want, want_sat = asym.requantize_output(u.astype(np.float64), scales, 30)
    out = np.empty((6, 5, 7), np.uint8)
    _, sat = asym.requantize_output(u, scales, 30, out=out, work=u.copy(), extremes=(lo, hi))
    np.testing.assert_array_equal(out, want)
    assert sat == want_sat
    f_pos = fixed(scales.astype(np.float64) * 0.7).reshape(-1, 1, 1)
    f_neg = fixed(scales.astype(np.float64) * 0.07).reshape(-1, 1, 1)
    for neg in (None, f_neg):
        want, want_sat = requantize_u8(u.astype(np.float64), f_pos, neg, 30)
        sat = requantize_u8_band(u, f_pos, neg, 30, out, 0, lo.astype(np.float64), hi.astype(np.float64))
        np.testing.assert_array_equal(out, want)
        assert sat == want_sat
    assert (want_sat > 0) == (spread == 200000)      # the saturating case saturates, the others do not


def test_quantizers_with_shortcuts_equal_the_float64_rules():
    """qwidgets_asym's quantize (now in float32, counting only past the extremes) against the float64
    rule it had, and ONNX QuantizeLinear's count, on values inside, at and past both ends."""
    from engine.quant import asym
    from engine.quant.profiles.qwidgets_asym import quantize_u8
    rng = np.random.default_rng(11)
    for spread in (0.5, 3.0, 1e9):
        x = (rng.standard_normal((3, 40, 41)) * spread).astype(np.float32)
        x[0, 0, :4] = [0.5 * 0.01, 1.5 * 0.01, -2.5 * 0.01, np.float32(2.0) ** 30]    # ties, a huge value
        for zp in (0, 17, 255):
            v = np.rint(np.divide(x, np.float32(0.01), dtype=np.float32).astype(np.float64)) + zp
            want = np.clip(v, 0, 255).astype(np.uint8), int(np.count_nonzero((v < 0) | (v > 255)))
            got = quantize_u8(x, 0.01, zp)
            np.testing.assert_array_equal(got[0], want[0])
            assert got[1] == want[1]
            q, sat = asym.quantize_linear(x, 0.01, zp)
            d = np.divide(x, np.float32(0.01), dtype=np.float32)
            assert sat == int(np.count_nonzero(d > 255 - zp + 0.5)) + int(np.count_nonzero(d < -zp - 0.5))
            np.testing.assert_array_equal(q, np.clip(np.rint(np.clip(d, -zp, 255 - zp)) + zp, 0, 255).astype(np.uint8))
