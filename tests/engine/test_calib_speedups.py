"""Calibration speed-ups give the results of the code they replace, on real yolov3-tiny:
* the one-pass |x| + positive-side histograms (AbsHistogram.observe_with_positive) equal the two
  separate passes (observe(x) and observe(x[x > 0])) bin for bin, on the activations of the four
  photos and on the edge cases that take the other branches;
* the float32 evaluation of the least-error power-of-two weight scales picks the scales of the
  former float64 evaluation for every layer, per channel and per tensor."""
from __future__ import annotations

import numpy as np
import pytest

from engine.calib.collect import one_sided_ids, positive_key, quantizable_ids
from engine.calib.histogram import AbsHistogram
from engine.quant.weights import log2_scales
from helpers import IMAGES


def _two_pass(values):
    h, hp = AbsHistogram(), AbsHistogram()
    for x in values:
        h.observe(x)
        hp.observe(x[x > 0])
    return h, hp


def _one_pass(values):
    h, hp = AbsHistogram(), AbsHistogram()
    for x in values:
        h.observe_with_positive(hp, x)
    return h, hp


def _same(a: AbsHistogram, b: AbsHistogram):
    assert np.array_equal(a.counts, b.counts)
    assert np.array_equal(a.to_arrays()["meta"], b.to_arrays()["meta"])


def test_collect_histograms_equal_the_two_pass_histograms(tiny, tiny_stats):
    sided = one_sided_ids(tiny)
    assert len(sided) >= 15
    ref: dict[str, AbsHistogram] = {}
    for path in sorted(IMAGES.glob("*.jpg")):
        x = tiny.preprocess(path).x
        outs = tiny.forward(x)
        for nid in quantizable_ids(tiny):
            y = x if nid == "input" else outs[int(nid)]
            ref.setdefault(nid, AbsHistogram()).observe(y)
            if nid in sided:
                ref.setdefault(positive_key(nid), AbsHistogram()).observe(y[y > 0])
    assert set(ref) == set(tiny_stats.hists)
    for key, h in ref.items():
        _same(tiny_stats.hists[key], h)


@pytest.mark.parametrize("case", ["leaky", "negatives_dominate", "no_positives", "zeros", "float64", "growing",
                                  "signed_zeros_subnormals", "strided"])
def test_edge_cases_equal_the_two_pass_histograms(case):
    rng = np.random.default_rng(3)
    base = rng.standard_normal((4, 50, 50)).astype(np.float32) * 3
    leaky = np.maximum(base, base * np.float32(0.1))
    values = {
        "leaky": [leaky, leaky * 2, leaky * 0.25],
        "negatives_dominate": [leaky, -leaky * 4, leaky],          # |x| range wider than the positive one
        "no_positives": [-np.abs(base), leaky],
        "zeros": [np.zeros((3, 4, 4), np.float32), leaky, np.zeros(5, np.float32)],
        "float64": [leaky.astype(np.float64), base.astype(np.float64)],
        "growing": [leaky * 1e-3, leaky, leaky * 1e3, np.float32(2.0) ** np.arange(-20, 12, dtype=np.float32)],
        "signed_zeros_subnormals": [np.array([-0.0, 0.0, 1e-45, -1e-45, 3e-39, -2.0, 5.0], np.float32), leaky],
        "strided": [leaky[:, ::2, ::3], leaky.transpose(2, 0, 1)],                # not C-contiguous
    }[case]
    for got, want in zip(_one_pass(values), _two_pass(values)):
        _same(got, want)


def _log2_scales_float64(rows, tries=4, qmax=127):
    """The former evaluation, everything in float64."""
    r = rows.astype(np.float64)
    amax = np.abs(r).max(axis=1)
    top = np.ceil(np.log2(np.where(amax > 0, amax, 1.0) / qmax))
    best, best_err = 2.0 ** top, np.full(r.shape[0], np.inf)
    for j in range(tries):
        s = 2.0 ** (top - j)
        err = ((np.clip(np.rint(r / s[:, None]), -qmax, qmax) * s[:, None] - r) ** 2).sum(axis=1)
        better = err < best_err
        best, best_err = np.where(better, s, best), np.where(better, err, best_err)
    return np.where(amax > 0, best, 1.0)


def test_log2_weight_scales_equal_the_float64_evaluation(tiny):
    chosen = []
    for layer in tiny.layers:
        if not layer.int8_weights:
            continue
        w, _ = layer.fused(tiny.params[layer.index])
        for rows in (w.reshape(w.shape[0], -1), w.reshape(1, -1)):
            got, want = log2_scales(rows), _log2_scales_float64(rows)
            assert np.array_equal(got, want), layer.index
            chosen.append(np.log2(got / 2.0 ** np.ceil(np.log2(np.abs(rows).max(axis=1) / 127))))
    assert len({float(v) for c in chosen for v in c}) >= 2      # the search does not always keep the top scale
    tiny_w = np.array([[1e-39, -3e-39, 0.0], [0.0, 0.0, 0.0], [1.0, -0.5, 0.25]], np.float32)
    assert np.array_equal(log2_scales(tiny_w), _log2_scales_float64(tiny_w))


def test_fused_params_follow_parameter_edits(tiny_copy):
    from engine.quant.weights import fused_params
    w, b = fused_params(tiny_copy, 0)
    assert fused_params(tiny_copy, 0)[0] is w                  # folded once
    ref_w, ref_b = tiny_copy.layers[0].fused(tiny_copy.params[0])
    assert np.array_equal(w, ref_w) and np.array_equal(b, ref_b) and not w.flags.writeable
    tiny_copy.set_param(0, "biases", tiny_copy.params[0]["biases"] + 1)
    w2, b2 = fused_params(tiny_copy, 0)
    assert np.array_equal(b2, tiny_copy.layers[0].fused(tiny_copy.params[0])[1]) and not np.array_equal(b2, b)


def test_fake_quantized_equals_quantize_then_dequantize(tiny, tiny_q):
    from engine.quant.qtensor import dequantize, quantize
    from engine.quant.refine.bias import fake_quantized
    x = tiny.preprocess(IMAGES / "dog.jpg").x
    outs = tiny.forward(x)
    checked = 0
    for nid, s in tiny_q.scales.items():
        y = x if nid == "input" else outs[int(nid)]
        for scale in (s, s / 3):                                  # / 3: saturating values too
            q, sat = quantize(y, scale)
            assert np.array_equal(fake_quantized(y, scale), dequantize(q, scale))
            checked += sat > 0
    assert checked >= 5


def _equalization_scales_former(model, mode, images=None, sweeps=20):
    """The former sweep: fold the weights of the equalized model after every step."""
    from engine.quant.refine.equalize import channel_maxima, equalized, pairs

    def fused_w(m, i):
        return m.layers[i].fused(m.params[i])[0].astype(np.float64)

    pr = pairs(model)
    acts = channel_maxima(model, images, pr) if mode == "activations" else {}
    total = {p: np.ones(model.layers[p].filters) for p in pr}
    work = model
    for _ in range(sweeps):
        moved = 0.0
        for p, cons in pr.items():
            n = model.layers[p].filters
            r1 = np.abs(fused_w(work, p)).reshape(n, -1).max(axis=1) if mode == "weights" else acts[p] / total[p]
            r2 = np.zeros(n)
            for c, off in cons:
                r2 = np.maximum(r2, np.abs(fused_w(work, c)[:, off:off + n]).max(axis=(0, 2, 3)))
            ok = (r1 > 0) & (r2 > 0)
            s = np.ones(n)
            s[ok] = np.sqrt(r1[ok] / r2[ok])
            total[p] = total[p] * s
            work = equalized(work, {str(p): s})
            moved = max(moved, float(np.abs(np.log(s)).max()))
        if moved < 1e-4:
            break
    return total


@pytest.mark.parametrize("mode", ["weights", "activations"])
def test_equalization_scales_equal_the_former_sweep(tiny, mode):
    from engine.quant.refine.equalize import equalization_scales
    images = [IMAGES / "dog.jpg"] if mode == "activations" else None
    got, want = equalization_scales(tiny, mode, images), _equalization_scales_former(tiny, mode, images)
    assert got.keys() == want.keys() and len(got) >= 5
    for p in want:
        assert np.array_equal(got[p], want[p]), p
    assert any(np.abs(np.log(s)).max() > 0.1 for s in got.values())


@pytest.mark.parametrize("method", ["minmax", "log2"])
def test_quantize_model_is_the_same_on_one_thread(tiny, tiny_stats, method):
    from engine.kernels.threads import blas_limit
    from engine.quant.qmodel import quantize_model
    many = quantize_model(tiny, tiny_stats, method, per_channel=True)
    with blas_limit(1):
        one = quantize_model(tiny, tiny_stats, method, per_channel=True)
    assert list(many.layers) == list(one.layers) and many.scales == one.scales
    for i, lq in many.layers.items():
        assert np.array_equal(lq.w_q, one.layers[i].w_q) and np.array_equal(lq.w_scale, one.layers[i].w_scale)
        assert np.array_equal(lq.b_q, one.layers[i].b_q)


@pytest.mark.parametrize("scheme", ["minmax", "log2"])
def test_blocked_weight_quantization_equals_the_whole_array_one(tiny, scheme):
    """quantize_weights and log2_scales work in cache-sized row blocks: the same scales and int8 weights
    as the former whole-array arithmetic, per channel and per tensor, on every layer."""
    from engine.quant.weights import quantize_weights
    for layer in tiny.layers:
        if not layer.int8_weights:
            continue
        w, _ = layer.fused(tiny.params[layer.index])
        for per_channel in (True, False):
            got = quantize_weights(w, scheme, per_channel)
            rows = w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)
            if scheme == "minmax":
                amax = np.abs(rows).max(axis=1).astype(np.float64)
                scale = np.where(amax > 0, amax / 127, 1.0)
            else:
                scale = _log2_scales_float64(rows)
            shape = (-1,) + (1,) * (w.ndim - 1)
            want = np.clip(np.rint(w.astype(np.float64) / scale.reshape(shape if per_channel else ())), -127, 127)
            assert np.array_equal(got.scale, scale), layer.index
            assert got.w_q.dtype == np.int8 and np.array_equal(got.w_q, want.astype(np.int8)), layer.index


def _mse_threshold_direct(h):
    """The former mse search: every candidate evaluated term by term."""
    from engine.calib.mse import expected_mse
    used = h.used_bins
    cands = np.minimum(np.arange(max(1, used // 64), used + 1) * h.bin_width, h.amax)
    return float(cands[int(np.argmin(expected_mse(h.counts[:used], h.centers[:used], cands)))])


def test_mse_thresholds_equal_the_direct_search(tiny_stats):
    """mse ranks its candidates from prefix sums and evaluates only the nearly best term by term:
    the threshold of the search over every candidate, on every histogram of the four photos and on
    shapes that leave several candidates close (flat, two spikes, one bin, a long tail)."""
    from engine.calib.mse import MSECalibrator
    cal = MSECalibrator()
    hists = list(tiny_stats.hists.values())
    rng = np.random.default_rng(5)
    for values in (np.ones(1000), np.r_[np.full(500, 0.01), np.full(500, 3.0)], np.full(7, 2.5),
                   rng.standard_t(2, 20000), rng.uniform(0, 1, 5000), np.r_[rng.normal(0, 1, 10000), 400.0]):
        h = AbsHistogram()
        h.observe(values.astype(np.float32))
        hists.append(h)
    clipped = 0
    for h in hists:
        if h.amax > 0:
            t = cal.threshold(h)
            assert t == _mse_threshold_direct(h)
            clipped += t < h.amax
    assert len(hists) > 40 and clipped > 20
