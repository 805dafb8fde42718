"""The fast calibration of a cross-layer-equalized model against the straightforward one, on real
yolov3-tiny and the four photos.

The fast path runs the original model's FLOAT forward and multiplies the outputs inside the equalized
chains per channel (`derived_forward`) instead of preparing and running the twin's kernels; bias
correction sums int8 weights over the kernel window exactly in int32 instead of summing float32
copies. Both differ from the straightforward path by float rounding only; what that changes is pinned
here: the twin's outputs (within 1e-5 of each tensor's range), thresholds (within 2e-6 relative), int8
weights (identical), int32 biases (a few accumulator units: under 1% of one output step) and INT
detections (the same ones, scores within 0.05).
"""
from __future__ import annotations

import numpy as np
import pytest

from engine.calib.collect import collect
from engine.calib.floats import FloatOutputs
from engine.darknet.detect import detect_outputs
from engine.quant.autoquant import quantize
from engine.quant.executor import Executor
from engine.quant.refine import attach_equalization, bias_correction, derived_forward, eq_search, equalize
from engine.quant.refine.bias import tap_sums
from engine.quant.refine.equalize import channel_factors
from helpers import IMAGES, iou_xyxy

PHOTOS = sorted(IMAGES.glob("*.jpg"))


@pytest.fixture(scope="module")
def cle(tiny):
    return equalize(tiny, "weights", PHOTOS)


@pytest.fixture(scope="module")
def both(tiny, cle):
    """(straightforward, fast) calibrations of the twin: (stats, kept FLOAT outputs) each."""
    twin, spec = cle
    slow_keep, fast_keep = FloatOutputs(twin), FloatOutputs(twin)
    slow = collect(twin, PHOTOS, progress=False, keep=slow_keep)                 # the twin's own forward
    fast = collect(twin, PHOTOS, progress=False, keep=fast_keep, forward=derived_forward(tiny, spec))
    return (slow, slow_keep), (fast, fast_keep)


def test_derived_outputs_are_the_twins_own(tiny, cle):
    twin, spec = cle
    # equalize no longer prepares the twin's kernels (every conv of yolov3-tiny is rescaled)
    assert not [i for i in twin._prepared if twin.layers[i].kind == "convolutional"]
    x = tiny.preprocess(PHOTOS[0]).x
    plain, own, derived = tiny.forward(x), twin.forward(x), derived_forward(tiny, spec)(x)
    factors = channel_factors(tiny, spec)
    assert set(factors) == {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 17, 18, 19, 20, 21}
    for i, (a, b) in enumerate(zip(own, derived)):
        # two float32 runs of rescaled weights, F(4x4) Winograd on layers 6, 8 and 21: each ~1e-5 of the
        # layer's max from the exact result (layer 21: 1.001e-5 measured, 1.5e-5 at its [yolo] with other
        # factors; the golden test allows 1e-4 against OpenCV); a wrong factor moves outputs by 30% or more
        assert np.abs(a - b).max() <= 3e-5 * np.abs(a).max(), i
        if i not in factors:
            assert np.array_equal(b, plain[i])          # chain ends and heads: the original outputs themselves
    # each commuting layer of the twin run on the derived input gives the derived output bit for bit
    for i in (1, 11, 19):
        assert np.array_equal(twin.run_layer(i, [derived[i - 1]]), derived[i])
    assert np.array_equal(derived[20], np.concatenate([derived[19], derived[8]]))
    s13 = np.asarray(spec["13"], np.float32).reshape(-1, 1, 1)
    assert np.abs(s13 - 1).max() > 0.3
    np.testing.assert_allclose(derived[13] * s13, plain[13], rtol=1e-6, atol=1e-7 * np.abs(plain[13]).max())


@pytest.mark.parametrize("method,profile", [("minmax", "qwidgets"), ("kl", "qwidgets"), ("log2", "qwidgets"),
                                            ("minmax", "qwidgets_asym")])
def test_fast_calibration_matches_the_straightforward_one(tiny, cle, both, method, profile):
    twin, spec = cle
    runs = []
    for stats, keep in both:
        qm = attach_equalization(quantize(twin, stats, method, per_channel=True, profile=profile), spec, "weights",
                                 tiny, twin)
        before = qm
        if profile == "qwidgets":
            qm = eq_search(tiny, qm, keep)
        runs.append((before, bias_correction(tiny, qm, PHOTOS, floats=keep)))
    (slow0, slow), (fast0, fast) = runs
    for a, b in ((slow0, fast0), (slow, fast)):
        assert a.thresholds.keys() == b.thresholds.keys()
        for k, t in a.thresholds.items():
            # float32 rounding only: the twin's own forward runs F(4x4) Winograd on layers the derived
            # outputs take from the original's run (measured up to 2.5e-6 relative). KL's optimum over 2048
            # bins can move to a near-equal candidate under such rounding (layer 18: 2.195 vs 2.25)
            assert abs(b.thresholds[k] - t) <= (0.03 if method == "kl" else 1e-5) * abs(t), k
    steps = []
    for i, lq in slow.layers.items():
        assert np.array_equal(lq.w_q, fast.layers[i].w_q) and np.array_equal(lq.w_scale, fast.layers[i].w_scale)
        d = np.abs(lq.b_q.astype(np.int64) - fast.layers[i].b_q)
        assert d.max() <= 4, i
        steps.append((d * lq.acc_scale).max() / slow.scales[str(i)])   # in output steps of the layer
    assert max(steps) < 0.01                        # at most 1% of an output step
    # int8 roundings flip wherever a value sits at a half step, so the INT runs differ by a few steps: the
    # same detections, scores within 0.05 (one at 0.252 vs 0.249 of the 0.25 threshold on person.jpg)
    for p in PHOTOS:
        pre = tiny.preprocess(p)
        a, b = (detect_outputs(tiny, Executor(tiny, q, "int").forward(pre.x), pre, thresh=0.2) for q in (slow, fast))
        for one, other in ((a, b), (b, a)):
            for d in (d for d in one if d.score >= 0.26):
                match = [e for e in other if e.class_id == d.class_id and iou_xyxy(d._asdict(), e._asdict()) > 0.8]
                assert match and abs(match[0].score - d.score) <= 0.05, (p.name, d)


def test_tap_sums_are_the_window_sums(tiny, tiny_q):
    for i in (0, 12, 13):
        w_q = tiny_q.layers[i].w_q
        assert np.array_equal(tap_sums(w_q, np.int32), w_q.astype(np.int64).sum(axis=(2, 3)))
        w = tiny.layers[i].fused(tiny.params[i])[0]
        ref = w.astype(np.float64).sum(axis=(2, 3))
        assert np.abs(tap_sums(w, np.float64) - ref).max() <= 1e-12 * np.abs(ref).max()


def _former_bias_b_q(model, qmodel, floats):
    """The former arithmetic of bias_correction: float32 window sums of the float and dequantized weights."""
    from engine.quant.refine.bias import fake_quantized
    from engine.quant.qmodel import input_id
    out = {}
    for i, lq in qmodel.layers.items():
        src = model.layers[i].inputs[0]
        m_f = np.mean([x[src].reshape(x[src].shape[0], -1).astype(np.float64).mean(axis=1) for x in floats.images],
                      axis=0)
        m_q = np.mean([fake_quantized(x[src], qmodel.scales[input_id(model.layers[i])]).reshape(
            x[src].shape[0], -1).astype(np.float64).mean(axis=1) for x in floats.images], axis=0)
        w = model.layers[i].fused(model.params[i])[0]
        s_f = w.reshape(w.shape[0], w.shape[1], -1).sum(axis=2)
        s_q = lq.dequantized_weights().astype(np.float64)
        s_q = s_q.reshape(s_q.shape[0], s_q.shape[1], -1).sum(axis=2)
        e = s_q @ m_q - s_f.astype(np.float64) @ m_f
        out[i] = lq.b_q.astype(np.int64) - np.rint(e / lq.acc_scale).astype(np.int64)
    return out


@pytest.mark.parametrize("method", ["minmax", "kl"])
def test_bias_correction_matches_the_former_arithmetic(tiny, tiny_stats, method):
    keep = FloatOutputs(tiny)
    collect(tiny, PHOTOS, progress=False, keep=keep)
    qm = quantize(tiny, tiny_stats, method, per_channel=True)
    got, want = bias_correction(tiny, qm, floats=keep), _former_bias_b_q(tiny, qm, keep)
    changed = total = 0
    for i, b in want.items():
        d = np.abs(got.layers[i].b_q - b)
        assert d.max() <= 1, i                        # a rint at a half-integer, nothing more
        changed, total = changed + int(np.count_nonzero(d)), total + d.size
        moved = np.abs(b - qm.layers[i].b_q)
    assert changed <= 0.005 * total and moved.max() > 0
