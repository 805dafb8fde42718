"""DetectionsView: the photo it draws on, without the photo at hand, is the engine's letterbox undone."""
from __future__ import annotations

import numpy as np
from PIL import Image

from engine.imaging.samples import sample
from qwidgets.detections_view import DetectionsView, image_from_input


def test_the_image_rebuilt_from_the_input_is_the_letterbox_undone(tiny):
    pre = tiny.preprocess(sample("dog"))
    _, h, w = pre.x.shape
    iw, ih = pre.inner_size()
    top, left = (h - ih) // 2, (w - iw) // 2                        # independent: the centred inner image
    inner = pre.x[:, top:top + ih, left:left + iw]
    rgb = np.clip(np.rint(inner.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)
    want = Image.fromarray(rgb).resize((pre.image_w, pre.image_h), Image.Resampling.BILINEAR)
    got = image_from_input(pre)
    assert got.size == (pre.image_w, pre.image_h)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    view = DetectionsView()
    view.show(pre, [], None, "INT")                                 # draws on that image
    assert view.images[0].value[:4] == b"\x89PNG"
