"""Method comparison rows against an independent recomputation, and the fast INT epilogues against
naive integer loops.

`compare_batch` shares work (the FLOAT reference once per image, layer 0's local statistics taken from
the propagated INT run, int8 weights converted once, float32 in-place epilogues): its rows must equal,
value for value, a plain recomputation that shares nothing (every mode and every local layer run
from scratch with the executor's public run / run_layer, statistics by `error_stats`).
"""
from __future__ import annotations

import numpy as np
import pytest

from helpers import IMAGES

from engine.darknet.detect import detect_outputs
from engine.quant.executor import INT8, Executor, Value
from engine.quant.fitness import error_stats
from engine.quant.intops import conv_int_naive
from engine.quant.int_layers import FOLDED, conv_forward_int, conv_forward_hybrid
from engine.quant.layerquant import LayerQuant
from engine.quant.qmodel import quantize_model
from engine.quant.qtensor import quantize_multiplier, requantize_naive
from engine.scale.compare import compare_batch

METHODS = ("minmax", "kl")


def _sat(rec) -> int:
    return rec.stats.get("saturated", 0) + rec.stats.get("input_saturated", 0)


def plain_row(model, qm, pre, outs) -> dict:
    row: dict = {}
    for mode in ("hybrid", "int"):
        ex = Executor(model, qm, mode)
        values, records = ex.run(pre.x)
        prop = [error_stats(r, v.float(), v.q.q if v.q is not None else None, _sat(rec))
                for r, v, rec in zip(outs, values, records)]
        row[mode] = detect_outputs(model, [v.float() for v in values], pre)
        row[f"{mode}_sqnr"] = [s.sqnr_db for s in prop]
        if mode == "int":
            row["saturation"] = [s.saturation for s in prop]
            row["range_use"] = [s.range_use for s in prop]
            local = []
            xv = Value(f=pre.x)
            for i, layer in enumerate(model.layers):
                if ex.precision(i) != INT8:
                    local.append(np.nan)
                    continue
                v, rec = ex.run_layer(i, [xv if s < 0 else Value(f=outs[s]) for s in layer.inputs])
                local.append(error_stats(outs[i], v.float(), v.q.q if v.q is not None else None,
                                         _sat(rec)).sqnr_db)
            row["int_local_sqnr"] = local
    return row


def assert_matches_plain(row: dict, model, qms: dict, pre, outs) -> None:
    """Every method's part of a compare_batch row equals plain_row, value for value."""
    for method, qm in qms.items():
        want = plain_row(model, qm, pre, outs)
        assert set(row[method]) == set(want)
        for key, value in want.items():
            if key in ("hybrid", "int"):
                assert row[method][key] == value, (method, key)
            else:
                np.testing.assert_array_equal(np.array(row[method][key]), np.array(value), err_msg=f"{method} {key}")


@pytest.fixture(scope="module")
def qms(tiny, tiny_stats):
    return {m: quantize_model(tiny, tiny_stats, m, per_channel=m == "minmax") for m in METHODS}


def test_compare_rows_equal_a_plain_recomputation(tiny, qms):
    photos = sorted(IMAGES.glob("*.jpg"))[:2]
    got = compare_batch(tiny, tuple(qms.items()), "letterbox", "numpy", photos)
    for item, row in zip(photos, got):
        pre = tiny.preprocess(item)
        outs = tiny.forward(pre.x)
        assert row["float"] == detect_outputs(tiny, outs, pre)
        assert_matches_plain(row, tiny, qms, pre, outs)
        for method in qms:
            # layer 0 reads the image: its local statistics are the propagated ones, which are real numbers
            assert np.isfinite(row[method]["int_local_sqnr"][0])
            assert row[method]["int_local_sqnr"][0] == row[method]["int_sqnr"][0]


def _requant_naive(acc: np.ndarray, acc_scale: np.ndarray, out_scale: float, slope) -> tuple[np.ndarray, int]:
    """Python-integer requantization of int64 accumulators (n, H, W), activation folded as the profile
    defines it: the positive multiplier for acc >= 0, the slope's own multiplier below zero."""
    m, sh = quantize_multiplier(acc_scale / out_scale)
    if slope:
        mn, shn = quantize_multiplier(acc_scale * slope / out_scale)
    out = np.empty(acc.shape, np.int8)
    sat = 0
    for c in range(acc.shape[0]):
        for idx, a in np.ndenumerate(acc[c]):
            a = int(a)
            if a < 0 and slope == 0.0:
                q = requantize_naive(0, int(m[c]), int(sh[c]))
                unclipped = 0
            elif a < 0 and slope:
                q = requantize_naive(a, int(mn[c]), int(shn[c]))
                unclipped = requantize_naive_unclipped(a, int(mn[c]), int(shn[c]))
            else:
                q = requantize_naive(a, int(m[c]), int(sh[c]))
                unclipped = requantize_naive_unclipped(a, int(m[c]), int(sh[c]))
            sat += abs(unclipped) > 127
            out[(c,) + idx] = q
    return out, sat


def requantize_naive_unclipped(acc: int, m: int, shift: int) -> int:
    num, den = acc * m, 1 << shift
    q, r = divmod(num, den)
    if 2 * r > den or (2 * r == den and q % 2 == 1):
        q += 1
    return q


class _Conv:
    kind = "convolutional"
    groups = 1

    def __init__(self, n, c, h, w, size, stride, activation):
        self.size, self.stride, self.padding, self.activation = size, stride, size // 2, activation
        ho = (h + 2 * self.padding - size) // stride + 1
        wo = (w + 2 * self.padding - size) // stride + 1
        self.out_shape = (n, ho, wo)


@pytest.mark.parametrize("size,stride,h,w,activation,wide", [
    (3, 1, 37, 45, "leaky", False),     # a wide stride-1 map in several bands
    (3, 1, 9, 11, "relu", False),       # a small map: gathered columns
    (3, 2, 20, 17, "linear", False),    # strided
    (1, 1, 12, 16, "leaky", True),      # pointwise; huge biases: |acc + b| >= 2**24, the float64 branch
])
def test_fused_int_conv_equals_naive_integer_loops(size, stride, h, w, activation, wide):
    rng = np.random.default_rng(size * 100 + h)
    c, n = 7, 12
    x_q = rng.integers(-127, 128, (c, h, w)).astype(np.int8)
    w_q = rng.integers(-127, 128, (n, c, size, size)).astype(np.int8)
    b_q = rng.integers(-2000, 2000, n).astype(np.int32)
    if wide:
        b_q[::2] = rng.choice([-1, 1], b_q[::2].size) * (1 << 25)
    w_scale = rng.uniform(0.002, 0.01, n)
    x_scale, out_scale = 0.05, 0.9 if not wide else 500.0
    lq = LayerQuant(w_q, w_scale, b_q, x_scale, "per_channel")
    layer = _Conv(n, c, h, w, size, stride, activation)
    from engine.quant.qtensor import QTensor
    rec: dict = {}
    got = conv_forward_int(layer, [QTensor(x_q, x_scale)], lq, out_scale, rec)
    acc = conv_int_naive(x_q, w_q, b_q, stride, size // 2)
    slope = FOLDED[activation]
    want, sat = _requant_naive(acc, x_scale * w_scale, out_scale, slope)
    np.testing.assert_array_equal(got.q, want)
    assert rec["acc_min"] == int(acc.min()) and rec["acc_max"] == int(acc.max())
    assert rec["saturated"] == sat
    # HYBRID: the same exact accumulators times the accumulator scale, rounded once to float32
    x_f = (x_q.astype(np.float32) * np.float32(x_scale))
    hrec: dict = {}
    y = conv_forward_hybrid(layer, x_f, lq, hrec)
    from engine.layers.activations import activate
    want_h = activate((acc * (x_scale * w_scale).reshape(-1, 1, 1)).astype(np.float32), activation)
    np.testing.assert_array_equal(y, want_h)


def test_fused_int_conv_counts_saturation_like_the_naive_loop():
    rng = np.random.default_rng(5)
    c, n, h, w = 6, 5, 14, 40
    x_q = rng.integers(-127, 128, (c, h, w)).astype(np.int8)
    w_q = rng.integers(-127, 128, (n, c, 3, 3)).astype(np.int8)
    b_q = rng.integers(-500, 500, n).astype(np.int32)
    w_scale = rng.uniform(0.002, 0.01, n)
    lq = LayerQuant(w_q, w_scale, b_q, 0.05, "per_channel")
    from engine.quant.qtensor import QTensor
    layer = _Conv(n, c, h, w, 3, 1, "leaky")
    rec: dict = {}
    got = conv_forward_int(layer, [QTensor(x_q, 0.05)], lq, 0.02, rec)   # a small output scale: many clip
    acc = conv_int_naive(x_q, w_q, b_q, 1, 1)
    want, sat = _requant_naive(acc, 0.05 * w_scale, 0.02, 0.1)
    np.testing.assert_array_equal(got.q, want)
    assert sat > 100 and rec["saturated"] == sat


@pytest.mark.parametrize("activation", ["leaky", "linear", "relu"])
def test_fused_int_conv_filter_halves_with_saturation(activation):
    """A small map with 64 filters runs as one band split by filter halves: the second half's channel
    offsets must reach the multipliers of its own channels (saturated and float32-tie elements)."""
    rng = np.random.default_rng(11)
    c, n, h, w = 9, 64, 6, 7
    x_q = rng.integers(-127, 128, (c, h, w)).astype(np.int8)
    w_q = rng.integers(-127, 128, (n, c, 3, 3)).astype(np.int8)
    b_q = rng.integers(-500, 500, n).astype(np.int32)
    w_scale = np.geomspace(0.0005, 0.02, n)            # channel-dependent: a wrong offset shows
    lq = LayerQuant(w_q, w_scale, b_q, 0.05, "per_channel")
    from engine.quant.qtensor import QTensor
    layer = _Conv(n, c, h, w, 3, 1, activation)
    rec: dict = {}
    got = conv_forward_int(layer, [QTensor(x_q, 0.05)], lq, 0.3, rec)
    acc = conv_int_naive(x_q, w_q, b_q, 1, 1)
    want, sat = _requant_naive(acc, 0.05 * w_scale, 0.3, FOLDED[activation])
    np.testing.assert_array_equal(got.q, want)
    assert sat > 0 and rec["saturated"] == sat


@pytest.mark.parametrize("slope", [None, 0.1])
def test_requant_epilogue_float32_ties_are_recomputed_exactly(slope):
    """Accumulators whose float32 product lands exactly on a half-integer while the exact product does
    not (u * m = 201 * 2**23 + d, found by a divisor search): the epilogue must round them as the
    integer rule does, not as float32 alone would."""
    from engine.quant.int_layers import requant_epilogue
    from engine.quant.qtensor import multiplier_value
    cases = [(29176, 57791), (24595, 68555), (20373, 82762), (16810, 100304)]   # (m, u), shift 24
    m = np.array([c[0] for c in cases])
    sh = np.full(4, 24)
    f = multiplier_value(m, sh)
    rng = np.random.default_rng(2)
    acc = rng.integers(-120000, 120000, (4, 6, 8)).astype(np.int64)
    for k, (_, u) in enumerate(cases):
        acc[k, 0, :4] = [u, -u, u, u - 1]
        assert np.rint(np.float32(u) * np.float32(f[k])) != requantize_naive(u, int(m[k]), 24)
    f_neg = None
    if slope:
        mn, shn = quantize_multiplier(f * slope)
        f_neg = multiplier_value(mn, shn)
    y = np.empty(acc.shape, np.int8)
    epilogue, stats = requant_epilogue(y, np.zeros(4, np.int32), f, f_neg, slope)
    epilogue(0, 0, 6, acc.astype(np.float32), slice(0, 4))
    want = np.empty(acc.shape, np.int64)
    for (k, i, j), a in np.ndenumerate(acc):
        mm, ss = (int(m[k]), 24) if a >= 0 or not slope else (int(mn[k]), int(shn[k]))
        want[k, i, j] = requantize_naive(int(a), mm, ss)
    np.testing.assert_array_equal(y, want)
