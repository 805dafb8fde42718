"""Profile `qwidgets_asym`: uint8 activations with zero points for every calibrator and the calibration rules.
Each integer layer against a naive scalar reference in Python integers (exact fractions), the grids against
the calibration statistics, and the gain on real photos against the symmetric profile."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

import engine
from engine.calib.collect import CalibrationStats, observe
from engine.quant.executor import Executor
from engine.quant.intops import conv_int_naive
from engine.quant.qmodel import quantize_model
from engine.quant.qtensor import quantize_multiplier
from helpers import IMAGES

CFG = """[net]
width=20
height=20
channels=3

[convolutional]
filters=8
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=6
size=3
stride=2
pad=1
activation=relu

[maxpool]
size=2
stride=2

[convolutional]
filters=10
size=1
stride=1
pad=0
activation=linear

[upsample]
stride=2

[route]
layers=-1,-4

[convolutional]
filters=7
size=3
stride=1
pad=1
activation=leaky
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "small.cfg"
    path.write_text(CFG)
    model = engine.load(path, random_weights=3)
    stats = CalibrationStats()
    rng = np.random.default_rng(0)
    for _ in range(3):
        observe(model, rng.random((3, 20, 20), dtype=np.float32), stats)
    return model, stats


def _round_half_even(fr: Fraction) -> int:
    return round(fr)                       # Python rounds a Fraction half to even


def _mult(real: float) -> Fraction:
    m, sh = quantize_multiplier(real)
    return Fraction(int(m)) / (Fraction(2) ** int(sh))


def _conv_naive(x, lq, layer, y_scale, y_zp):
    """int64 loops for sum w * (x - zp) + b, then the fixed-point multiplier (a second one for negative sums
    of a leaky conv, 0 for relu), exact rounding half to even, + zp, saturated to [0, 255]."""
    acc = conv_int_naive(x.q.astype(np.int64) - x.zero_point, lq.w_q, lq.b_q, layer.stride, layer.padding)
    out = np.empty(acc.shape, np.uint8)
    ws = np.broadcast_to(lq.w_scale, (acc.shape[0],))
    slope = {"leaky": 0.1, "relu": 0.0, "linear": None}[layer.activation]
    for c in range(acc.shape[0]):
        pos = _mult(x.scale * ws[c] / y_scale)
        neg = pos if slope is None else (Fraction(0) if slope == 0 else _mult(x.scale * ws[c] * slope / y_scale))
        for idx, a in np.ndenumerate(acc[c]):
            v = _round_half_even(int(a) * (pos if a >= 0 else neg)) + y_zp
            out[(c,) + idx] = min(255, max(0, v))
    return out


def test_qwidgets_asym_layers_equal_naive_integer_loops(small):
    model, stats = small
    qm = quantize_model(model, stats, "minmax", per_channel=True, profile="qwidgets_asym")
    x_in = np.random.default_rng(1).random((3, 20, 20), dtype=np.float32)
    values, _ = Executor(model, qm, "int").run(x_in)
    s, z = qm.scales["input"], qm.zero_points["input"]
    assert (s, z) == (pytest.approx(1 / 255), 0) or z == 0       # the image [0, 1] on its own grid
    q_in = np.array([min(255, max(0, _round_half_even(Fraction(float(np.float32(v) / np.float32(s)))) + z))
                     for v in x_in.ravel()], np.uint8).reshape(x_in.shape)
    inputs = {-1: type(values[0].q)(q_in, s, z)}
    inputs.update({i: v.q for i, v in enumerate(values)})
    kinds = set()
    for layer in model.layers:
        i, got = layer.index, values[layer.index].q
        assert got.q.dtype == np.uint8
        kinds.add(layer.kind)
        if layer.kind == "convolutional":
            assert (got.scale, got.zero_point) == (qm.scales[str(i)], qm.zero_points[str(i)])
            ref = _conv_naive(inputs[layer.inputs[0]], qm.layers[i], layer, qm.scales[str(i)], qm.zero_points[str(i)])
            assert np.array_equal(got.q, ref), f"layer {i}"
        elif layer.kind == "route":
            ys, yz = got.scale, got.zero_point
            parts = []
            for j in layer.inputs:
                src = inputs[j]
                if (src.scale, src.zero_point) == (ys, yz):
                    parts.append(src.q)
                    continue
                m = _mult(src.scale / ys)
                parts.append(np.array([min(255, max(0, _round_half_even((int(v) - src.zero_point) * m) + yz))
                                       for v in src.q.ravel()], np.uint8).reshape(src.q.shape))
            assert np.array_equal(got.q, np.concatenate(parts))
            assert any(inputs[j].scale != ys for j in layer.inputs)          # a real requantization
        elif layer.kind == "maxpool":
            src = inputs[layer.inputs[0]]
            assert np.array_equal(got.q, src.q.reshape(src.q.shape[0], src.q.shape[1] // 2, 2, -1, 2).max(axis=(2, 4)))
            assert (got.scale, got.zero_point) == (src.scale, src.zero_point)
        elif layer.kind == "upsample":
            assert np.array_equal(got.q, inputs[layer.inputs[0]].q.repeat(2, 1).repeat(2, 2))
    assert kinds == {"convolutional", "route", "maxpool", "upsample"}
    # zero points are used: the leaky conv's grid reaches below 0 only as far as its outputs do
    assert 0 < qm.zero_points["0"] < 128 and qm.zero_points["1"] == 0


def test_rules_choose_the_asymmetric_ranges(tiny, tiny_stats):
    from engine.calib import make
    from engine.calib.views import activation_scales
    qm = quantize_model(tiny, tiny_stats, "kl", per_channel=True, profile="qwidgets_asym")
    # KL's own rule (no floor): what the rules were measured against
    plain = quantize_model(tiny, tiny_stats, "kl", per_channel=True, profile="qwidgets_asym", rules=(), clip_max=1)
    _, thresholds, _ = activation_scales(tiny, tiny_stats, make("kl"))
    h0 = tiny_stats.hists["0"]
    # first_layer: layer 0's whole signed range, the image exactly k/255 (zero point 0)
    assert qm.zero_points["input"] == 0 and qm.scales["input"] == pytest.approx(1 / 255, rel=1e-6)
    lo0, hi0 = -qm.zero_points["0"] * qm.scales["0"], (255 - qm.zero_points["0"]) * qm.scales["0"]
    assert lo0 <= h0.lo_signed + qm.scales["0"] and hi0 >= h0.hi_signed - qm.scales["0"]
    # a deeper leaky conv: its top is the rules' (one-sided, shared with its maxpool) threshold
    for nid in ("4", "10"):
        hi = (255 - qm.zero_points[nid]) * qm.scales[nid]
        assert hi == pytest.approx(thresholds[nid], rel=0.01)
    assert qm.scales["0"] > 3 * plain.scales["0"]           # without the rules KL clips layer 0's |x| peak


def test_asymmetric_activations_agree_better_with_float_on_variants(tiny, tiny_stats):
    """On photometric variants of the photos (calibrated on the photos), uint8 with zero points beats int8
    symmetric in box precision and loses fewer FLOAT detections (42 variants: .912 / 8 lost -> .960 / 4)."""
    from engine.quant.scoring import Scorer
    from engine.quant.valset import variants
    scorer = Scorer(tiny, variants(IMAGES, kinds=("dark", "bright", "noise", "jpeg", "blur"), mosaics=0))
    sym = quantize_model(tiny, tiny_stats, "minmax", per_channel=True)
    asy = quantize_model(tiny, tiny_stats, "minmax", per_channel=True, profile="qwidgets_asym")
    a, b = scorer.score(sym, "int"), scorer.score(asy, "int")
    assert b.map50_95 > a.map50_95 + 0.02 and b.missed < a.missed, (a, b)


def test_log2_keeps_power_of_two_scales_with_zero_points(small):
    model, stats = small
    qm = quantize_model(model, stats, "log2", per_channel=True, profile="qwidgets_asym")
    for nid, s in qm.scales.items():
        assert np.log2(s) == np.round(np.log2(s)), nid
    assert any(z > 0 for z in qm.zero_points.values())          # leaky outputs keep their lower end
