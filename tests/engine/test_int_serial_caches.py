"""The INT path's per-layer values kept across calls (weight scales as float64, the Winograd kernel's
4 * bias, route rescale tables) follow edits: an edit after a run is seen by the next run, exactly as a
fresh executor on the edited quantized model computes it (edits replace arrays, never write into them)."""
from __future__ import annotations

import copy

import numpy as np

from engine.quant.executor import Executor
from engine.session import Session
from helpers import IMAGES

WINOGRAD_CONV = 8     # yolov3-tiny: 3x3 stride 1 on 26x26, the integer Winograd kernel with its bias folded
POINTWISE_CONV = 13   # 1x1: the im2col bands


def _fresh(session, index: int) -> np.ndarray:
    """Layer `index` of a new executor on the session's (edited) model and quantized model."""
    ex = Executor(session.model, session.qmodel, "int")
    values, _ = ex.run(session.x, stop=index)
    return values[index].q.q


def test_bias_edits_after_a_run_are_seen_by_the_next_run(tiny, tiny_q):
    s = Session(tiny, tiny_q, "int", IMAGES / "dog.jpg")
    s.run_to(POINTWISE_CONV)
    before = {i: s.output_q(i).q.copy() for i in (WINOGRAD_CONV, POINTWISE_CONV)}
    for i in (WINOGRAD_CONV, POINTWISE_CONV):
        b = s.weights(i, "int8")["b_q"]
        s.edit_weights(i, 3, int(b[3]) + 4000, param="biases", target="int8")
    s.rerun()
    for i in (WINOGRAD_CONV, POINTWISE_CONV):
        after = s.output_q(i).q
        assert (after[3] != before[i][3]).any()
        np.testing.assert_array_equal(after, _fresh(s, i))
    s.undo()
    s.undo()
    s.rerun()
    for i in (WINOGRAD_CONV, POINTWISE_CONV):
        np.testing.assert_array_equal(s.output_q(i).q, before[i])


def test_float_edit_rederives_weight_scales_seen_by_the_next_run(tiny, tiny_q):
    s = Session(tiny, tiny_q, "int", IMAGES / "dog.jpg")
    s.run_to(WINOGRAD_CONV)
    before = s.output_q(WINOGRAD_CONV).q.copy()
    w_scale = s.qmodel.layers[WINOGRAD_CONV].w_scale
    s.scale_filter(WINOGRAD_CONV, 5, 3.0, target="float")
    assert s.qmodel.layers[WINOGRAD_CONV].w_scale[5] != w_scale[5]      # a new weight scale for filter 5
    s.rerun()
    after = s.output_q(WINOGRAD_CONV).q
    assert (after[5] != before[5]).any()
    np.testing.assert_array_equal(after, _fresh(s, WINOGRAD_CONV))


def test_route_tables_follow_a_scale_edit(tiny, tiny_q):
    s = Session(tiny, tiny_q, "int", IMAGES / "dog.jpg")
    s.run_to(20)                                     # the 26x26 route: upsampled 13x13 + layer 8
    before = s.output_q(20)
    s.set_scale("18", 0.5 * s.qmodel.scales["18"])   # the upsample keeps it: the route's ratio changes
    s.rerun()
    after = s.output_q(20)
    fresh = Executor(s.model, copy.deepcopy(s.qmodel), "int").run(s.x, stop=20)[0][20].q
    np.testing.assert_array_equal(after.q, fresh.q)
    assert after.scale == fresh.scale and (after.q != before.q).any()
