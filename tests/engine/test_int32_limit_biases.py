"""Accumulators whose bias sits at the int32 limit: the sum w*x + b must not wrap around.

`quantize_bias` saturates a bias to +-(2**31 - 1) when its filter's weight scale is tiny (a filter that
batch norm nearly switched off, gamma ~ 0, keeps its bias while its int8 weights are full-scale noise).
The sums w*x then carry the accumulator past int32. The fused epilogues (`requant32.add_bias`) and the
naive reference (`conv_int_naive`, int64) add the bias exactly; `conv_int` (grouped convs, activations
that are not folded: mish, logistic, swish, ...) and the [connected] paths added it in int32, which wrapped
around: a sum just below -2**31 came out near +2**31, and the output took the opposite sign."""
from __future__ import annotations

from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest

from engine.quant.int_layers import (conv_forward_hybrid, conv_forward_int, connected_forward_hybrid,
                                     connected_forward_int, requantize_activation)
from engine.quant.intops import conv_int, conv_int_naive
from engine.quant.layerquant import LayerQuant
from engine.quant.qtensor import QMAX, QTensor, quantize_multiplier

LIMIT = 2 ** 31 - 1
IN_SCALE, OUT_SCALE = 0.05, 0.01
W_SCALE = np.array([1e-9, 2e-3, 1e-9, 3e-3])     # filters 0 and 2 nearly switched off by batch norm


def _case(groups: int, c: int = 4):
    """x >= 0 and weights of one sign per filter: filter 0 sums to about -3e5 under a bias of -LIMIT,
    filter 2 to about +3e5 over +LIMIT (both past int32); filters 1 and 3 are ordinary."""
    rng = np.random.default_rng(groups)
    x_q = rng.integers(60, 128, (c, 6, 7)).astype(np.int8)
    w_q = rng.integers(100, 128, (4, c // groups, 3, 3)).astype(np.int8)
    w_q[0] *= -1
    w_q[1] = rng.integers(-127, 128, w_q[1].shape)
    b_q = np.array([-LIMIT, 1000, LIMIT, -2000], np.int32)
    return x_q, w_q, b_q


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_int_adds_a_bias_at_the_int32_limit_exactly(groups):
    x_q, w_q, b_q = _case(groups)
    got = conv_int(x_q, w_q.reshape(4, -1).astype(np.float32), b_q, 3, 1, 1, groups)
    want = conv_int_naive(x_q, w_q, b_q, 1, 1, groups)
    assert want[0].max() < -(2 ** 31) and want[2].min() > 2 ** 31 - 1       # the case really leaves int32
    np.testing.assert_array_equal(got.astype(np.int64), want)


def _rule(acc: int, f: float) -> int:
    """The requantization rule in exact fractions: sat8(round half to even(acc * fixed(f)))."""
    m, sh = (int(a) for a in quantize_multiplier(f))
    v = Fraction(acc * m, 1 << sh)
    q, r = divmod(v.numerator, v.denominator)
    if 2 * r > v.denominator or (2 * r == v.denominator and q % 2):
        q += 1
    return max(-QMAX, min(QMAX, q))


@pytest.mark.parametrize("groups,activation", [(2, "leaky"), (1, "logistic"), (2, "linear")])
def test_int_conv_through_conv_int_keeps_the_sign_of_a_sum_past_int32(groups, activation):
    x_q, w_q, b_q = _case(groups)
    lq = LayerQuant(w_q=w_q, w_scale=W_SCALE, b_q=b_q, in_scale=IN_SCALE, scheme="minmax")
    layer = SimpleNamespace(groups=groups, activation=activation, size=3, stride=1, padding=1,
                            out_shape=(4, 6, 7))
    y = conv_forward_int(layer, [QTensor(x_q, IN_SCALE)], lq, OUT_SCALE, {})
    acc = conv_int_naive(x_q, w_q, b_q, 1, 1, groups)
    want = requantize_activation(acc, IN_SCALE * W_SCALE, OUT_SCALE, activation, {})
    np.testing.assert_array_equal(y.q, want)
    mid = 50 if activation == "logistic" else 0                            # sigmoid(0) = 0.5 = 50 * OUT_SCALE
    assert (y.q[0] < mid).all() and (y.q[2] > mid).all()                   # the sums' signs, not wrapped ones
    if activation == "linear":
        f0 = IN_SCALE * W_SCALE[0] / OUT_SCALE
        assert y.q[0, 3, 3] == _rule(int(acc[0, 3, 3]), f0)
    # HYBRID: the same exact sums, dequantized
    h = conv_forward_hybrid(layer, (x_q * np.float32(IN_SCALE)).astype(np.float32), lq, {})
    assert (h[0] < 0).all() if activation != "logistic" else (h[0] < 0.5).all()
    assert (h[2] > 0).all() if activation != "logistic" else (h[2] > 0.5).all()


def test_connected_keeps_the_sign_of_a_sum_past_int32():
    rng = np.random.default_rng(7)
    x_q = rng.integers(60, 128, (3, 2, 5)).astype(np.int8)
    w_q = rng.integers(100, 128, (4, 30)).astype(np.int8)
    w_q[0] *= -1
    b_q = np.array([-LIMIT, 1000, LIMIT, -2000], np.int32)
    lq = LayerQuant(w_q=w_q, w_scale=W_SCALE, b_q=b_q, in_scale=IN_SCALE, scheme="minmax")
    layer = SimpleNamespace(activation="linear", out_shape=(4, 1, 1))
    acc = [sum(int(a) * int(b) for a, b in zip(w_q[f], x_q.ravel())) + int(b_q[f]) for f in range(4)]
    assert acc[0] < -(2 ** 31) and acc[2] > 2 ** 31 - 1
    rec: dict = {}
    y = connected_forward_int(layer, [QTensor(x_q, IN_SCALE)], lq, OUT_SCALE, rec)
    assert y.q.reshape(-1).tolist() == [_rule(a, IN_SCALE * W_SCALE[f] / OUT_SCALE) for f, a in enumerate(acc)]
    assert (rec["acc_min"], rec["acc_max"]) == (min(acc), max(acc))
    h = connected_forward_hybrid(layer, (x_q * np.float32(IN_SCALE)).astype(np.float32), lq, {})
    np.testing.assert_allclose(h.reshape(-1), [a * IN_SCALE * W_SCALE[f] for f, a in enumerate(acc)], rtol=1e-6)
