"""DetectionsView: FLOAT detections and the current mode's detections side by side, as PNGs.

A pure view: `show(pre, float_dets, dets, label)` draws the boxes with `engine.imaging.draw.draw_detections`
on the session's image and sends PNG bytes. The image is recovered from the network input
(`Preprocessed`: the letterboxed tensor and the original size), so the view needs no path and
works for every image a session can take (file, upload, array).
"""
from __future__ import annotations

import html
from typing import Sequence

import ipywidgets as widgets
import numpy as np
import traitlets
from PIL import Image

from engine.imaging.draw import draw_detections
from engine.darknet.image import Preprocessed
from qwidgets._encode import to_png

MAX_SIDE = 416          # PNG size cap: the comm carries the bytes


def image_from_input(pre: Preprocessed) -> Image.Image:
    """The original-size RGB image inside a network input (letterbox border removed, resized back)."""
    _, h, w = pre.x.shape
    iw, ih = pre.inner_size()
    top, left = (h - ih) // 2, (w - iw) // 2
    inner = pre.x[:, top:top + ih, left:left + iw] if pre.resize == "letterbox" else pre.x
    rgb = np.clip(np.rint(inner.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(rgb).resize((pre.image_w, pre.image_h), Image.Resampling.BILINEAR)


def detections_png(image: Image.Image, dets: Sequence) -> bytes:
    im = draw_detections(image, dets)
    im.thumbnail((MAX_SIDE, MAX_SIDE))
    return to_png(im)


def names_text(dets: Sequence) -> str:
    return ", ".join(f"{d.name} {d.score:.2f}" for d in dets) or "none"


class DetectionsView(widgets.HBox):
    """Two images: FLOAT (left) and the session's mode (right), each with its detection list."""

    float_names = traitlets.List(traitlets.Unicode(), help="class names of the FLOAT detections")
    names = traitlets.List(traitlets.Unicode(), help="class names of the current mode's detections")

    def __init__(self, **kwargs) -> None:
        self.images = [widgets.Image(format="png") for _ in range(2)]
        self._captions = [widgets.HTML("<small>FLOAT</small>"), widgets.HTML("<small>run to the end (Run) to see "
                                                                                 "this mode's detections</small>")]
        cols = [widgets.VBox([c, i], layout=widgets.Layout(margin="0 8px 0 0", align_items="flex-start"))
                for c, i in zip(self._captions, self.images)]
        super().__init__(children=cols, **kwargs)
        self.add_class("qw-detections")

    def show(self, pre: Preprocessed, float_dets: Sequence, dets: Sequence | None, label: str,
             image: Image.Image | None = None) -> None:
        """Draw FLOAT detections and, unless `dets` is None (run not finished), `label`'s detections.

        `image` is the original photo when known (Session.image); else it is rebuilt from the input.
        """
        image = image if image is not None else image_from_input(pre)
        with self.hold_sync():
            self.images[0].value = detections_png(image, float_dets)
            self._captions[0].value = f"<small><b>FLOAT</b>: {html.escape(names_text(float_dets))}</small>"
            self.float_names = [d.name for d in float_dets]
            if dets is None:
                self.images[1].value = b""
                self._captions[1].value = (f"<small><b>{html.escape(label)}</b>: run to the end to see "
                                           "detections</small>")
                self.names = []
            else:
                self.images[1].value = detections_png(image, dets)
                self._captions[1].value = f"<small><b>{html.escape(label)}</b>: {html.escape(names_text(dets))}</small>"
                self.names = [d.name for d in dets]
