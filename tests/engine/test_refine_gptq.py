"""GPTQ weight rounding (`--refine gptq`) against the textbook OBS loop and the full layer error.

Reference: for each column i in order, F = the columns not yet rounded (i..d-1), Hinv_F = inv(H[F, F])
computed afresh with np.linalg.inv, q_i = round(w_i / s), and the remaining columns move by
-(w_i - q_i s) / Hinv_F[0, 0] * Hinv_F[0, :] (Optimal Brain Surgeon). The implementation instead reads
every Hinv_F row from one Cholesky factor of H^-1 and applies the updates by blocks.
"""
from __future__ import annotations

import numpy as np
import pytest

from engine.calib.floats import float_outputs
from engine.errors import ArgumentError
from engine.quant.executor import Executor
from engine.quant.qmodel import quantize_model
from engine.quant.refine.gptq import gptq_round, gptq_rounding, input_gram
from engine.quant.weights import fused_params
from helpers import IMAGES

PHOTOS = sorted(IMAGES.glob("*.jpg"))


def obs_reference(w, s, h, damp, qmax=127, order=None):
    """The textbook loop: columns in `order` (default: column order), each rounded, its error spread over
    the columns F not yet rounded through inv(H[F, F]) inverted afresh at every step."""
    w = np.array(w, np.float64)
    h = np.array(h, np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h += damp * np.mean(np.diag(h)) * np.eye(h.shape[0])
    n, d = w.shape
    order = list(range(d)) if order is None else [int(c) for c in order]
    q = np.zeros((n, d), np.int64)
    for i in range(d):
        rest = order[i:]
        hinv = np.linalg.inv(h[np.ix_(rest, rest)])
        col = rest[0]
        for r in range(n):                               # row by row, plain Python arithmetic per weight
            code = int(min(qmax, max(-qmax, round(w[r, col] / s[r]))))
            q[r, col] = code
            e = (w[r, col] - code * s[r]) / hinv[0, 0]
            for c in range(1, len(rest)):
                w[r, rest[c]] -= e * hinv[0, c]
    return q


def energy_order(h):
    """GPTQ's act-order: decreasing diag(H), ties in column order (a dead column counts as energy 1)."""
    diag = np.diag(h).copy()
    diag[diag == 0] = 1.0
    return sorted(range(diag.size), key=lambda c: (-diag[c], c))


def _im2col(layer, x):
    k, st, p = layer.size, layer.stride, layer.padding
    ho, wo = layer.out_shape[1], layer.out_shape[2]
    xp = np.pad(x, ((0, 0), (p, p), (p, p)))
    rows = np.empty((ho * wo, x.shape[0] * k * k))
    for yy in range(ho):                                  # window by window, no stride tricks
        for xx in range(wo):
            rows[yy * wo + xx] = xp[:, yy * st:yy * st + k, xx * st:xx * st + k].ravel()
    return rows


@pytest.fixture(scope="module")
def floats(tiny):
    return float_outputs(tiny, PHOTOS)


def test_gptq_round_equals_the_textbook_obs_loop_on_random_data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 24)) @ rng.normal(size=(24, 24))     # correlated inputs: compensation matters
    w = rng.normal(size=(5, 24))
    s = np.abs(w).max(axis=1) / 127
    h = x.T @ x
    h[:, 7] = h[7, :] = 0                                          # a column no input reaches
    order = energy_order(h)
    assert order != sorted(order)
    for block in (4, 128):
        assert np.array_equal(gptq_round(w, s, h, 0.01, block=block, act_order=False), obs_reference(w, s, h, 0.01))
        assert np.array_equal(gptq_round(w, s, h, 0.01, block=block), obs_reference(w, s, h, 0.01, order=order))
    assert not np.array_equal(obs_reference(w, s, h, 0.01), obs_reference(w, s, h, 0.01, order=order))
    # a 7-bit (reduce_range) weight range on the same scales: codes saturate at 63 as the reference's do
    q63 = gptq_round(w, s, h, 0.01, qmax=63)
    assert np.array_equal(q63, obs_reference(w, s, h, 0.01, qmax=63, order=order)) and np.abs(q63).max() == 63


def test_gptq_round_equals_the_reference_on_yolov3_tiny_layer_0(tiny, floats):
    layer = tiny.layers[0]
    w, _ = fused_params(tiny, 0)
    wf = w.reshape(w.shape[0], -1).astype(np.float64)
    s = np.abs(wf).max(axis=1) / 127
    h, rows = input_gram(layer, floats.inputs(-1)[:1])
    x = _im2col(layer, floats.inputs(-1)[0])
    assert rows == x.shape[0] and np.allclose(h, x.T @ x, rtol=1e-9)
    q = gptq_round(wf, s, h, 0.01, block=8)
    assert np.array_equal(q, obs_reference(wf, s, h, 0.01, order=energy_order(h)))
    assert np.array_equal(gptq_round(wf, s, h, 0.01, block=8, act_order=False), obs_reference(wf, s, h, 0.01))
    near = np.clip(np.rint(wf / s[:, None]), -127, 127)
    assert (q != near).mean() > 0.05                               # it really re-rounds, not a copy


def test_gptq_rounding_lowers_each_layers_full_output_error(tiny, tiny_stats, floats):
    qm = quantize_model(tiny, tiny_stats, "minmax", per_channel=True, profile="qwidgets_asym")
    g = gptq_rounding(tiny, qm, floats)
    changed = [i for i in qm.layers if not np.array_equal(g.layers[i].w_q, qm.layers[i].w_q)]
    assert len(changed) == len(qm.layers) == 13
    for i in changed:
        a, b = qm.layers[i], g.layers[i]
        assert b.w_q.dtype == np.int8 and np.abs(b.w_q.astype(int)).max() <= 127
        assert np.array_equal(a.w_scale, b.w_scale) and np.array_equal(a.b_q, b.b_q) and a.in_scale == b.in_scale
    for i in (0, 2, 13, 15):                                        # full conv error, the straightforward way
        layer = tiny.layers[i]
        w, _ = fused_params(tiny, i)
        n = w.shape[0]
        err = {}
        for name, lq in (("nearest", qm.layers[i]), ("gptq", g.layers[i])):
            dw = lq.dequantized_weights().reshape(n, -1).astype(np.float64) - w.reshape(n, -1)
            err[name] = sum(float(((_im2col(layer, x) @ dw.T) ** 2).sum()) for x in floats.inputs(layer.inputs[0]))
        assert err["gptq"] < 0.8 * err["nearest"], (i, err)
        ratio = g.meta["gptq"][str(i)][1] / g.meta["gptq"][str(i)][0]
        assert ratio == pytest.approx(err["gptq"] / err["nearest"], rel=1e-4)   # float32 dequantized weights
    # the integer network runs on the new codes
    out = Executor(tiny, g, "int").forward(tiny.preprocess(PHOTOS[0]).x)
    assert all(np.isfinite(o).all() for o in out)


def test_gptq_rejects_bad_arguments(tiny, tiny_stats):
    qm = quantize_model(tiny, tiny_stats, "minmax", per_channel=True)
    with pytest.raises(ArgumentError, match="damp"):
        gptq_rounding(tiny, qm, images=PHOTOS, damp=0)
    with pytest.raises(ArgumentError, match="FLOAT inputs"):
        gptq_rounding(tiny, qm)


def test_cli_quantize_refine_gptq_eq_on_uint8_grids(tmp_path):
    import subprocess
    import sys
    from engine.quant.qmodel import QuantizedModel
    from helpers import ROOT, TINY_CFG, TINY_WEIGHTS
    out, plain = tmp_path / "g.npz", tmp_path / "p.npz"
    base = [sys.executable, "-m", "engine", "quantize", str(TINY_CFG), "--weights", str(TINY_WEIGHTS),
            "--calib", str(IMAGES / "dog.jpg"), "--per-channel", "--profile", "qwidgets_asym", "--quiet"]
    res = subprocess.run(base + ["--refine", "gptq", "--refine", "eq", "-o", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert res.returncode == 0, res.stderr
    res = subprocess.run(base + ["-o", str(plain)], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert res.returncode == 0, res.stderr
    g, p = QuantizedModel.load(out), QuantizedModel.load(plain)
    assert g.profile == "qwidgets_asym" and sorted(g.meta["gptq"], key=int) == [str(i) for i in sorted(p.layers)]
    assert all(v[1] < v[0] for v in g.meta["gptq"].values())
    assert all(not np.array_equal(g.layers[i].w_q, p.layers[i].w_q) for i in p.layers)
    moved = [k for k, v in g.meta["eq"].items() if v[1] != v[0]]
    assert moved and all(g.thresholds[k] == pytest.approx(g.meta["eq"][k][1]) for k in moved)
