"""The float32 requantization epilogue (engine/quant/requant32.py) against an integer reference, over
every accumulator a non-saturating channel can hold, and its table of spurious float32 ties."""
from __future__ import annotations

import numpy as np
import pytest

from engine.quant.qtensor import multiplier_value, quantize_multiplier, requantize_naive
from engine.quant.requant32 import requant_epilogue, spurious_ties


def _int_rule(u: np.ndarray, m: int, sh: int) -> np.ndarray:
    """round half to even of u * m / 2**sh in int64 (no float anywhere), unsaturated."""
    n = u.astype(np.int64) * m
    q = n >> sh
    rem = n - (q << sh)
    half = 1 << (sh - 1)
    return q + ((rem > half) | ((rem == half) & (q % 2 == 1)))


def _reference(u: np.ndarray, m, sh, mn, shn, slope) -> np.ndarray:
    pos = _int_rule(u, m, sh)
    if slope is None:
        q = pos
    elif slope == 0.0:
        q = np.where(u >= 0, pos, 0)
    else:
        q = np.where(u >= 0, pos, _int_rule(u, mn, shn))
    return np.clip(q, -127, 127)


def _multipliers(slope, shifts, seed):
    rng = np.random.default_rng(seed)
    m = rng.integers(1 << 14, 1 << 15, len(shifts))
    # the four multipliers of test_compare_rows' tie cases, whose float32 products hit half-integers
    m[:4] = [29176, 24595, 20373, 16810]
    sh = np.array(shifts)
    f = multiplier_value(m, sh)
    if slope:
        mn, shn = quantize_multiplier(f * slope)
    else:
        mn, shn = np.zeros_like(m), np.ones_like(sh)
    return m, sh, f, mn, shn, (multiplier_value(mn, shn) if slope else None)


@pytest.mark.parametrize("slope", [None, 0.1, 0.0])
def test_every_unsaturated_accumulator_equals_the_integer_rule(slope):
    """Channel c holds every integer u with |u * f_c| < 127.5 (its whole non-saturating range, up to
    ~1M values), in bands of rows and channel blocks as the kernels hand them: the int8 output must be
    the integer rule's, bit for bit, and the float32 product alone must get some of them wrong (so the
    tie table is what makes it exact)."""
    shifts = [24, 24, 24, 24, 21, 23, 25, 26]
    m, sh, f, mn, shn, f_neg = _multipliers(slope, shifts, 7)
    f_low = f if slope is None else (f * 0 if slope == 0.0 else f_neg)
    width = 1024
    ranges = []
    for c in range(len(f)):
        lo = -int(np.floor(127.49 / f_low[c])) if slope != 0.0 else -5000
        hi = int(np.floor(127.49 / f[c]))
        ranges.append(np.arange(lo, hi + 1))
    rows = -(-max(r.size for r in ranges) // width)
    acc = np.zeros((len(f), rows * width), np.int64)
    for c, r in enumerate(ranges):
        acc[c, :r.size] = r
    acc = acc.reshape(len(f), rows, width)
    want = np.stack([_reference(acc[c], int(m[c]), int(sh[c]), int(mn[c]), int(shn[c]), slope)
                     for c in range(len(f))])
    y = np.empty(acc.shape, np.int8)
    b_q = np.zeros(len(f), np.int32)
    epilogue, stats = requant_epilogue(y, b_q, f, f_neg, slope)
    band = max(1, rows // 3)
    for c0, c1 in ((0, 3), (3, len(f))):                 # channel blocks: the table's channel offsets
        for r0 in range(0, rows, band):
            r1 = min(rows, r0 + band)
            epilogue(0, r0, r1, acc[c0:c1, r0:r1].astype(np.float32), slice(c0, c1))
    np.testing.assert_array_equal(y, want)
    assert sum(s[2] for s in stats) == 0                  # nothing saturated: the float32 path ran
    ties = spurious_ties(f, f_neg, slope)
    assert ties is not None and ties[0].size > 0
    fast = np.rint(np.maximum(acc.astype(np.float32) * f.astype(np.float32)[:, None, None],
                              acc.astype(np.float32) * f_low.astype(np.float32)[:, None, None]))
    assert np.count_nonzero(fast != want) > 0             # float32 alone would be wrong somewhere
    chan, val = ties
    wrong = np.argwhere(fast != want)
    assert {(int(c), float(acc[c, i, j])) for c, i, j in wrong} <= set(zip(chan.tolist(), val.tolist()))


def test_table_matches_a_brute_force_search():
    """spurious_ties lists exactly the accumulators (within +-127.5 of output) whose float32 rounding is
    wrong, found here by trying every u of each channel's range."""
    m, sh, f, mn, shn, f_neg = _multipliers(0.1, [24, 24, 24, 24, 22, 25], 3)
    chan, val = spurious_ties(f, f_neg, 0.1)
    for c in range(len(f)):
        u = np.arange(-int(127.5 / f_neg[c]) - 2, int(127.5 / f[c]) + 3)
        exact = np.where(u >= 0, np.rint(u * f[c]), np.rint(u * f_neg[c]))
        v32 = np.maximum(u.astype(np.float32) * np.float32(f[c]), u.astype(np.float32) * np.float32(f_neg[c]))
        bad = u[(np.rint(v32.astype(np.float64)) != exact) & (np.abs(exact) <= 128)]
        assert set(bad.tolist()) <= set(val[chan == c].tolist())
        listed = val[chan == c]
        # every listed value is genuinely wrong in float32 (no padding of the table)
        lv = np.maximum(listed.astype(np.float32) * np.float32(f[c]), listed.astype(np.float32) * np.float32(f_neg[c]))
        le = np.where(listed >= 0, np.rint(listed * f[c]), np.rint(listed * f_neg[c]))
        assert np.all(np.rint(lv.astype(np.float64)) != le)


def test_integer_rule_of_this_test_is_requantize_naive():
    rng = np.random.default_rng(5)
    u = rng.integers(-(1 << 23), 1 << 23, 2000)
    for m, sh in ((29176, 24), (16810, 26), (20000, 21)):
        got = np.clip(_int_rule(u, m, sh), -127, 127)
        assert got.tolist() == [requantize_naive(int(a), m, sh) for a in u]


def test_saturating_channels_and_bias_stay_exact():
    """Channels that saturate run the float64 rule; a bias moves every accumulator (the table is of
    u = acc + b)."""
    m, sh, f, mn, shn, f_neg = _multipliers(0.1, [24, 24, 24, 24, 20], 11)
    rng = np.random.default_rng(1)
    acc = rng.integers(-3_000_000, 3_000_000, (5, 40, 64))
    chan, val = spurious_ties(f, f_neg, 0.1)
    b_q = rng.integers(-1000, 1000, 5).astype(np.int32)
    for k, (c, v) in enumerate(zip(chan.tolist(), val.tolist())):
        if c >= 4:
            break
        acc[c, k % 40, :3] = int(v) - int(b_q[c])          # hits of the tie table, after the bias
    acc[4, 0, 0] = 10**7                                    # channel 4 saturates
    for c in range(4):                                       # channels 0-3 stay within +-127
        acc[c] = np.clip(acc[c], -int(127 / f_neg[c]) - int(b_q[c]), int(127 / f[c]) - int(b_q[c]))
    y = np.empty(acc.shape, np.int8)
    epilogue, stats = requant_epilogue(y, b_q, f, f_neg, 0.1)
    epilogue(0, 0, 40, acc.astype(np.float32), slice(0, 5))
    u = acc + b_q[:, None, None]
    want = np.stack([_reference(u[c], int(m[c]), int(sh[c]), int(mn[c]), int(shn[c]), 0.1) for c in range(5)])
    np.testing.assert_array_equal(y, want)
    raw = np.stack([np.where(u[c] >= 0, _int_rule(u[c], int(m[c]), int(sh[c])), _int_rule(u[c], int(mn[c]), int(shn[c])))
                    for c in range(5)])
    assert stats[0][2] == int(np.count_nonzero(np.abs(raw) > 127)) > 0
    assert (stats[0][0], stats[0][1]) == (int(u.min()), int(u.max()))


@pytest.mark.parametrize("slope", [None, 0.1, 0.0])
def test_saturation_bounds_are_the_last_unsaturated_accumulators(slope):
    from engine.quant.requant32 import saturation_bounds
    m, sh, f, mn, shn, f_neg = _multipliers(slope, [24, 24, 24, 24, 14, 20, 27, 30], 9)
    f_low = f if slope is None else (f * 0 if slope == 0.0 else f_neg)
    hi, lo = saturation_bounds(f, f_low)
    for c in range(len(f)):
        u = np.arange(int(hi[c]) - 3, int(hi[c]) + 4)
        q = _reference(u, int(m[c]), int(sh[c]), int(mn[c]), int(shn[c]), slope)
        raw = _int_rule(u, int(m[c]), int(sh[c]))
        assert np.all((raw > 127) == (u > hi[c])) and q.max() == 127
        if slope == 0.0:
            assert lo[c] < -(2 ** 31)
            continue
        u = np.arange(int(lo[c]) - 3, int(lo[c]) + 4)
        raw = _int_rule(u, int(m[c] if slope is None else mn[c]), int(sh[c] if slope is None else shn[c]))
        assert np.all((raw < -127) == (u < lo[c]))


@pytest.mark.parametrize("k,s,p,big_bias", [(3, 1, 1, False), (3, 2, 1, False), (1, 1, 0, False), (3, 1, 1, True)])
def test_bias_folded_into_the_gemm_gives_the_naive_accumulators(k, s, p, big_bias):
    """conv_int_bands(bias=, on_fold=) adds the bias as one more GEMM column when every partial sum
    stays below 2**24 (then the epilogue sees acc + b), and leaves it to the epilogue otherwise."""
    from engine.kernels.gemm import conv_out_size
    from engine.quant.intops import conv_int_bands, conv_int_naive, row_abs_max
    rng = np.random.default_rng(4)
    c, n, h, w = 5, 12, 23, 37
    x_q = rng.integers(-127, 128, (c, h, w)).astype(np.int8)
    w_q = rng.integers(-127, 128, (n, c, k, k)).astype(np.int8)
    b_q = rng.integers(-(2 ** 15), 2 ** 15, n).astype(np.int32)
    if big_bias:
        b_q[3] = 2 ** 24
    ho, wo = conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)
    got = np.zeros((n, ho, wo), np.int64)
    folds = []

    def epilogue(part, r0, r1, acc, ch):
        got[ch, r0:r1] = acc[:, :, :wo]

    w_f = w_q.reshape(n, -1).astype(np.float32)
    conv_int_bands(x_q, w_f, k, s, p, epilogue, row_abs_max(w_q), bias=b_q,
                   on_fold=lambda: folds.append(1))
    want = conv_int_naive(x_q, w_q, b_q, s, p)
    assert folds == ([] if big_bias else [1])
    np.testing.assert_array_equal(got + (b_q[:, None, None] if big_bias else 0), want)


def test_route_rescale_table_saturates_and_counts_like_requantize():
    """rescale() looks int8 values up in a 256-entry table of requantize()'s rule: equal to the rule on
    every element, saturation counted the same, for a growing and a shrinking scale."""
    from engine.quant.int_layers import rescale
    from engine.quant.qtensor import QTensor, requantize
    rng = np.random.default_rng(8)
    x = rng.integers(-128, 128, (7, 9, 11)).astype(np.int8)
    for ratio in (0.37, 2.9):
        rec: dict = {}
        got = rescale(QTensor(x[2:6], 1.0), 1.0 / ratio, rec)
        m, sh = quantize_multiplier(ratio)
        want, sat = requantize(x[2:6].astype(np.int32), m, sh, axis_channels=False)
        np.testing.assert_array_equal(got, want)
        assert rec["saturated"] == sat and (sat > 0) == (ratio > 1)


def _ties_at_127_5(count: int, sh: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """15-bit multipliers m with an accumulator u0 whose float32 product u0 * m / 2**sh is 127.5 while
    the exact one is just below (a spurious tie that float32 rounds to 128, i.e. saturated)."""
    target = int(127.5 * 2 ** sh)
    ms, us = [], []
    for m in range(1 << 14, 1 << 15):
        u0 = target // m
        if 0 < target - u0 * m <= 1 << (sh - 19) and np.float32(u0) * np.float32(m / 2 ** sh) == np.float32(127.5):
            ms.append(m)
            us.append(u0)
            if len(ms) == count:
                break
    return np.array(ms), np.array(us)


@pytest.mark.parametrize("flag_all", [True, False])
def test_saturation_counted_in_float32_with_ties_at_127_5(flag_all):
    """Saturating channels are clipped and counted in float32: exact, including accumulators whose
    float32 product is the spurious tie 127.5 (exactly 127, not saturated), in flagged channels (most
    channels: whole-band count; one: per channel) and in an unflagged one; columns past wo ignored."""
    m, u0 = _ties_at_127_5(6)
    assert m.size == 6
    sh = np.full(m.size, 24)
    f = multiplier_value(m, sh)
    rng = np.random.default_rng(12)
    n, rows, width, wo = m.size, 9, 40, 33
    acc = np.stack([rng.integers(-int(u0[c]), int(u0[c]), (rows, width)) for c in range(n)])
    for c in range(n):
        acc[c, c % rows, 2:5] = u0[c]                       # the tie at +127.5 (exactly 127)
        acc[c, (c + 3) % rows, 6] = -u0[c]                  # and at -127.5 (linear: the same multiplier)
        if flag_all or c == 1:
            acc[c, (c + 5) % rows, 7:9] = 3 * u0[c]          # saturating: this channel is flagged
            acc[c, (c + 6) % rows, 10] = -2 * u0[c]
    acc[:, :, wo:] = acc[:, :, :1]                          # a band wider than wo: columns past it repeat column 0
    y = np.empty((n, rows, wo), np.int8)
    epilogue, stats = requant_epilogue(y, np.zeros(n, np.int32), f, None, None)
    epilogue(0, 0, rows, acc.astype(np.float32), slice(0, n))
    want = np.stack([_reference(acc[c, :, :wo], int(m[c]), 24, 0, 1, None) for c in range(n)])
    np.testing.assert_array_equal(y, want)
    raw = np.stack([_int_rule(acc[c, :, :wo], int(m[c]), 24) for c in range(n)])
    assert stats[0][2] == int(np.count_nonzero(np.abs(raw) > 127)) == (3 * n if flag_all else 3)
    assert np.count_nonzero(want == 127) > np.count_nonzero(raw > 127)    # the ties stay unsaturated


@pytest.mark.parametrize("slope", [None, 0.1, 0.0])
def test_kept_channel_slices_follow_the_bias_and_the_fold(slope):
    """The channel slices an epilogue reads are kept with its multipliers' plan across calls: layer
    calls with one set of multipliers and different biases, folded or not, over the same channel
    blocks (some bands holding spurious ties and saturated values after their bias), each give the
    integer rule of their own u = acc + b, stats included."""
    m, sh, f, mn, shn, f_neg = _multipliers(slope, [24, 24, 24, 24, 20, 22], 5)
    chan, val = spurious_ties(f, f_neg, slope)
    rng = np.random.default_rng(3)
    blocks = ((0, 2), (2, 6))
    for call in range(6):
        b_q = rng.integers(-2000, 2000, 6).astype(np.int32) if call % 3 else np.zeros(6, np.int32)
        folded = call % 2 == 1
        u = rng.integers(-2_000_000, 2_000_000, (6, 12, 40))
        for k, (c, v) in enumerate(zip(chan.tolist(), val.tolist())):
            u[c, k % 12, k % 40] = int(v)                  # spurious ties of u
        u[5, 0, 0] = 10 ** 7                                # a saturating channel
        for c in range(5):
            u[c] = np.clip(u[c], -int(127 / (f_neg[c] if slope else f[c])) if slope != 0.0 else -10 ** 6,
                           int(127 / f[c]))
        acc = u if folded else u - b_q[:, None, None]
        y = np.empty(u.shape, np.int8)
        epilogue, stats = requant_epilogue(y, b_q, f, f_neg, slope)
        if folded:
            epilogue.fold_bias()
        for c0, c1 in blocks:
            for r0, r1 in ((0, 5), (5, 12)):
                epilogue(0, r0, r1, acc[c0:c1, r0:r1].astype(np.float32), slice(c0, c1))
        want = np.stack([_reference(u[c], int(m[c]), int(sh[c]), int(mn[c]), int(shn[c]), slope) for c in range(6)])
        np.testing.assert_array_equal(y, want)
        assert (min(s[0] for s in stats), max(s[1] for s in stats)) == (int(u.min()), int(u.max()))
        raw = np.stack([np.where(u[c] >= 0, _int_rule(u[c], int(m[c]), int(sh[c])),
                                 0 if slope == 0.0 else _int_rule(u[c], int(mn[c] if slope else m[c]),
                                                                  int(shn[c] if slope else sh[c])))
                        for c in range(6)])
        assert sum(s[2] for s in stats) == int(np.count_nonzero(np.abs(raw) > 127)) > 0


def test_route_int_writes_each_part_into_its_channels_like_concatenate():
    """route_forward_int rescales (or copies) each part straight into the output's channels, on the
    kernel threads: equal to rescale() of each part then concatenate, the records the same,
    on 1 and 2 threads; the kept tables give the same values on a second call."""
    from types import SimpleNamespace

    from engine.kernels.threads import blas_limit
    from engine.quant.int_layers import rescale, route_forward_int
    from engine.quant.qtensor import QTensor
    rng = np.random.default_rng(21)
    a = QTensor(rng.integers(-128, 128, (300, 20, 20)).astype(np.int8), 0.5)
    b = QTensor(rng.integers(-128, 128, (200, 20, 20)).astype(np.int8), 0.2)
    c = QTensor(rng.integers(-128, 128, (100, 20, 20)).astype(np.int8), 0.5)
    layer = SimpleNamespace(in_shapes=[x.q.shape for x in (a, b, c)], groups=1, group_id=0)
    want_rec: dict = {}
    want = np.concatenate([rescale(x, 0.5, want_rec) for x in (a, b, c)], axis=0)
    for threads in (1, 2, 1):
        with blas_limit(threads):
            rec: dict = {}
            got = route_forward_int(layer, [a, b, c], None, None, rec)
        np.testing.assert_array_equal(got.q, want)
        assert got.scale == 0.5 and rec == want_rec
    two = SimpleNamespace(in_shapes=[a.q.shape, b.q.shape], groups=1, group_id=0)
    got_rec: dict = {}
    low = route_forward_int(two, [QTensor(a.q, 0.1), b], None, None, got_rec)   # a in b's scale
    ref: dict = {}
    np.testing.assert_array_equal(low.q, np.concatenate([rescale(QTensor(a.q, 0.1), 0.2, ref), b.q]))
    assert got_rec == ref and low.scale == 0.2
