"""Property tests of the int8 arithmetic: quantize bounds, fast integer kernels == naive integer loops
(conv, requantize incl. folded leaky/relu, route rescaling, shortcut, maxpool), exact histogram merges,
and calibrator behaviours. References use Python ints / Fractions, never the code under test."""
from __future__ import annotations

import math
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from engine.calib import AbsHistogram, make
from engine.errors import ArgumentError
from engine.kernels.gemm import conv_out_size
from engine.layers.maxpool import maxpool_naive, maxpool_out_size
from engine.quant.int_layers import (maxpool_forward_int, reorg3d_forward_int, reorg_forward_int, route_forward_int,
                                     shortcut_forward_int, upsample_forward_int)
from engine.quant.intops import K_CHUNK, conv_int, conv_int_naive
from engine.quant.qtensor import (QMAX, QTensor, dequantize, multiplier_value, quantize, quantize_multiplier,
                                  requantize, requantize_naive)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def round_half_even(v: Fraction) -> int:
    q, r = divmod(v.numerator, v.denominator)       # floor
    twice = 2 * r
    if twice > v.denominator or (twice == v.denominator and q % 2 == 1):
        q += 1
    return q


def sat(v: int) -> int:
    return max(-QMAX, min(QMAX, v))


def mult_fraction(m, shift) -> Fraction:
    m, shift = int(m), int(shift)
    return Fraction(m, 1 << shift) if shift >= 0 else Fraction(m << -shift)


# --------------------------------------------------------------------------- quantize / dequantize
@FAST
@given(arrays(np.float32, st.integers(1, 300), elements=st.floats(-1e3, 1e3, width=32)),
       st.floats(1e-4, 10.0))
def test_quantize_roundtrip_error_is_at_most_half_a_step_inside_and_saturates_outside(x, scale):
    q, saturated = quantize(x, scale)
    assert q.dtype == np.int8 and q.shape == x.shape
    assert q.min() >= -QMAX                                   # -128 is never produced
    s32 = float(np.float32(scale))
    err = np.abs(dequantize(q, scale).astype(np.float64) - x)
    inside = np.abs(x.astype(np.float64)) <= QMAX * s32
    assert np.all(err[inside] <= s32 * (0.5 + 1e-4))
    # beyond the last level (+ half a step): saturated at +-127 with x's sign, and counted
    outside = np.abs(x.astype(np.float64)) > (QMAX + 0.5) * s32 * (1 + 1e-6)
    assert np.array_equal(q[outside], np.where(x[outside] > 0, QMAX, -QMAX).astype(np.int8))
    assert saturated >= int(outside.sum())
    assert saturated <= int((np.abs(x.astype(np.float64)) >= (QMAX + 0.5) * s32 * (1 - 1e-6)).sum())


def test_quantize_rounds_half_to_even_and_rejects_bad_scales():
    q, sat_ = quantize(np.array([0.5, 1.5, 2.5, -0.5, -1.5, 126.5, 127.5, 1000, -1000], np.float32), 1.0)
    assert q.tolist() == [0, 2, 2, 0, -2, 126, 127, 127, -127]
    assert sat_ == 3       # 127.5 rounds to 128 (even) -> saturated; +-1000
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="scale"):
            quantize(np.ones(3, np.float32), bad)


# --------------------------------------------------------------------------- multipliers, requantize
@FAST
@given(st.lists(st.floats(2.0 ** -40, 2.0 ** 20), min_size=1, max_size=8))
def test_quantize_multiplier_is_15_bit_and_within_half_an_ulp(reals):
    m, sh = quantize_multiplier(np.array(reals))
    assert np.all((m >= 1 << 14) & (m < 1 << 15))
    for r, mi, si in zip(reals, m, sh):
        exact = mult_fraction(mi, si)
        assert abs(exact - Fraction(r)) <= Fraction(1, 2) * mult_fraction(1, si) * (1 + Fraction(1, 10 ** 9))
        assert float(multiplier_value(mi, si)) == float(exact)


def test_quantize_multiplier_rejects_non_positive():
    for bad in (0.0, -1.0, np.inf, np.nan):
        with pytest.raises(ValueError, match="multipliers"):
            quantize_multiplier(np.array([1.0, bad]))


acc_i32 = st.integers(-(2 ** 31) + 1, 2 ** 31 - 1)
acc_small = st.integers(-(2 ** 20), 2 ** 20)


def tie_multiplier(draw, below: int | None = None) -> tuple[int, int]:
    """(m, shift) with m = odd * 2**t in [2**14, 2**15): exact x.5 results are then reachable."""
    t = draw(st.integers(0, 14))
    odd_lo, odd_hi = (1 << 14) >> t, ((1 << 15) - 1) >> t
    odd = draw(st.integers(odd_lo, odd_hi).filter(lambda v: v % 2 == 1 or t == 14))
    m = odd << t
    if below is not None and m >= below:
        m = 1 << 14                                       # a smaller multiplier with t = 14
    shift = draw(st.integers(t + 1, t + 24))
    return m, shift


@st.composite
def requant_case(draw):
    """Accumulators (n, k) (full int32 range or realistic), per-channel (m, shift) and an activation;
    some accumulators are exact half-way cases (acc * m / 2**shift = j + 0.5)."""
    n, k = draw(st.integers(1, 5)), draw(st.integers(1, 40))
    elems = draw(st.sampled_from([acc_i32, acc_small]))
    acc = np.array(draw(st.lists(elems, min_size=n * k, max_size=n * k)), np.int64).reshape(n, k)
    act = draw(st.sampled_from(["linear", "leaky", "relu"]))
    ties = draw(st.booleans())
    per_channel = draw(st.booleans())
    m, sh, mn, shn = (np.zeros(n, np.int64) for _ in range(4))
    for c in range(n):
        if c and not per_channel:
            m[c], sh[c], mn[c], shn[c] = m[0], sh[0], mn[0], shn[0]
            continue
        if ties:
            m[c], sh[c] = tie_multiplier(draw)
        else:
            mm, ss = quantize_multiplier(draw(st.floats(2.0 ** -36, 2.0 ** 4)))
            m[c], sh[c] = int(mm), int(ss)
        if act == "leaky":
            if ties:
                mn[c], shn[c] = tie_multiplier(draw, below=None)
                shn[c] = max(int(shn[c]), int(sh[c]) + 1)        # f_neg < f_pos
            else:
                real = float(multiplier_value(m[c], sh[c])) * draw(st.floats(0.01, 0.9))
                mm, ss = quantize_multiplier(real)
                mn[c], shn[c] = int(mm), int(ss)
    if ties:   # put exact half-way cases (and their neighbours) into the accumulators
        for c in range(n):
            for j in range(min(k, 6)):
                neg = act != "linear" and j % 2 == 1
                mm, ss = (mn[c], shn[c]) if neg else (m[c], sh[c])
                t = (int(mm) & -int(mm)).bit_length() - 1          # m = odd * 2**t
                if act == "relu" and neg:
                    mm, ss, t = m[c], sh[c], (int(m[c]) & -int(m[c])).bit_length() - 1
                odd = int(mm) >> t
                half = (2 * draw(st.integers(0, 300)) + 1) * odd << (int(ss) - 1 - t)   # acc*m = odd'*2**(ss-1)
                v = half // int(mm) * (-1 if neg or draw(st.booleans()) else 1) + draw(st.sampled_from([0, 0, 1, -1]))
                if abs(v) < 2 ** 31:
                    acc[c, j] = v
    return acc.astype(np.int32), m, sh, mn, shn, act


def naive_requant_act(acc: int, m, sh, mn, shn, act: str) -> int:
    """Integer reference: one round-half-even of acc * multiplier, negative side by the second multiplier."""
    if act == "linear" or acc >= 0:
        return requantize_naive(acc, int(m), int(sh))
    if act == "relu":
        return 0
    return sat(round_half_even(acc * mult_fraction(mn, shn)))


@FAST
@given(requant_case())
def test_requantize_equals_integer_reference_elementwise(case):
    acc, m, sh, mn, shn, act = case
    if act == "linear":
        q, saturated = requantize(acc, m, sh)
    else:                                         # relu: the second multiplier is 0
        q, saturated = requantize(acc, m, sh, mn, shn)
    assert q.dtype == np.int8 and q.shape == acc.shape
    expect = np.array([[naive_requant_act(int(a), m[c], sh[c], mn[c], shn[c], act) for a in row]
                       for c, row in enumerate(acc)], np.int64)
    np.testing.assert_array_equal(q.astype(np.int64), expect)
    unsat = 0
    for c, row in enumerate(acc):
        for a in row:
            a = int(a)
            f = mult_fraction(m[c], sh[c]) if (act == "linear" or a >= 0) else (
                Fraction(0) if act == "relu" else mult_fraction(mn[c], shn[c]))
            unsat += abs(round_half_even(a * f)) > QMAX
    assert saturated == unsat


def test_requantize_half_way_cases_round_to_even():
    m, sh = np.array([1 << 14]), np.array([15])                   # multiplier exactly 0.5
    acc = np.array([[1, 3, 5, -1, -3, -5, 253, 255, 257]], np.int32)
    q, saturated = requantize(acc, m, sh)
    assert q.tolist() == [[0, 2, 2, 0, -2, -2, 126, 127, 127]] and saturated == 2   # 127.5 -> 128, 128.5 -> 128
    q, _ = requantize(acc, m, sh, np.array([1 << 14]), np.array([16]))   # leaky with slope 0.5
    assert q.tolist() == [[0, 2, 2, 0, -1, -1, 126, 127, 127]]    # -0.25, -0.75 -> -1, -1.25 -> -1


@FAST
@given(st.lists(acc_i32, min_size=1, max_size=50), st.floats(2.0 ** -30, 2.0 ** 8))
def test_requantize_scalar_multiplier_without_channel_axis(accs, real):
    acc = np.array(accs, np.int32).reshape(-1, 1, 1) if len(accs) % 2 else np.array(accs, np.int32)
    m, sh = quantize_multiplier(real)
    q, _ = requantize(acc, m, sh, axis_channels=False)
    assert q.shape == acc.shape
    np.testing.assert_array_equal(q.ravel(), [requantize_naive(int(a), int(m), int(sh)) for a in acc.ravel()])


def test_requantize_naive_known_values():
    assert requantize_naive(3, 1 << 14, 15) == 2          # 1.5 -> 2
    assert requantize_naive(5, 1 << 14, 15) == 2          # 2.5 -> 2
    assert requantize_naive(-5, 1 << 14, 15) == -2
    assert requantize_naive(1000, 1 << 14, 14) == 127
    assert requantize_naive(-1000, 1 << 14, 14) == -127
    assert requantize_naive(3, 1 << 14, -2) == 127        # 3 * 2**16


# --------------------------------------------------------------------------- integer convolution
@st.composite
def conv_case(draw):
    k = draw(st.sampled_from([1, 3, 5]))
    s = draw(st.sampled_from([1, 2]))
    p = draw(st.sampled_from([0, k // 2, k - 1]))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    big_k = draw(st.booleans())      # C/g*k*k > K_CHUNK: the chunked reduction
    cg = (K_CHUNK // (k * k) + draw(st.integers(1, 2 * K_CHUNK // (k * k)))) if big_k else draw(st.integers(1, 6))
    ng = draw(st.integers(1, 2)) if big_k else draw(st.sampled_from([1, 2, 3, 4, 33]))
    side = (lambda lo, hi: draw(st.integers(lo, hi)))
    h, w = (side(max(1, k - 2 * p), k + 2), side(max(1, k - 2 * p), k + 2)) if big_k else \
        (side(max(1, k - 2 * p), 11), side(max(1, k - 2 * p), 11))
    c, n = cg * groups, ng * groups
    extreme = draw(st.sampled_from(["random", "max", "min", "mixed", "max", "small_w"]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    if extreme == "random":
        x = rng.integers(-127, 128, (c, h, w)).astype(np.int8)
        wq = rng.integers(-127, 128, (n, cg, k, k)).astype(np.int8)
    elif extreme == "small_w":  # |w| <= 3: a K > 1024 reduction still fits one exact float32 GEMM
        x = rng.choice(np.array([-127, 127], np.int8), (c, h, w))
        wq = rng.integers(-3, 4, (n, cg, k, k)).astype(np.int8)
    elif extreme == "max":      # every product +127*127: the largest partial sums
        x, wq = np.full((c, h, w), 127, np.int8), np.full((n, cg, k, k), 127, np.int8)
    elif extreme == "min":
        x, wq = np.full((c, h, w), -127, np.int8), np.full((n, cg, k, k), 127, np.int8)
    else:
        x = rng.choice(np.array([-127, 127], np.int8), (c, h, w))
        wq = rng.choice(np.array([-127, 127], np.int8), (n, cg, k, k))
    b = rng.integers(-(2 ** 27), 2 ** 27, n).astype(np.int32)
    return x, wq, b, k, s, p, groups


@SLOW
@given(conv_case())
def test_conv_int_equals_naive_integer_loops(case):
    x, wq, b, k, s, p, groups = case
    assume(conv_out_size(x.shape[1], k, s, p) >= 1 and conv_out_size(x.shape[2], k, s, p) >= 1)
    w_f = np.ascontiguousarray(wq.reshape(wq.shape[0], -1), dtype=np.float32)
    got = conv_int(x, w_f, b, k, s, p, groups)
    ref = conv_int_naive(x, wq, b, s, p, groups)
    assert got.dtype == np.int32 and got.shape == ref.shape
    np.testing.assert_array_equal(got.astype(np.int64), ref)


@pytest.mark.parametrize("k, c", [(1, 1100), (3, 128), (3, 400), (5, 190), (3, 512)])
def test_conv_int_is_exact_for_the_worst_case_sums(k, c):
    # every product +-127*127 with one sign: partial sums far beyond 2**24 (float32's exact integers)
    x = np.full((c, k, k), 127, np.int8)
    wq = np.full((2, c, k, k), 127, np.int8)
    wq[1] = -127
    wq[:, 0, 0, 0] = [126, -126]           # odd totals, which float32 would round to even
    b = np.array([1, -(2 ** 20)], np.int32)
    got = conv_int(x, np.ascontiguousarray(wq.reshape(2, -1), dtype=np.float32), b, k, 1, 0)
    total = (c * k * k - 1) * 127 * 127 + 126 * 127
    assert total > 2 ** 24
    assert got[:, 0, 0].tolist() == [total + 1, -total - 2 ** 20]
    np.testing.assert_array_equal(conv_int_naive(x, wq, b, 1, 0)[:, 0, 0], [total + 1, -total - 2 ** 20])


@st.composite
def layer_case(draw):
    k = draw(st.sampled_from([1, 3]))
    s = draw(st.sampled_from([1, 2]))
    p = draw(st.sampled_from([0, k // 2]))
    c = draw(st.integers(1, 12))
    n = draw(st.one_of(st.integers(1, 6), st.integers(32, 40)))   # >= 32 filters: split in halves on one band
    h, w = draw(st.integers(k, 40)), draw(st.integers(k, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    x_q = rng.integers(-127, 128, (c, h, w)).astype(np.int8)
    w_q = rng.integers(-127, 128, (n, c, k, k)).astype(np.int8)
    per_channel = draw(st.booleans())
    w_scale = rng.uniform(1e-3, 1e-2, n if per_channel else 1)
    b_q = rng.integers(-(2 ** 18), 2 ** 18, n).astype(np.int32)
    in_scale = draw(st.floats(1e-3, 1.0))
    # output scales from "nothing saturates" to "most values saturate"
    out_scale = in_scale * float(w_scale.max()) * draw(st.sampled_from([40.0, 300.0, 3000.0, 1e5]))
    act = draw(st.sampled_from(["linear", "leaky", "relu"]))
    return x_q, w_q, w_scale, b_q, in_scale, out_scale, k, s, p, act


@FAST
@given(layer_case())
def test_fused_int_and_hybrid_conv_equal_the_two_step_reference(case):
    from engine.quant.int_layers import conv_forward_hybrid, conv_forward_int, requantize_activation
    from engine.quant.qmodel import LayerQuant
    x_q, w_q, w_scale, b_q, in_scale, out_scale, k, s, p, act = case
    n, _, h, w = w_q.shape[0], None, *x_q.shape[1:]
    ho, wo = conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)
    layer = SimpleNamespace(size=k, stride=s, padding=p, groups=1, activation=act, out_shape=(n, ho, wo))
    lq = LayerQuant(w_q, w_scale, b_q, in_scale, "minmax")
    rec: dict = {}
    y = conv_forward_int(layer, [QTensor(x_q, in_scale)], lq, out_scale, rec)
    acc = conv_int_naive(x_q, w_q, b_q, s, p).astype(np.int32)
    ref_rec: dict = {}
    ref = requantize_activation(acc, in_scale * np.broadcast_to(w_scale, (n,)), out_scale, act, ref_rec)
    np.testing.assert_array_equal(y.q, ref)
    assert (rec["acc_min"], rec["acc_max"]) == (int(acc.min()), int(acc.max()))
    assert (rec["saturated"], rec["total"]) == (ref_rec["saturated"], ref_rec["total"])
    # HYBRID: float input quantized with in_scale, exact accumulators, dequantized, activation
    xf = (x_q.astype(np.float32) * np.float32(in_scale)).astype(np.float32)
    hrec: dict = {}
    yh = conv_forward_hybrid(layer, xf, lq, hrec)
    xq2, _ = quantize(xf, in_scale)
    acc2 = conv_int_naive(xq2, w_q, b_q, s, p)
    from engine.layers.activations import activate
    expect = activate((acc2.astype(np.int32) * lq.acc_scale.reshape(-1, 1, 1)).astype(np.float32), act)
    assert yh.dtype == np.float32 and np.array_equal(yh, expect)
    assert (hrec["acc_min"], hrec["acc_max"]) == (int(acc2.min()), int(acc2.max()))


# --------------------------------------------------------------------------- route / shortcut / maxpool
scales = st.floats(2.0 ** -10, 2.0 ** 4)


@FAST
@given(st.lists(st.tuples(st.integers(1, 6), scales), min_size=1, max_size=4), st.integers(1, 5),
       st.integers(0, 2 ** 32 - 1), st.sampled_from([1, 2]))
def test_route_int_rescales_to_the_largest_scale_exactly(parts, hw, seed, groups):
    rng = np.random.default_rng(seed)
    parts = [(c * groups, s) for c, s in parts]
    xs = [QTensor(rng.integers(-127, 128, (c, hw, hw)).astype(np.int8), s) for c, s in parts]
    group_id = groups - 1
    layer = SimpleNamespace(in_shapes=[x.shape for x in xs], groups=groups, group_id=group_id)
    rec: dict = {}
    y = route_forward_int(layer, xs, None, 1.0, rec)
    top = max(s for _, s in parts)
    assert y.scale == top and y.q.dtype == np.int8
    expect = []
    for x in xs:
        cg = x.shape[0] // groups
        sl = x.q[group_id * cg:(group_id + 1) * cg]
        if x.scale == top:
            expect.append(sl.astype(np.int64))
            continue
        m, sh = quantize_multiplier(x.scale / top)
        expect.append(np.vectorize(lambda v: requantize_naive(int(v), int(m), int(sh)))(sl).astype(np.int64))
    np.testing.assert_array_equal(y.q.astype(np.int64), np.concatenate(expect, axis=0))
    assert rec.get("saturated", 0) == 0           # a smaller scale never saturates at the larger one


def naive_shortcut(a: QTensor, b: QTensor, alpha, beta, out_scale, act) -> np.ndarray:
    """Fractions: a*Ma + b*Mb on darknet's overlap (strided sampling, min channels), act, one rounding."""
    fa = mult_fraction(*quantize_multiplier(a.scale * alpha / out_scale))
    fb = mult_fraction(*quantize_multiplier(b.scale * beta / out_scale))
    f01 = mult_fraction(*quantize_multiplier(0.1))
    ca, ha, wa = a.shape
    cb, hb, wb = b.shape
    st_ = max(1, wb // wa)
    sample = max(1, wa // wb)
    out = np.zeros(a.shape, np.int64)
    saturated = 0
    for c in range(ca):
        for i in range(ha):
            for j in range(wa):
                v = int(a.q[c, i, j]) * fa
                if c < cb and i % sample == 0 and j % sample == 0:
                    bi, bj = (i // sample) * st_, (j // sample) * st_
                    if bi < hb and bj < wb:
                        v += int(b.q[c, bi, bj]) * fb
                if act == "leaky" and v < 0:
                    v *= f01
                elif act == "relu" and v < 0:
                    v = Fraction(0)
                r = round_half_even(v)
                saturated += abs(r) > QMAX
                out[c, i, j] = sat(r)
    return out, saturated


@FAST
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 6), st.sampled_from([(1, 1), (1, 2), (2, 1), (1, 3)]),
       scales, scales, scales, st.sampled_from([(1.0, 1.0), (0.5, 2.0)]), st.sampled_from(["linear", "leaky", "relu"]),
       st.integers(0, 2 ** 32 - 1))
def test_shortcut_int_equals_fraction_reference_incl_unequal_shapes(ca, cb, hw, ratio, sa, sb, so, ab, act, seed):
    rng = np.random.default_rng(seed)
    ha = hw * ratio[1]                   # a (previous layer) may be larger or smaller than b (from)
    hb = hw * ratio[0]
    a = QTensor(rng.integers(-127, 128, (ca, ha, ha)).astype(np.int8), sa)
    b = QTensor(rng.integers(-127, 128, (cb, hb, hb)).astype(np.int8), sb)
    layer = SimpleNamespace(alpha=ab[0], beta=ab[1], activation=act)
    rec: dict = {}
    y = shortcut_forward_int(layer, [a, b], None, so, rec)
    ref, saturated = naive_shortcut(a, b, ab[0], ab[1], so, act)
    assert y.scale == so and y.q.shape == a.shape
    np.testing.assert_array_equal(y.q.astype(np.int64), ref)
    assert rec["saturated"] == saturated


@pytest.mark.parametrize("act", ["linear", "leaky", "relu"])
@pytest.mark.parametrize("ca, cb, ha, hb", [(5, 3, 4, 4), (3, 6, 6, 3), (4, 4, 3, 6)])
def test_shortcut_int_in_channel_blocks_equals_fraction_reference(monkeypatch, act, ca, cb, ha, hb):
    """Blocks of one or two channels (several threads, the added tensor ending inside a block)."""
    import engine.quant.int_layers as il
    monkeypatch.setattr(il, "SHORTCUT_BLOCK", 2 * ha * ha)        # 2 channels per block
    rng = np.random.default_rng(ca * 100 + hb)
    a = QTensor(rng.integers(-127, 128, (ca, ha, ha)).astype(np.int8), 0.03)
    b = QTensor(rng.integers(-127, 128, (cb, hb, hb)).astype(np.int8), 0.05)
    rec: dict = {}
    y = shortcut_forward_int(SimpleNamespace(alpha=1.0, beta=1.0, activation=act), [a, b], None, 0.04, rec)
    ref, saturated = naive_shortcut(a, b, 1.0, 1.0, 0.04, act)
    np.testing.assert_array_equal(y.q.astype(np.int64), ref)
    assert rec["saturated"] == saturated > 0


@FAST
@given(st.integers(1, 4), st.integers(1, 12), st.integers(1, 12), st.sampled_from([(2, 2), (2, 1), (3, 1), (3, 2), (5, 1)]),
       st.sampled_from([None, 0, 1, 2]), st.integers(0, 2 ** 32 - 1))
def test_maxpool_int_equals_naive_loop(c, h, w, ks, pad, seed):
    k, s = ks
    p = k - 1 if pad is None else pad
    assume(maxpool_out_size(h, k, s, p) >= 1 and maxpool_out_size(w, k, s, p) >= 1)
    assume(p // 2 < k and (h + p - k) >= -(p // 2))     # every window touches the image
    x = QTensor(np.random.default_rng(seed).integers(-127, 128, (c, h, w)).astype(np.int8), 0.25)
    y = maxpool_forward_int(SimpleNamespace(size=k, stride=s, padding=p), [x], None, 1.0, {})
    ref = maxpool_naive(x.q.astype(np.float64), k, s, p)
    assert y.scale == 0.25 and y.q.dtype == np.int8
    np.testing.assert_array_equal(y.q.astype(np.float64), ref)


def upsample_naive(x: np.ndarray, s: int) -> np.ndarray:
    c, h, w = x.shape
    y = np.empty((c, h * s, w * s), x.dtype)
    for k in range(c):
        for j in range(h * s):
            for i in range(w * s):
                y[k, j, i] = x[k, j // s, i // s]
    return y


@FAST
@given(st.integers(1, 5), st.integers(1, 7), st.integers(1, 7), st.integers(1, 3), st.sampled_from([1.0, 0.5]),
       st.integers(0, 2 ** 32 - 1))
def test_upsample_int_equals_naive_loop_and_keeps_the_grid(c, h, w, s, scale, seed):
    x = QTensor(np.random.default_rng(seed).integers(-127, 128, (c, h, w)).astype(np.int8), 0.125)
    y = upsample_forward_int(SimpleNamespace(stride=s, scale=scale), [x], None, 1.0, {})
    np.testing.assert_array_equal(y.q, upsample_naive(x.q, s))
    assert y.q.dtype == np.int8 and y.scale == 0.125 * scale       # [upsample] scale= is a change of grid


@FAST
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.sampled_from([1, 2, 3]), st.integers(0, 2 ** 32 - 1))
def test_reorg_int_equals_darknet_loops(groups, hb, wb, s, seed):
    """[reorg] (pj mapping) against the transcribed C loop; [reorg3d] against the space-to-depth formula."""
    from helpers import reorg_cpu
    c, h, w = groups * s * s, hb * s, wb * s
    x = QTensor(np.random.default_rng(seed).integers(-127, 128, (c, h, w)).astype(np.int8), 0.5)
    y = reorg_forward_int(SimpleNamespace(stride=s), [x], None, 1.0, {})
    np.testing.assert_array_equal(y.q, reorg_cpu(x.q, s))
    z = reorg3d_forward_int(SimpleNamespace(stride=s), [x], None, 1.0, {})
    for oy in range(s):                            # out[(oy*s + ox)*C + c, j, i] = in[c, j*s + oy, i*s + ox]
        for ox in range(s):
            np.testing.assert_array_equal(z.q[(oy * s + ox) * c:(oy * s + ox + 1) * c], x.q[:, oy::s, ox::s])
    assert y.scale == z.scale == 0.5 and y.q.dtype == z.q.dtype == np.int8


# --------------------------------------------------------------------------- histograms
chunks = st.lists(arrays(np.float32, st.integers(0, 200),
                         elements=st.floats(-(2.0 ** 12), 2.0 ** 12, width=32, allow_subnormal=False)),
                  min_size=1, max_size=6)


@FAST
@given(chunks, st.randoms(use_true_random=False))
def test_histogram_merge_equals_one_histogram_of_all_data_in_any_order(parts, rnd):
    one = AbsHistogram()
    one.observe(np.concatenate(parts))
    singles = []
    for p in parts:
        h = AbsHistogram()
        h.observe(p)
        singles.append(h)
    rnd.shuffle(singles)
    merged = AbsHistogram()
    for h in singles:
        merged = merged.merge(h) if rnd.random() < 0.5 else h.merge(merged)
    # also incremental observation of every chunk into one histogram
    inc = AbsHistogram()
    for p in parts:
        inc.observe(p)
    for h in (merged, inc):
        assert h.hi == one.hi and h.total == one.total and h.amax == one.amax
        np.testing.assert_array_equal(h.counts, one.counts)
        assert (h.lo_signed, h.hi_signed) == (one.lo_signed, one.hi_signed) or one.total == 0
    assert int(one.counts.sum()) == one.total == sum(p.size for p in parts)
    if one.total and one.amax > 0:
        # every value is in the bin that contains it
        a = np.abs(np.concatenate(parts).astype(np.float64))
        idx = np.floor(a / one.bin_width).astype(np.int64)
        np.testing.assert_array_equal(np.bincount(idx, minlength=one.nbins), one.counts)


def test_histogram_tiny_and_zero_values_are_counted():
    h = AbsHistogram()
    h.observe(np.array([0.0, 0.0], np.float32))
    h.observe(np.array([1e-30, -3e-31, 0.0], np.float32))
    assert h.total == 5 and int(h.counts.sum()) == 5 and h.counts[0] == 3
    assert h.hi > 1e-30
    # ranges below 2**-116: nbins / hi is beyond float32 (this used to crash with negative bins)
    h = AbsHistogram()
    h.observe(np.array([1e-38, 0.0, -3e-39, 1e-44], np.float32))
    assert int(h.counts.sum()) == 4 and h.counts[0] == 2 and h.hi == 2.0 ** -126
    h.observe(np.array([5.0], np.float32))                      # grows by 129 doublings, exactly
    assert int(h.counts.sum()) == 5 and h.counts[0] == 4


def test_histogram_float64_values_just_below_the_range_are_not_lost():
    h = AbsHistogram()
    h.observe(np.array([0.99999999, 0.5, -0.999999999]))     # float32(0.99999999) == 1.0 == hi
    assert h.hi == 1.0 and int(h.counts.sum()) == 3 and h.counts[-1] == 2


# --------------------------------------------------------------------------- calibrators
def calibration_histograms() -> list[AbsHistogram]:
    rng = np.random.default_rng(5)
    cases = [rng.standard_normal(60_000), np.concatenate([rng.random(10_000), [100.0]]),
             rng.exponential(1.0, 40_000) * (rng.random(40_000) > 0.5),      # relu-like: half zeros
             np.round(rng.random(30_000) * 255) / 255,                       # an 8-bit image: sparse bins
             rng.standard_cauchy(20_000), rng.integers(0, 500, 5000).astype(float)]
    return [hist_of(c.astype(np.float32)) for c in cases]


def test_kl_vectorised_search_picks_the_reference_loops_threshold():
    from engine.calib.kl import LEVELS, kl_best, kl_divergence
    for h in calibration_histograms():
        used = h.used_bins
        counts, cands = h.counts[:used], np.arange(LEVELS, used + 1)
        ref = int(cands[int(np.argmin([kl_divergence(counts, int(i)) for i in cands]))])
        assert kl_best(counts, cands) == ref
        for stride in (3, 16):
            c2 = cands[::stride]
            assert kl_best(counts, c2) == int(c2[int(np.argmin([kl_divergence(counts, int(i)) for i in c2]))])


def _mxnet_smooth(p: np.ndarray, eps: float = 1e-4) -> np.ndarray | None:
    """MXNet's `_smooth_distribution` (contrib/quantization.py), on a count histogram; None where it raises."""
    zeros, nonzeros = (p == 0).astype(np.float64), (p != 0).astype(np.float64)
    n_zeros, n_nonzeros = zeros.sum(), p.size - zeros.sum()
    if not n_nonzeros:
        return None
    eps1 = eps * n_zeros / n_nonzeros
    if eps1 >= 1.0:
        return None
    out = p.astype(np.float64) + eps * zeros - eps1 * nonzeros
    return None if (out <= 0).any() else out


def test_kl_divergence_smooths_the_count_histograms_as_mxnet():
    # the independent reference: P and Q built as the module documents, smoothed as MXNet does (on counts),
    # and scipy's entropy (which normalises). Smoothing the normalised distributions instead took 1e-4 of the
    # mass from every non-empty bin, so a sparse tail made its candidates infeasible and KL clipped low.
    from scipy.stats import entropy
    from engine.calib.kl import LEVELS, kl_best, kl_divergence
    for h in calibration_histograms():
        used = h.used_bins
        counts, cands = h.counts[:used], np.arange(LEVELS, used + 1)
        ref = []
        for i in cands:
            p = counts[:i].astype(np.float64)
            p[-1] += counts[i:].sum()
            bounds = np.linspace(0, i, LEVELS + 1).astype(np.int64)
            q = np.zeros(i)
            for a, b in zip(bounds[:-1], bounds[1:]):
                nz = counts[a:b] > 0
                if nz.any():
                    q[a:b][nz] = counts[a:b].sum() / nz.sum()
            ps, qs = _mxnet_smooth(p), _mxnet_smooth(q)
            ref.append(np.inf if ps is None or qs is None else entropy(ps, qs))
        ref = np.array(ref)
        ours = np.array([kl_divergence(counts, int(i)) for i in cands])
        assert np.isfinite(ref).all()               # counts smoothing never runs out of mass on these
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)
        assert kl_best(counts, cands) == int(cands[int(np.argmin(ref))])


def test_y2l_vectorised_entropy_search_equals_the_loop():
    from engine.calib.yolo2_light import rebin_to_y2l_grid, y2l_entropy_threshold, y2l_entropy_threshold_naive
    for h in calibration_histograms()[::2] + [hist_of(np.random.default_rng(6).exponential(4.0, 20_000))]:
        hist = rebin_to_y2l_grid(h)
        assert y2l_entropy_threshold(hist) == y2l_entropy_threshold_naive(hist)


def hist_of(*xs: np.ndarray) -> AbsHistogram:
    h = AbsHistogram()
    for x in xs:
        h.observe(np.asarray(x, np.float32))
    return h


def test_kl_clips_one_outlier_among_uniform_values():
    x = np.random.default_rng(0).random(100_000).astype(np.float32)
    h = hist_of(x, [100.0])
    t = make("kl").threshold(h)
    # the outlier at 100 is clipped and the bulk kept; the floor is 128 of the 2048 bins of [0, 128)
    # (TensorRT's rule has the same floor: 128 bins of its [0, amax] histogram); 100 sits on a bin edge, and
    # since its own bin is searched too (it was dropped) the flat KL of the candidates above the floor ends at 8.5
    assert 1.0 <= t <= 100 / 8, t
    assert make("minmax").threshold(h) == pytest.approx(100.0)


def test_kl_clips_at_most_clip_max_of_the_values_of_a_dense_tail():
    """A long dense tail (leaky outputs of an early conv): TensorRT's rule clips deep into it (0.15% of conv 2's
    values on yolov3-tiny); the default keeps every candidate that clips more than 1e-4 of the values out of
    the search, and chooses among the rest as the plain rule does (the least KL, checked by a loop here)."""
    from engine.calib.kl import CLIP_MAX, LEVELS, kl_divergence
    x = np.random.default_rng(1).pareto(3.0, 400_000).astype(np.float32)      # a power-law tail
    h = hist_of(x)
    plain, ours = make("kl", clip_max=1).threshold(h), make("kl").threshold(h)
    counts = h.counts[:h.used_bins]

    def clipped(t: float) -> float:
        return float(x[x > t].size) / x.size

    assert clipped(plain) > 5 * CLIP_MAX                               # the plain rule clips the tail hard
    assert clipped(ours) <= CLIP_MAX * (1 + 1e-9) and ours > 2 * plain
    allowed = [i for i in range(LEVELS, counts.size + 1) if counts[i:].sum() <= CLIP_MAX * counts.sum()]
    best = min(allowed, key=lambda i: (kl_divergence(counts, i), i))
    assert ours == pytest.approx(min(h.amax, best * h.bin_width), rel=1e-12)
    assert make("kl", clip_max=1).settings == {"clip_max": 1.0} and make("kl").settings == {}
    with pytest.raises(ArgumentError, match=r"kl clip_max=-0.1: expected a number in \[0, 1\]"):
        make("kl", clip_max=-0.1)


def test_percentile_90_of_arange_100_is_about_89():
    t = make("percentile", percentile=90).threshold(hist_of(np.arange(100)))
    assert abs(t - 89) < 0.5, t
    assert make("percentile", percentile=100).threshold(hist_of(np.arange(100))) == 99.0


def test_minmax_is_the_exact_max_and_mse_sits_between_bulk_and_outlier():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, 50_000).astype(np.float32)
    h = hist_of(x, [60.0])
    assert make("minmax").threshold(h) == 60.0
    t = make("mse").threshold(h)
    # between the body and the outlier: one value at 60 sigma clipped to T costs (60 - T)^2 / 50,001, against
    # 50,000 values' rounding (T / 127)^2 / 12, so T ends far above the body (47.7), still clipping it. (Its bin
    # sits on an edge and was left out of the search, which then saw the body alone: T was 4.)
    assert 2.0 < t < 60.0, t
    assert make("mse").threshold(hist_of(x, [60.0] * 500)) == 60.0       # 1% of the values out there: kept
    u = hist_of(rng.uniform(-1, 1, 50_000).astype(np.float32))
    assert 0.9 < make("mse").threshold(u) <= 1.0     # uniform data: nearly no clipping pays off
    assert make("minmax").scale(u) == pytest.approx(u.amax / 127)


@FAST
@given(st.floats(1e-3, 1e3), st.integers(0, 2 ** 32 - 1), st.sampled_from(["mse", "window"]))
def test_log2_scales_are_powers_of_two(spread, seed, rule):
    x = (np.random.default_rng(seed).standard_normal(2000) * spread).astype(np.float32)
    s = make("log2", rule=rule).scale(hist_of(x))
    mant, _ = math.frexp(s)
    assert mant == 0.5, s
    assert s * 127 <= float(np.abs(x).max()) * 2 + 1e-12 or rule == "mse"


def test_every_registered_method_gives_a_positive_finite_scale():
    h = hist_of(np.random.default_rng(2).standard_normal(5000).astype(np.float32) * 3)
    for name in ("log2", "kl", "minmax", "percentile", "mse", "yolo2_light"):
        s = make(name).scale(h)
        assert np.isfinite(s) and s > 0, name
        # log2 rounds the threshold up to 127 * 2**k, which may pass amax (by less than 2x)
        assert make(name).threshold(h) <= h.amax * (2 if name == "log2" else 1) + 1e-9, name


def test_threshold_memo_never_returns_a_stale_answer():
    hs = calibration_histograms()[:3]
    for name in ("kl", "yolo2_light"):
        cal = make(name)
        fresh = [make(name).threshold(h) for h in hs]
        assert [cal.threshold(h) for h in hs + hs[::-1]] == fresh + fresh[::-1]
        h = hs[0].copy()
        before = cal.threshold(h)
        h.observe(np.full(200_000, 3 * h.amax, np.float32))           # same object, new content
        assert cal.threshold(h) == make(name).threshold(h) != before


@pytest.mark.parametrize("n, c, hw, k, s, p", [(40, 8, 5, 3, 1, 1), (64, 3, 9, 1, 1, 0), (33, 5, 7, 3, 2, 1)])
def test_conv_int_single_band_split_by_filters_equals_naive(n, c, hw, k, s, p):
    rng = np.random.default_rng(n)
    x = rng.integers(-127, 128, (c, hw, hw)).astype(np.int8)
    wq = rng.integers(-127, 128, (n, c, k, k)).astype(np.int8)
    b = rng.integers(-(2 ** 20), 2 ** 20, n).astype(np.int32)
    got = conv_int(x, np.ascontiguousarray(wq.reshape(n, -1), dtype=np.float32), b, k, s, p)
    np.testing.assert_array_equal(got.astype(np.int64), conv_int_naive(x, wq, b, s, p))


@pytest.mark.parametrize("n_threads", [1, 2])
def test_big_quantize_in_blocks_equals_the_elementwise_rule(n_threads):
    """A tensor past 4 blocks is quantized block by block on the kernel threads: the int8 values and
    the saturation count are those of the one-pass rule (ties to even, +-127), on any thread count."""
    from engine.kernels import threads
    from engine.quant import qtensor
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((17, 131, 137)) * 40).astype(np.float32)       # not a multiple of the block
    x.flat[::97] = np.float32(0.5) * rng.integers(-400, 400, x.flat[::97].size)   # ties and saturations
    assert x.size >= 4 * qtensor.QUANTIZE_BLOCK
    with threads.blas_limit(n_threads):
        q, sat = qtensor.quantize(x, 0.5)
    v = x.astype(np.float64) / np.float64(np.float32(0.5))
    want = np.clip(np.rint(v), -127, 127).astype(np.int8)
    np.testing.assert_array_equal(q, want)
    assert sat == int(np.count_nonzero(np.abs(np.rint(v)) > 127)) > 0
