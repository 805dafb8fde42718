"""Head bias correction (`--refine head`): the INT network's mean logit shift at the heads, weighted by the
FLOAT objectness / score, folded into the head convs' int32 biases.

References: the weighted shifts are recomputed here position by position in plain Python loops; the
lost detection it recovers is a real one (valset's `dark` variant of horses.jpg, FLOAT .263, INT .243
on uint8 zero-point grids, docs/quantization.md).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from engine.calib.floats import float_outputs
from engine.errors import ArgumentError
from engine.quant.executor import Executor, FloatView
from engine.quant.qmodel import quantize_model
from engine.quant.refine.headbias import head_bias_correction, head_convs, head_shifts
from helpers import IMAGES, dark_horse_case

PHOTOS = sorted(IMAGES.glob("*.jpg"))


def sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def naive_shifts(f, q, anchors, classes, slope=False):
    """Per anchor: objectness shift weighted by sigmoid(FLOAT obj); the head's class shift weighted by
    sigmoid(obj) * sigmoid(class), over every anchor, class and position; one value at a time. `slope`:
    weights = the squared derivative of the score sigmoid(obj) * sigmoid(class) in that logit (the best
    class for objectness)."""
    per = 5 + classes
    f = f.reshape(anchors, per, -1)
    q = q.reshape(anchors, per, -1)
    obj, cls_num, cls_den = [], 0.0, 0.0
    for a in range(anchors):
        num = den = 0.0
        for p in range(f.shape[2]):
            so = sig(float(f[a, 4, p]))
            best = max(sig(float(f[a, 5 + c, p])) for c in range(classes))
            w = (so * (1 - so) * best) ** 2 if slope else so
            num += w * (float(q[a, 4, p]) - float(f[a, 4, p]))
            den += w
            for c in range(classes):
                sc = sig(float(f[a, 5 + c, p]))
                wc = (so * sc * (1 - sc)) ** 2 if slope else so * sc
                cls_num += wc * (float(q[a, 5 + c, p]) - float(f[a, 5 + c, p]))
                cls_den += wc
        obj.append((num, den))
    return obj, (cls_num, cls_den)


def test_head_shifts_equal_the_position_by_position_sums():
    rng = np.random.default_rng(5)
    a, k = 3, 4
    f = rng.normal(0, 3, size=(a * (5 + k), 5, 6)).astype(np.float32)
    q = (f + rng.normal(-0.1, 0.2, size=f.shape)).astype(np.float32)
    num, den = head_shifts(f, q, a, k)
    num, den = num.reshape(a, 5 + k), den.reshape(a, 5 + k)
    obj, (cn, cd) = naive_shifts(f, q, a, k)
    assert np.all(num[:, :4] == 0) and np.all(den[:, :4] == 0)           # boxes left alone by default
    for i, (n_, d_) in enumerate(obj):
        assert num[i, 4] == pytest.approx(n_, rel=1e-9) and den[i, 4] == pytest.approx(d_, rel=1e-9)
    assert np.allclose(num[:, 5:], cn, rtol=1e-9) and np.allclose(den[:, 5:], cd, rtol=1e-9)
    ns, ds = (v.reshape(a, 5 + k) for v in head_shifts(f, q, a, k, weighting="slope"))
    obj, (cn, cd) = naive_shifts(f, q, a, k, slope=True)
    assert np.allclose(ns[:, 4], [o[0] for o in obj], rtol=1e-9)
    assert np.allclose(ds[:, 4], [o[1] for o in obj], rtol=1e-9)
    assert np.allclose(ns[:, 5:], cn, rtol=1e-9) and np.allclose(ds[:, 5:], cd, rtol=1e-9)
    nb, db = head_shifts(f, q, a, k, boxes=True)
    d = (q - f).reshape(a, 5 + k, -1).astype(np.float64)
    assert np.allclose(nb.reshape(a, -1)[:, :4], d[:, :4].sum(axis=2)) and np.all(db.reshape(a, -1)[:, :4] == 30)


@pytest.fixture(scope="module")
def asym(tiny, tiny_stats):
    return quantize_model(tiny, tiny_stats, "minmax", per_channel=True, profile="qwidgets_asym")


@pytest.fixture(scope="module")
def floats(tiny):
    return float_outputs(tiny, PHOTOS)


def weighted_shifts(tiny, qm, floats):
    """{head conv: (objectness shift per anchor, class shift)} of the INT run on the kept photos, naively."""
    ex = Executor(tiny, qm, "int")
    acc = {}
    for kept in floats.images:
        view = FloatView(ex.run(kept[-1])[0])
        for c, a, k in head_convs(tiny, qm):
            obj, cls = naive_shifts(kept[c], np.asarray(view[c]), a, k)
            o, s = acc.setdefault(c, ([[0.0, 0.0] for _ in range(a)], [0.0, 0.0]))
            for i, (n_, d_) in enumerate(obj):
                o[i][0] += n_
                o[i][1] += d_
            s[0] += cls[0]
            s[1] += cls[1]
    return {c: ([n_ / d_ for n_, d_ in o], s[0] / s[1]) for c, (o, s) in acc.items()}


def test_head_bias_correction_cancels_the_int_networks_shift_at_the_heads(tiny, asym, floats):
    before = weighted_shifts(tiny, asym, floats)
    assert sorted(before) == [15, 22]
    assert before[15][1] < -0.05                    # INT class logits at objects biased low (-.13 measured)
    fixed = head_bias_correction(tiny, asym, floats=floats)
    after = weighted_shifts(tiny, fixed, floats)
    for c in (15, 22):
        assert max(abs(v) for v in after[c][0]) < 0.01 and abs(after[c][1]) < 0.01, (c, before[c], after[c])
        assert fixed.meta["head_bias"][str(c)]["class"] == pytest.approx(before[c][1], abs=0.02)
        a, k = 3, 80
        moved = (fixed.layers[c].b_q.astype(np.int64) - asym.layers[c].b_q).reshape(a, 5 + k)
        step = np.asarray(asym.layers[c].acc_scale, np.float64).reshape(a, 5 + k)
        assert np.all(moved[:, :4] == 0) and np.any(moved[:, 4] != 0)
        shift = fixed.meta["head_bias"][str(c)]["class"]      # one shift for every class, in int32 units
        assert np.all(np.abs(moved[:, 5:] * step[:, 5:] + shift) <= 0.5 * step[:, 5:] + 1e-12)
        assert np.array_equal(fixed.layers[c].w_q, asym.layers[c].w_q)
    assert all(fixed.layers[i] is asym.layers[i] for i in asym.layers if i not in (15, 22))


def test_head_bias_correction_recovers_a_lost_detection(tiny, asym, floats):
    found = dark_horse_case(tiny)
    assert not found(asym)                           # lost on uint8 grids
    assert found(head_bias_correction(tiny, asym, floats=floats))


def test_head_bias_correction_needs_the_calibration_images(tiny, asym):
    with pytest.raises(ArgumentError, match="calibration images"):
        head_bias_correction(tiny, asym)
    with pytest.raises(ArgumentError, match="weighting"):
        head_bias_correction(tiny, asym, images=PHOTOS, weighting="mean")


def test_cli_quantize_refine_head(tmp_path):
    import subprocess
    import sys
    from engine.quant.qmodel import QuantizedModel
    from helpers import ROOT, TINY_CFG, TINY_WEIGHTS
    out = tmp_path / "h.npz"
    res = subprocess.run([sys.executable, "-m", "engine", "quantize", str(TINY_CFG), "--weights", str(TINY_WEIGHTS),
                          "--calib", str(IMAGES / "dog.jpg"), "--per-channel", "--profile", "qwidgets_asym", "--quiet",
                          "--refine", "head", "-o", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert res.returncode == 0, res.stderr
    qm = QuantizedModel.load(out)
    assert sorted(qm.meta["head_bias"]) == ["15", "22"]
    assert all(len(v["objectness"]) == 3 and abs(v["class"]) < 1 for v in qm.meta["head_bias"].values())
    assert any(abs(o) > 1e-3 for v in qm.meta["head_bias"].values() for o in v["objectness"])
