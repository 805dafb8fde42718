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


def test_log2_first_layer_takes_the_least_error_power_of_two_not_the_range_rounded_up(tiny, tiny_stats):
    """Round 12: a power of two cannot equal the first layer's range, and rounding the range up cost the image
    half its levels (scale 1/64 for pixels in [0, 1]) and conv 0 a third of its codes (47.9 -> 63.5)."""
    qm = quantize_model(tiny, tiny_stats, "log2", per_channel=True)
    assert qm.scales["input"] == 2.0 ** -7                  # 1.0 / 127 rounds up to 1/64; 1/128 clips 255 by 1/128
    assert qm.scales["0"] == qm.scales["1"] == 0.25         # max 47.9 over the four photos: 0.5 before
    assert qm.thresholds["0"] == 127 * 0.25
    assert qm.scales["2"] == 0.125                          # deeper groups: the positive side's rule, as before
    former = quantize_model(tiny, tiny_stats, "log2", per_channel=True, first_layer="range")
    assert former.scales["input"] == 2.0 ** -6 and former.scales["0"] == 0.5
    assert former.thresholds["0"] == pytest.approx(tiny_stats.hists["0+"].amax)
    asym = quantize_model(tiny, tiny_stats, "log2", per_channel=True, profile="qwidgets_asym")
    assert asym.thresholds["0"] == pytest.approx(tiny_stats.hists["0+"].amax)   # zero-point grids: unchanged


def test_log2_first_layer_threshold_on_a_hand_made_histogram():
    """Both signs count: 900 values at 1.0, 100 at -0.5 and one at 39.9 (the range). T = 127 * 2**k for
    k = -2 (31.75, clips 39.9 by 8.15) costs (1000 * 0.25**2 / 12 + 8.15**2) / 1001 = .0716; k = -1 (63.5, clips
    nothing) 1001 * 0.5**2 / 12 / 1001 = .0208: the range rounded up wins here. With 5000 more at 0.3:
    (6000 * .0052 + 66.4) / 6001 = .0163 against .0208: the finer grid wins."""
    from engine.calib.histogram import AbsHistogram
    from engine.calib.views import TensorView
    pos, both = AbsHistogram(), AbsHistogram()
    pos.observe(np.array([1.0] * 900 + [39.9], np.float32))
    both.observe(np.array([1.0] * 900 + [-0.5] * 100 + [39.9], np.float32))
    log2 = make("log2")
    assert log2.group_threshold(TensorView(pos, "1+", True, both)) == 63.5
    both.observe(np.full(5000, 0.3, np.float32))    # many small values: the finer grid's noise saving wins
    assert log2.group_threshold(TensorView(pos, "1+", True, both)) == 31.75
    assert make("log2", first_layer="range").group_threshold(TensorView(pos, "1+", True, both)) == pos.amax
    assert make("minmax").group_threshold(TensorView(pos, "1+", True, both)) == pos.amax
    with pytest.raises(EngineError, match="first_layer"):
        make("log2", first_layer="round")


def test_log2_counts_the_largest_value_when_it_sits_on_a_bin_edge():
    """990 pixels at 1.0 (a bin edge: 1.0 = 1024 bins of 1/1024) and 10 at 0.25. Counting only the bins below
    amax's, the search saw the 0.25s alone and picked T = 127/256 = .496, halving every 1.0; with them, 127/128
    clips 1.0 by 1/128 (990 * 6.1e-5 / 1000) and 127/64 costs (1/64)**2 / 12 = 2.0e-5: 127/64 wins."""
    from engine.calib.histogram import AbsHistogram
    h = AbsHistogram()
    h.observe(np.array([1.0] * 990 + [0.25] * 10, np.float32))
    assert h.amax == 1.0 and h.amax / h.bin_width == int(h.amax / h.bin_width)
    assert make("log2").threshold(h) == 127 / 64


@pytest.mark.parametrize("method", ["mse", "kl"])
def test_mse_and_kl_count_amaxs_own_bin_on_a_bin_edge(method):
    """The log2 case above in the two other searches over the histogram's bins: with 990 values at 1.0 (a bin
    edge) their bin was left out, so both saw only the ten 0.25s and clipped 99% of the values to a quarter."""
    from engine.calib.histogram import AbsHistogram
    h = AbsHistogram()
    h.observe(np.array([1.0] * 990 + [0.25] * 10, np.float32))
    assert make(method).threshold(h) == 1.0


def test_zero_sum_codes_on_a_hand_made_row():
    """Codes 0.4, 0.4, 0.4, 2.3 round to 0, 0, 0, 2: errors -.4 -.4 -.4 -.3 sum to -1.5, which rounds to -2 (half to
    even), so two codes move up, the two whose move adds the least error (the largest fractions: the three .4s
    tie, the first two win); the sum is then +.5. A second row already sums to 0 and is left alone."""
    from engine.quant.weights import zero_sum_codes
    v = np.array([[0.4, 0.4, 0.4, 2.3], [0.2, -0.2, 5.0, -5.0]])
    q = zero_sum_codes(v)
    assert q.tolist() == [[1, 1, 0, 2], [0, 0, 5, -5]]
    assert (q - v).sum(axis=1) == pytest.approx([0.5, 0.0])
    assert zero_sum_codes(np.array([[127.4, 127.4]])).tolist() == [[127, 127]]     # saturated: no room to move


def test_log2_first_layer_weights_round_to_a_zero_error_sum_and_cut_conv0s_output_error(tiny, tiny_stats):
    """Round 13: the image is far from zero mean, so conv 0's output error is mostly each filter's summed rounding
    error times the local brightness. With power-of-two scales nearest rounding left sums of up to 4.6 steps
    (filter 8); zero-sum rounding keeps every sum within half a step, on the same scales, and cuts conv 0's
    output error on a calibration photo by far more than the added weight error costs."""
    from engine.quant.weights import fused_params
    from helpers import IMAGES
    new = quantize_model(tiny, tiny_stats, "log2", per_channel=True)
    old = quantize_model(tiny, tiny_stats, "log2", per_channel=True, first_weights="nearest")
    assert new.settings == {} and old.settings == {"first_weights": "nearest"}
    w, b = fused_params(tiny, 0)
    codes = w.astype(np.float64) / new.layers[0].w_scale.reshape(-1, 1, 1, 1)
    sums_new = (new.layers[0].w_q - codes).reshape(16, -1).sum(axis=1)
    sums_old = (old.layers[0].w_q - codes).reshape(16, -1).sum(axis=1)
    assert np.abs(sums_new).max() <= 0.5 and np.abs(sums_old).max() > 4
    assert np.array_equal(new.layers[0].w_scale, old.layers[0].w_scale)          # still powers of two, the same
    assert np.array_equal(old.layers[0].w_q, np.clip(np.rint(codes), -127, 127))  # the former rounding, kept
    assert all(np.array_equal(new.layers[i].w_q, old.layers[i].w_q) for i in new.layers if i != 0)
    x = tiny.preprocess(sorted(IMAGES.glob("*.jpg"))[0], "letterbox").x.reshape(3, 416, 416).astype(np.float64)
    x = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    cols = np.stack([x[c, dy:dy + 416:5, dx:dx + 416:5] for c in range(3) for dy in range(3) for dx in range(3)])
    cols = cols.reshape(27, -1)
    ref = w.reshape(16, -1).astype(np.float64) @ cols

    def out_err(qm):
        lq = qm.layers[0]
        return float(np.mean(((lq.w_q.reshape(16, -1) * lq.w_scale.reshape(-1, 1)) @ cols - ref) ** 2))
    assert out_err(new) < 0.1 * out_err(old)
    y2l = quantize_model(tiny, tiny_stats, "log2", profile="yolo2_light")      # that profile's truncation, untouched
    assert y2l.layers[0].scheme == "yolo2_light" and y2l.settings == {}
    with pytest.raises(EngineError, match="first_weights"):
        make("log2", first_weights="floor")


def test_auto_says_its_layers_round_as_the_candidate_that_quantized_them():
    # `auto` quantizes with its first candidate (engine/quant/autoquant.py): with log2 first, conv 0's weights are
    # log2's zero-sum codes, and an edit re-deriving them asks the method (qmodel.weight_rounding): auto said nearest
    assert make("auto", candidates="log2,minmax").weight_rounding(True) == "zero_sum"
    assert make("auto", candidates="log2,minmax").weight_rounding(False) == "nearest"
    assert make("auto").weight_rounding(True) == "nearest"          # minmax first
