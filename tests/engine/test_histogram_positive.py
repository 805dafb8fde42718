"""The one-pass |x| + positive-side histograms (AbsHistogram.observe_with_positive) equal the two
separate passes they replace (observe(x) and observe(x[x > 0])) bin for bin, on the real yolov3-tiny
activations of the four photos and on the edge cases that take the other branches."""
from __future__ import annotations

import numpy as np
import pytest

from engine.calib.collect import one_sided_ids, positive_key, quantizable_ids
from engine.calib.histogram import AbsHistogram
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


@pytest.mark.parametrize("case", ["leaky", "negatives_dominate", "no_positives", "zeros", "float64", "growing"])
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
    }[case]
    for got, want in zip(_one_pass(values), _two_pass(values)):
        _same(got, want)
