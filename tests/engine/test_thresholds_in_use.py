"""The layer panel's per-method threshold marks (Session.thresholds) are the thresholds quantizing with each
method sets: under the calibration rules the first layer is never clipped, so kl / mse / percentile no longer
mark layer 0's output below its maximum (they did: each calibrator ran on the raw |x| histogram)."""
from __future__ import annotations

import pytest

from engine import Session
from engine.calib import make
from engine.calib.views import activation_scales


@pytest.fixture(scope="module")
def thresholds_by_method(tiny, tiny_q):
    s = Session(tiny, tiny_q, "int")
    return s, {m: activation_scales(tiny, tiny_q.stats, make(m))[1] for m in s.thresholds(0)}


def test_the_first_layer_is_marked_at_its_maximum_not_below(tiny_q, thresholds_by_method):
    s, _ = thresholds_by_method
    top = tiny_q.stats.hists["0+"].amax          # layer 0 is leaky: its positive side is what is quantized
    raw, used = s.thresholds(0, raw=True), s.thresholds(0)
    for m in ("kl", "mse", "percentile"):
        assert raw[m] < 0.9 * tiny_q.stats.hists["0"].amax, (m, raw[m])        # what the marks showed
        assert used[m] == top, (m, used[m], top)
    assert used["minmax"] == top == tiny_q.thresholds["0"]


@pytest.mark.parametrize("tensor", ["input", "0", "4", "12", "15"])
def test_every_method_marks_what_quantizing_with_it_sets(thresholds_by_method, tensor):
    s, expected = thresholds_by_method
    got = s.thresholds(tensor)
    assert got and got == {m: expected[m][tensor] for m in got}


def test_a_model_made_without_the_rules_is_marked_without_them(tiny, tiny_kl_pt):
    s = Session(tiny, tiny_kl_pt, "int")        # quantize_model(..., rules=()): raw histograms
    used, raw = s.thresholds(0), s.thresholds(0, raw=True)
    assert {m: t for m, t in used.items() if m != "kl"} == {m: t for m, t in raw.items() if m != "kl"}
    # its own method with its own settings (clip_max=1): the threshold it uses, not default kl's
    assert used["kl"] == tiny_kl_pt.thresholds["0"] != raw["kl"]


def test_a_head_output_no_method_quantizes_has_no_marks(tiny, tiny_q):
    assert Session(tiny, tiny_q, "int").thresholds(16) == {}       # [yolo] stays FLOAT
