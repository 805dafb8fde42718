"""Calibration rules (engine/calib/views.py) on real yolov3-tiny statistics, and log2 weight scales."""
from __future__ import annotations

import numpy as np
import pytest

from engine.calib import make
from engine.calib.collect import one_sided_ids
from engine.calib.views import scale_groups, views
from engine.errors import EngineError
from engine.quant.qmodel import quantize_model
from engine.quant.weights import log2_scales, quantize_weights


def test_one_sided_and_shared_scales_on_tiny(tiny, tiny_stats):
    sided = one_sided_ids(tiny)
    assert {"0", "1", "2", "13", "14", "17", "19", "20"} <= sided and "15" not in sided and "22" not in sided
    groups = scale_groups(tiny)
    assert groups["0"] == groups["1"] == "1" and groups["10"] == groups["11"] == "11"
    assert groups["8"] == "8"                                   # read by a maxpool and a route: its own
    v = views(tiny, tiny_stats)
    assert v["2"].source == "3+" and v["input"].source == "input" and v["0"].full_range and not v["2"].full_range
    h0, hpos = tiny_stats.hists["0"], tiny_stats.hists["0+"]
    assert hpos.total < h0.total and hpos.amax == pytest.approx(h0.hi_signed)


def test_kl_rules_unclip_first_layer_and_keep_yolo2_light(tiny, tiny_stats):
    kl = quantize_model(tiny, tiny_stats, "kl", per_channel=True)
    plain = quantize_model(tiny, tiny_stats, "kl", per_channel=True, rules=(), clip_max=1)   # TensorRT's rule alone
    assert kl.thresholds["0"] == pytest.approx(tiny_stats.hists["0+"].amax)
    assert plain.thresholds["0"] < 0.3 * kl.thresholds["0"]          # |x| KL clips layer 0 hard
    assert kl.scales["2"] == kl.scales["3"] and plain.scales["2"] != plain.scales["3"]
    t_pos = make("kl").threshold(tiny_stats.hists["3+"])
    assert kl.thresholds["2"] == t_pos
    y2l = quantize_model(tiny, tiny_stats, "yolo2_light")
    assert all(y2l.thresholds[k] == make("yolo2_light").threshold(tiny_stats.hists[k]) for k in y2l.thresholds)
    with pytest.raises(EngineError, match="calibration rules"):
        quantize_model(tiny, tiny_stats, "kl", rules=("nonsense",))


def test_log2_weight_scales_are_the_least_error_power_of_two(tiny):
    w, _ = tiny.layers[2].fused(tiny.params[2])
    rows = w.reshape(w.shape[0], -1).astype(np.float64)
    got = log2_scales(rows)
    for r, s in zip(rows[:8], got[:8]):
        top = np.ceil(np.log2(np.abs(r).max() / 127))
        cands = [2.0 ** (top - j) for j in range(4)]
        errs = [((np.clip(np.rint(r / c), -127, 127) * c - r) ** 2).sum() for c in cands]
        assert s == cands[int(np.argmin(errs))]
    q = quantize_weights(w, "log2", per_channel=True)
    assert np.all(np.log2(q.scale) == np.round(np.log2(q.scale)))


def test_aciq_clips_a_laplace_sample_at_9_89_b(tiny, tiny_stats):
    from engine.calib.histogram import AbsHistogram
    rng = np.random.default_rng(0)
    x = rng.laplace(0.0, 0.5, 400_000).astype(np.float32)
    h = AbsHistogram()
    h.observe(x)
    t = make("aciq").threshold(h)
    assert t == pytest.approx(9.89 * np.abs(x.astype(np.float64)).mean(), rel=2e-3)
    assert t < h.amax
    qm = quantize_model(tiny, tiny_stats, "aciq", per_channel=True)
    assert qm.thresholds["2"] == pytest.approx(min(tiny_stats.hists["3+"].amax, 9.89 * float(
        (tiny_stats.hists["3+"].counts * tiny_stats.hists["3+"].centers).sum() / tiny_stats.hists["3+"].counts.sum())))
    with pytest.raises(ValueError, match="aciq bits"):
        make("aciq", bits=9)


def test_unknown_method_setting_is_refused_by_the_api_too(tiny, tiny_stats):
    # a typo would otherwise be stored in the quantized model's meta and change nothing
    from engine.errors import ArgumentError
    with pytest.raises(ArgumentError, match="'bogus' is not a setting of method 'kl' \\(its settings: stride, clip_max\\)"):
        make("kl", bogus=1)
    with pytest.raises(ArgumentError, match="'percentil' is not a setting of method 'percentile'"):
        quantize_model(tiny, tiny_stats, "percentile", percentil=99.9)
    assert make("percentile", percentile=99.9).describe() == "percentile(percentile=99.9)"
