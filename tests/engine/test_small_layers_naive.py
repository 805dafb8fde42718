"""The small layers' fast paths against naive loops: [avgpool], [softmax], [crop] and [connected] in FLOAT,
their int8 paths (`int_layers.avgpool_forward_int`, `crop_forward_int`, `connected_forward_int` /
`connected_forward_hybrid`) and `intops.gemm_int` (the connected layers' exact product), with the integer
rules written out in Python integers and Fractions (round half to even, saturation at +-127)."""
from __future__ import annotations

import math
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest

import engine
from engine.quant.int_layers import (avgpool_forward_int, connected_forward_hybrid, connected_forward_int,
                                     crop_forward_int)
from engine.quant.intops import K_CHUNK, gemm_int
from engine.quant.layerquant import LayerQuant
from engine.quant.qtensor import QMAX, QTensor, quantize_multiplier


def round_half_even(v: Fraction) -> int:
    q, r = divmod(v.numerator, v.denominator)
    if 2 * r > v.denominator or (2 * r == v.denominator and q % 2):
        q += 1
    return q


def sat(v: int) -> int:
    return max(-QMAX, min(QMAX, v))


def fixed(real: float) -> Fraction:
    """The 15-bit fixed-point multiplier of the integer rules, as an exact fraction."""
    m, sh = (int(a) for a in quantize_multiplier(real))
    return Fraction(m, 1 << sh) if sh >= 0 else Fraction(m << -sh)


def model_of(tmp_path, body: str, c: int = 3, h: int = 7, w: int = 9) -> engine.Model:
    path = tmp_path / "small.cfg"
    path.write_text(f"[net]\nwidth={w}\nheight={h}\nchannels={c}\n\n" + body)
    return engine.load(path, random_weights=5)


# --------------------------------------------------------------------------- FLOAT
def test_avgpool_and_softmax_equal_loops(tmp_path):
    model = model_of(tmp_path, "[convolutional]\nfilters=6\nsize=3\nstride=2\npad=1\nactivation=leaky\n\n"
                               "[avgpool]\n\n[softmax]\ngroups=2\ntemperature=2.5\n")
    x = np.random.default_rng(0).standard_normal(model.input_shape).astype(np.float32)
    conv, avg, soft = model.forward(x)
    c, h, w = conv.shape
    ref = np.array([sum(float(conv[k, i, j]) for i in range(h) for j in range(w)) / (h * w) for k in range(c)])
    np.testing.assert_allclose(avg.reshape(-1), ref, rtol=1e-6, atol=1e-7)
    flat = avg.reshape(-1).astype(np.float64)
    want = []
    for g in range(2):                                   # softmax of x / T over each of the 2 groups
        z = [v / 2.5 for v in flat[g * 3:(g + 1) * 3]]
        e = [math.exp(v - max(z)) for v in z]
        want += [v / sum(e) for v in e]
    np.testing.assert_allclose(soft.reshape(-1), want, rtol=1e-6)


@pytest.mark.parametrize("noadjust", [0, 1])
def test_crop_equals_the_centred_window_loop(tmp_path, noadjust):
    model = model_of(tmp_path, f"[crop]\ncrop_height=4\ncrop_width=5\nnoadjust={noadjust}\n", h=9, w=8)
    x = np.random.default_rng(1).random(model.input_shape, dtype=np.float32)
    y = model.forward(x)[0]
    assert y.shape == (3, 4, 5)
    for k in range(3):
        for i in range(4):
            for j in range(5):
                v = x[k, (9 - 4) // 2 + i, (8 - 5) // 2 + j]
                assert y[k, i, j] == (v if noadjust else np.float32(2) * v - np.float32(1))


def test_connected_equals_the_dot_product_loop(tmp_path):
    model = model_of(tmp_path, "[connected]\noutput=11\nactivation=leaky\n", c=4, h=3, w=5)
    x = np.random.default_rng(2).standard_normal(model.input_shape).astype(np.float32)
    y = model.forward(x)[0].reshape(-1)
    w, b = model.layers[0].fused(model.params[0])
    flat = x.reshape(-1)                                 # Darknet's (c, h, w) order
    for f in range(11):
        v = sum(float(w[f, i]) * float(flat[i]) for i in range(flat.size)) + float(b[f])
        assert y[f] == pytest.approx(v if v > 0 else 0.1 * v, rel=1e-5, abs=1e-6)


# --------------------------------------------------------------------------- int8
@pytest.mark.parametrize("c,h,w,scale,out_scale", [(5, 3, 4, 0.05, 0.02), (3, 13, 13, 0.1, 0.003), (2, 1, 1, 1.0, 2.0)])
def test_avgpool_int_is_the_rounded_fixed_point_mean(c, h, w, scale, out_scale):
    q = np.random.default_rng(c * h).integers(-127, 128, (c, h, w)).astype(np.int8)
    rec: dict = {}
    y = avgpool_forward_int(None, [QTensor(q, scale)], None, out_scale, rec)
    mult = fixed(scale / (h * w * out_scale))
    want = [round_half_even(sum(int(v) for v in q[k].ravel()) * mult) for k in range(c)]
    assert y.scale == out_scale and y.q.shape == (c, 1, 1) and y.q.dtype == np.int8
    assert y.q.reshape(-1).tolist() == [sat(v) for v in want]
    assert rec["saturated"] == sum(abs(v) > QMAX for v in want)


@pytest.mark.parametrize("noadjust", [0, 1])
def test_crop_int_is_the_integer_rule_of_2x_minus_1(noadjust):
    """q_out = sat(round(q * 2 s / s_out) - round(1 / s_out)): the offset is one integer constant."""
    rng = np.random.default_rng(3)
    q = rng.integers(-127, 128, (3, 9, 8)).astype(np.int8)
    scale, out_scale = 0.011, 0.017
    layer = SimpleNamespace(crop_height=4, crop_width=5, noadjust=noadjust)
    rec: dict = {}
    y = crop_forward_int(layer, [QTensor(q, scale)], None, out_scale, rec)
    win = q[:, 2:6, 1:6]
    if noadjust:
        assert y.scale == scale and np.array_equal(y.q, win)
        return
    m, off = fixed(2 * scale / out_scale), round_half_even(Fraction(1.0 / out_scale))
    want = np.array([round_half_even(int(v) * m) - off for v in win.ravel()]).reshape(win.shape)
    assert y.scale == out_scale and np.array_equal(y.q, np.clip(want, -QMAX, QMAX))
    assert rec["saturated"] == int(np.count_nonzero(np.abs(want) > QMAX)) > 0


@pytest.mark.parametrize("k,n", [(7, 3), (K_CHUNK, 4), (K_CHUNK + 1, 3), (3 * K_CHUNK + 17, 2)])
@pytest.mark.parametrize("xmax", [127, 255])
def test_gemm_int_equals_int64_sums(k, n, xmax):
    """Full-scale weights and inputs: past K_CHUNK (or 518 terms for |x| <= 255) the sums are split."""
    rng = np.random.default_rng(k + xmax)
    w = rng.choice([-127, 127], (n, k)).astype(np.float32)
    x = rng.choice([-xmax, xmax], (k, 5)).astype(np.float32)
    w[0] = 127
    x[:, 0] = xmax                                        # one column whose every partial sum grows
    want = w.astype(np.int64) @ x.astype(np.int64)
    got = gemm_int(w, x)
    assert got.dtype == np.int32 and np.array_equal(got, want)


@pytest.mark.parametrize("activation", ["linear", "leaky", "relu"])
def test_connected_int_and_hybrid_equal_integer_loops(activation):
    rng = np.random.default_rng(4)
    n, c, h, w = 9, 4, 3, 5
    w_q = rng.integers(-127, 128, (n, c * h * w)).astype(np.int8)
    w_scale = rng.uniform(0.001, 0.01, n)
    in_scale, out_scale = 0.05, 0.04
    b_q = rng.integers(-3000, 3000, n).astype(np.int32)
    lq = LayerQuant(w_q=w_q, w_scale=w_scale, b_q=b_q, in_scale=in_scale, scheme="minmax")
    layer = SimpleNamespace(activation=activation, out_shape=(n, 1, 1))
    x_q = rng.integers(-127, 128, (c, h, w)).astype(np.int8)
    acc = [sum(int(a) * int(b) for a, b in zip(w_q[f], x_q.ravel())) + int(b_q[f]) for f in range(n)]
    slope = {"linear": None, "leaky": 0.1, "relu": 0.0}[activation]
    want = []
    for f in range(n):
        pos = acc[f] * fixed(in_scale * w_scale[f] / out_scale)
        if slope is not None and acc[f] < 0:
            pos = acc[f] * fixed(in_scale * w_scale[f] * slope / out_scale) if slope else Fraction(0)
        want.append(sat(round_half_even(pos)))
    y = connected_forward_int(layer, [QTensor(x_q, in_scale)], lq, out_scale, {})
    assert y.q.shape == (n, 1, 1) and y.q.reshape(-1).tolist() == want
    # HYBRID: the float input quantized on in_scale, the same exact sums dequantized, then the activation
    hy = connected_forward_hybrid(layer, (x_q * np.float32(in_scale)).astype(np.float32), lq, {})
    real = [a * in_scale * w_scale[f] for f, a in enumerate(acc)]
    real = [v if v > 0 or slope is None else v * slope for v in real]
    np.testing.assert_allclose(hy.reshape(-1), real, rtol=1e-6, atol=1e-9)
