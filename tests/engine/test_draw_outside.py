"""Boxes are unclipped (Darknet): one lying wholly outside the image is skipped when drawing, not a crash."""
import numpy as np
from PIL import Image

from engine.darknet.detect import Detection
from engine.imaging.draw import draw_detections


def det(x1, y1, x2, y2):
    return Detection(0, "a", 0.5, 0.5, 0, 0, 0, 0, x1, y1, x2, y2)


def test_boxes_outside_the_image_are_skipped():
    im = Image.new("RGB", (40, 30), (0, 0, 0))
    dets = [det(-20, -30, 10, -5), det(50, 5, 70, 20), det(-9, -9, -1, 40), det(5, 5, 20, 20)]
    out = draw_detections(im, dets)
    assert np.asarray(out).any()          # the visible box is drawn
