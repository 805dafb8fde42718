"""Letterbox detections on the shared photos against Darknet's own (pjreddie, CPU build)."""
from __future__ import annotations

import pytest

from helpers import IMAGES, darknet_detections, match_detections


@pytest.mark.parametrize("image", ["dog.jpg", "horses.jpg", "person.jpg", "scream.jpg"])
def test_letterbox_detections_match_darknet(tiny, image):
    ref = darknet_detections()[image]
    pre = tiny.preprocess(IMAGES / image)
    assert (pre.image_w, pre.image_h) == (ref["width"], ref["height"])
    ours = [d.to_dict() for d in tiny.detect(IMAGES / image, thresh=0.25, nms=0.45)]
    pairs = match_detections(ours, ref["detections"], min_iou=0.95)
    missing = [r for r, o in pairs if o is None]
    assert not missing, f"{image}: Darknet detections not found: {missing}"
    assert len(ours) == len(ref["detections"]), f"{image}: extra detections {ours}"
    for r, o in pairs:
        assert abs(o["score"] - r["score"]) <= 0.02, (image, r, o)
        assert o["name"] == r["name"]


def test_darknet_reference_is_not_trivially_empty():
    refs = darknet_detections()
    assert sum(len(v["detections"]) for v in refs.values()) == 18
