"""EQ threshold search (ncnn2table method=eq style) on real yolov3-tiny and the four shared photos.

The search estimates each layer's local output error on sampled positions; the checks here measure it
in full instead: every layer whose input scale EQ changed is run as the HYBRID conv itself (int8 input
and weights, int32 accumulation, engine/quant/int_layers.py) on the FLOAT input of every calibration
image, and its squared distance to the FLOAT output must not grow.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from engine.calib.floats import FloatOutputs, float_outputs
from engine.errors import ArgumentError, EngineError
from engine.quant.executor import Executor, Value
from engine.quant.qmodel import input_id, quantize_model
from engine.quant.refine.eq import eq_search, fused_bias
from helpers import IMAGES

PHOTOS = sorted(IMAGES.glob("*.jpg"))


@pytest.fixture(scope="module")
def floats(tiny):
    return float_outputs(tiny, PHOTOS)


def _local_error(tiny, qm, floats, i):
    """sum over images |HYBRID layer i (FLOAT input) - FLOAT|^2 / |FLOAT|^2, the full tensors."""
    ex = Executor(tiny, qm, "hybrid")
    src = tiny.layers[i].inputs[0]
    err = 0.0
    for x, y in zip(floats.inputs(src), floats.inputs(i)):
        out, _ = ex.run_layer(i, [Value(f=x)])
        d = out.float().astype(np.float64) - y
        err += float((d * d).sum() / (y.astype(np.float64) ** 2).sum())
    return err


@pytest.mark.parametrize("method", ["minmax", "kl", "log2", "mse"])
def test_eq_never_raises_a_layers_full_local_error(tiny, tiny_stats, floats, method):
    qm = quantize_model(tiny, tiny_stats, method, per_channel=True)
    eq = eq_search(tiny, qm, floats)
    changed = [i for i in qm.layers if eq.layers[i].in_scale != qm.layers[i].in_scale]
    assert len(changed) >= 2, eq.meta["eq"]                  # the search moves thresholds on real data
    gains = []
    for i in changed:
        before, after = _local_error(tiny, qm, floats, i), _local_error(tiny, eq, floats, i)
        # the move was checked on a sample (CHECK_POSITIONS of a 52 x 52 map's 2704 positions per image): a
        # move that gains there may lose a few % on the whole tensor (kl's clip_max start, layer 6: +3.0%);
        # the +5% to +39% losses of the search's own small sample, which the check exists to stop, still fail
        assert after <= 1.05 * before, (method, i, before, after)
        gains.append(before / after)
        # the rescaled int32 bias is the float bias in the new accumulator scale
        acc = eq.layers[i].acc_scale
        assert np.all(np.abs(eq.layers[i].b_q * acc - fused_bias(tiny.layers[i], tiny.params[i])) <= 0.5 * acc + 1e-6)
    assert max(gains) > 1.2                                   # and at least one layer clearly gains
    for nid in ("input", "0"):                                # first-layer rule: never clipped, never searched
        assert eq.scales[nid] == qm.scales[nid]
    for layer in tiny.layers:                                 # shared scale groups stay shared
        src = "input" if layer.inputs[0] < 0 else str(layer.inputs[0])
        if layer.kind == "maxpool" and qm.scales[str(layer.index)] == qm.scales[src]:
            assert eq.scales[str(layer.index)] == eq.scales[src]
    if method == "log2":                                      # power-of-two methods keep power-of-two scales
        for s in eq.scales.values():
            assert math.log2(s) == round(math.log2(s))
    assert eq.meta["eq"] and all(len(v) == 4 and v[3] <= v[2] for v in eq.meta["eq"].values())


@pytest.mark.parametrize("method", ["minmax", "kl", "mse"])
def test_eq_on_uint8_zero_point_grids(tiny, tiny_stats, floats, method):
    # qwidgets_asym: (scale, zero point) pairs; measured as above on the profile's exact integer HYBRID conv
    from engine.quant.asym import asym_params
    qm = quantize_model(tiny, tiny_stats, method, per_channel=True, profile="qwidgets_asym")
    eq = eq_search(tiny, qm, floats)
    moved = [n for n in qm.scales if (eq.scales[n], eq.zero_points[n]) != (qm.scales[n], qm.zero_points[n])]
    assert moved, eq.meta["eq"]
    changed = [i for i in qm.layers if input_id(tiny.layers[i]) in moved]
    assert changed
    for i in changed:
        before, after = _local_error(tiny, qm, floats, i), _local_error(tiny, eq, floats, i)
        assert after <= before * 1.02, (method, i, before, after)    # sampled estimate vs the full error
        acc = eq.layers[i].acc_scale
        assert eq.layers[i].in_scale == eq.scales[input_id(tiny.layers[i])]
        assert np.all(np.abs(eq.layers[i].b_q * acc - fused_bias(tiny.layers[i], tiny.params[i])) <= 0.5 * acc + 1e-6)
    for n in moved:                                            # every grid is ORT's rule for its own range
        s, z = eq.scales[n], eq.zero_points[n]
        assert 0 <= z <= 255
        lo, hi = -z * s, (255 - z) * s
        assert hi <= max(tiny_stats.hists[n].hi_signed, qm.thresholds[n]) + s     # the zero point rounds: one step
        assert abs(asym_params(lo, hi)[0] - s) <= 1e-6 * s
    for nid in ("input", "0"):
        assert (eq.scales[nid], eq.zero_points[nid]) == (qm.scales[nid], qm.zero_points[nid])
    for layer in tiny.layers:                                 # shared grids stay shared
        src = "input" if layer.inputs[0] < 0 else str(layer.inputs[0])
        if layer.kind == "maxpool":
            nid = str(layer.index)
            assert (eq.scales[nid], eq.zero_points[nid]) == (eq.scales[src], eq.zero_points[src])
    assert all(v[3] <= v[2] for v in eq.meta["eq"].values())


def test_kept_float_outputs_equal_a_fresh_forward(tiny, floats):
    # the calibration pass hands its own arrays to the refinements: a later forward must not overwrite them
    x = tiny.preprocess(PHOTOS[0]).x
    outs = tiny.forward(x)
    tiny.forward(tiny.preprocess(PHOTOS[1]).x)
    for i in floats.ids:
        assert np.array_equal(floats.images[0][i], x if i < 0 else outs[i])
    capped = FloatOutputs(tiny, max_bytes=floats.nbytes // len(floats) + 1)
    for k, p in enumerate(PHOTOS[:2]):
        xk = tiny.preprocess(p).x
        capped.add(xk, tiny.forward(xk))
    assert len(capped) == 1 and not capped.complete


def test_eq_refuses_bad_arguments(tiny, tiny_stats, tiny_q, floats):
    for bad in (0, -1.0, float("nan"), "0.2"):
        with pytest.raises(ArgumentError, match="budget="):
            eq_search(tiny, tiny_q, floats, budget=bad)
    with pytest.raises(ArgumentError, match="floats=... or images="):
        eq_search(tiny, tiny_q)
    ort = quantize_model(tiny, tiny_stats, "minmax", profile="onnxruntime")
    with pytest.raises(EngineError, match="onnxruntime"):       # its leaky tables need a pre-activation grid too
        eq_search(tiny, ort, floats)
    bare = tiny_q.copy()
    bare.stats = None
    with pytest.raises(EngineError, match="calibration statistics"):
        eq_search(tiny, bare, floats)


def test_cli_quantize_refine_cle_eq_bias(tmp_path):
    import subprocess
    import sys
    from engine.quant.qmodel import QuantizedModel
    from helpers import ROOT, TINY_CFG, TINY_WEIGHTS
    out = tmp_path / "q.npz"
    res = subprocess.run([sys.executable, "-m", "engine", "quantize", str(TINY_CFG), "--weights", str(TINY_WEIGHTS),
                          "--calib", str(IMAGES / "dog.jpg"), "--method", "kl", "--refine", "cle", "--refine", "eq", "--refine", "bias",
                          "--quiet", "-o", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr
    qm = QuantizedModel.load(out)
    assert qm.method == "kl" and qm.meta["eq"] and "15" in qm.meta["bias_correction"] and qm.meta["equalization"]
    moved = [k for k, v in qm.meta["eq"].items() if v[1] != v[0]]
    assert moved and all(qm.thresholds[k] == pytest.approx(qm.meta["eq"][k][1]) for k in moved)
    bad = subprocess.run([sys.executable, "-m", "engine", "quantize", str(TINY_CFG), "--weights", str(TINY_WEIGHTS),
                          "--calib", str(IMAGES / "dog.jpg"), "--refine", "eqq", "-o", str(tmp_path / "b.npz")],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert bad.returncode != 0 and "eqq" in bad.stderr and "Traceback" not in bad.stderr


def test_bias_correction_on_kept_float_outputs_equals_a_new_float_pass(tiny, tiny_stats, floats):
    from engine.quant.refine import bias_correction
    qm = quantize_model(tiny, tiny_stats, "kl", per_channel=True)
    kept, fresh = bias_correction(tiny, qm, floats=floats), bias_correction(tiny, qm, PHOTOS)
    for i in qm.layers:
        assert np.array_equal(kept.layers[i].b_q, fresh.layers[i].b_q)
    assert kept.meta["bias_correction"] == fresh.meta["bias_correction"]
    with pytest.raises(ArgumentError, match="images=..."):
        bias_correction(tiny, qm)


@pytest.mark.parametrize("size,stride,pad", [(3, 1, 1), (3, 2, 1), (1, 1, 0), (2, 2, 0)])
def test_sampled_windows_are_the_im2col_rows(size, stride, pad):
    from types import SimpleNamespace
    from engine.kernels.gemm import conv_out_size
    from engine.quant.refine.eq import _positions
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 11, 9)).astype(np.float32)
    ho, wo = conv_out_size(11, size, stride, pad), conv_out_size(9, size, stride, pad)
    y = np.arange(ho * wo, dtype=np.float32).reshape(1, ho, wo)       # the output names its position
    layer = SimpleNamespace(size=size, stride=stride, padding=pad)
    rows, outs, weights = _positions(layer, x, y, 6, 1.5, rng)
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    for r, o in zip(rows, outs[:, 0].astype(int)):
        oy, ox = divmod(o, wo)
        want = xp[:, oy * stride:oy * stride + size, ox * stride:ox * stride + size].reshape(-1)
        assert np.array_equal(r, want)
    assert weights.sum() == pytest.approx(ho * wo)                     # strata weights cover every position
    all_rows, _, w1 = _positions(layer, x, y, ho * wo, 1.5, rng)
    assert all_rows.shape == (ho * wo, 5 * size * size) and np.all(w1 == 1)


def test_eq_after_cross_layer_equalization(tiny, tiny_stats):
    from engine.calib.collect import collect
    from engine.quant.refine import attach_equalization, equalize
    twin, spec = equalize(tiny, "weights", PHOTOS)
    keep = FloatOutputs(twin)
    stats = collect(twin, PHOTOS, progress=False, keep=keep)
    qm = attach_equalization(quantize_model(twin, stats, "kl", per_channel=True), spec, "weights")
    eq = eq_search(tiny, qm, keep)                            # finds the equalized twin itself
    changed = [i for i in qm.layers if eq.layers[i].in_scale != qm.layers[i].in_scale]
    assert len(changed) >= 2
    for i in changed:
        assert _local_error(tiny, eq, keep, i) <= _local_error(tiny, qm, keep, i), i


def test_eq_and_bias_are_the_same_on_one_thread(tiny, tiny_stats, floats):
    from engine.kernels.threads import blas_limit
    from engine.quant.refine import bias_correction
    qm = quantize_model(tiny, tiny_stats, "kl", per_channel=True)
    many = bias_correction(tiny, eq_search(tiny, qm, floats), floats=floats)
    with blas_limit(1):                                       # the work items then run in this thread, in order
        one = bias_correction(tiny, eq_search(tiny, qm, floats), floats=floats)
    assert many.scales == one.scales and many.meta["eq"] == one.meta["eq"]
    for i in qm.layers:
        assert np.array_equal(many.layers[i].b_q, one.layers[i].b_q)
