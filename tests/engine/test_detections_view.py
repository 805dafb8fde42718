"""detect_outputs returns a lazy list view (`Detections`): the same Detection values whichever way
they are read (one by one before anything is built, or all at once), and list behaviour."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from engine.darknet.detect import Detection, Detections, detect_outputs
from helpers import IMAGES


@pytest.fixture(scope="module")
def low_thresh(tiny):
    pre = tiny.preprocess(sorted(IMAGES.glob("*.jpg"))[0])
    outs = tiny.forward(pre.x)
    return tiny, outs, pre


def test_lazy_items_equal_the_built_list_field_for_field(low_thresh):
    model, outs, pre = low_thresh
    lazy = detect_outputs(model, outs, pre, 0.005, 0.45)
    assert isinstance(lazy, Detections) and len(lazy) > 20
    one_by_one = [lazy[i] for i in range(len(lazy))]          # built singly: nothing materialised yet
    assert lazy._rows is None
    built = list(detect_outputs(model, outs, pre, 0.005, 0.45))
    assert one_by_one == built and all(type(d) is Detection for d in built)
    assert lazy[-1] == built[-1] and lazy[3:7] == built[3:7]
    assert lazy[5] is lazy[5] and lazy[-1] is lazy[len(lazy) - 1]   # one object per item (id-keyed callers)
    assert lazy[5] is list(lazy)[5] and lazy[6] is list(lazy)[6]
    scores = [d.score for d in built]
    assert scores == sorted(scores, reverse=True)
    for d in built[:20]:   # boxes in pixels follow from the relative box, as Darknet maps them back
        assert d.x1 == pytest.approx((d.cx - d.w / 2) * pre.image_w) and d.name == model.class_names[d.class_id]
    with pytest.raises(IndexError):
        lazy[len(lazy)]



def test_a_small_slice_builds_only_its_items(low_thresh):
    """dets[:10] of 100k+ detections reads ten items: nothing else is built, and the values and the
    objects are those of the whole list (steps, negative bounds, empty and large slices alike)."""
    model, outs, pre = low_thresh
    lazy = detect_outputs(model, outs, pre, 0.005, 0.45)
    n = len(lazy)
    assert n > 4 * 10                                  # every cut below is a small slice
    cuts = [slice(None, 10), slice(3, 7), slice(-5, None), slice(None, 12, 3), slice(8, 2, -2), slice(5, 5)]
    parts = [lazy[c] for c in cuts]
    assert lazy._rows is None and all(type(p) is list for p in parts)
    built = list(detect_outputs(model, outs, pre, 0.005, 0.45))
    assert parts == [built[c] for c in cuts]
    assert lazy[:10][4] is lazy[4]                     # the same objects the item reads give
    assert lazy[: n // 2] == built[: n // 2] and lazy._rows is not None   # a large slice builds the list once
    assert lazy[:10][0] is lazy[0] is list(lazy)[0]

def test_detections_behave_as_a_list(low_thresh):
    model, outs, pre = low_thresh
    dets = detect_outputs(model, outs, pre)
    assert dets == list(dets) and list(dets) == dets and dets != list(dets)[:-1]
    assert dets + [] == list(dets) and [] + dets == list(dets)
    assert pickle.loads(pickle.dumps(dets)) == dets
    assert repr(dets) == repr(list(dets))
    empty = detect_outputs(model, [np.full_like(o, -30.0) for o in outs], pre)
    assert empty == [] and len(empty) == 0 and not empty
