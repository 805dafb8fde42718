"""Labels of boxes that share a corner (a car also found as a truck, an object and its shifted twin) are drawn one
under the other: the second label was drawn over the first ('1 car 0.80' hidden under '2 truck 0.60')."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from PIL import Image

from engine.imaging.draw import PALETTE, draw_detections, free_row


def det(class_id: int, x1: float, y1: float, x2: float, y2: float) -> SimpleNamespace:
    return SimpleNamespace(class_id=class_id, name=f"c{class_id}", score=0.5, x1=x1, y1=y1, x2=x2, y2=y2)


def test_labels_of_boxes_sharing_a_corner_do_not_cover_each_other():
    im = Image.new("RGB", (200, 200))
    dets = [det(0, 20, 60, 150, 180), det(1, 22, 62, 140, 170)]
    out = np.asarray(draw_detections(im, dets, width=1, font_size=12, labels=["1 car 0.80", "2 truck 0.60"]))
    strip = out[40:60, 40:60].reshape(-1, 3)            # the first label's fill, above the boxes
    assert (strip == PALETTE[0]).all(axis=1).sum() > 50
    below = out[62:100, 40:60].reshape(-1, 3)           # the second one, moved under the first
    assert (below == PALETTE[1]).all(axis=1).sum() > 50


def test_a_label_moves_below_the_labels_it_would_cover_and_only_then():
    placed = [(10, 10, 60, 26)]
    assert free_row(placed, 100, 10, 50, 16, 200) == 10                  # beside it: stays
    assert free_row(placed, 30, 12, 50, 16, 200) == 26                   # under it
    assert free_row([*placed, (30, 26, 90, 42)], 30, 12, 50, 16, 200) == 42
    assert free_row(placed, 30, 12, 50, 16, 30) == 12                    # no room below: where it was
