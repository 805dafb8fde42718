"""Detection-head error split: where in a [yolo] / [region] head the quantized run departs from FLOAT.

A head's tensor is, per anchor, 4 box coordinates (x, y, w, h), objectness and the class scores. One
scale for all of them is the classic YOLO quantization failure: objectness and class logits need range,
x/y need resolution. `head_errors(model, float_outs, outs)` gives, per head and per anchor, the SQNR
(dB, higher is better) and mean |error| of x/y, w/h, objectness and class scores, on the heads'
outputs (after their in-layer activations, as the decoder reads them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from engine.quant.fitness import error_stats

PARTS = {"x/y": slice(0, 2), "w/h": slice(2, 4), "objectness": slice(4, 5), "class": slice(5, None)}


@dataclass
class HeadError:
    layer: int
    anchor: int                # anchor index in the model's anchor list
    anchor_wh: tuple[float, float]
    part: str                  # one of PARTS
    sqnr_db: float
    mean_abs: float
    max_abs: float


def head_layout(layer) -> tuple[list[int], int] | None:
    """(anchor indices, classes) of an anchor-based head ([yolo]: its mask, [region]: all num), else None."""
    if not getattr(layer, "is_head", False) or not hasattr(layer, "anchors"):
        return None
    anchors = list(getattr(layer, "mask", None) or range(layer.num))
    return anchors, int(layer.classes)


def head_errors(model, float_outs: Sequence[np.ndarray], outs: Sequence[np.ndarray]) -> list[HeadError]:
    """Per head, anchor and part: SQNR and |error| of `outs` (a quantized run) against `float_outs`."""
    rows = []
    for i, layer in enumerate(model.layers):
        layout = head_layout(layer)
        if layout is None:
            continue
        anchors, classes = layout
        _, h, w = float_outs[i].shape
        ref = np.asarray(float_outs[i], np.float32).reshape(len(anchors), 5 + classes, h, w)
        run = np.asarray(outs[i], np.float32).reshape(len(anchors), 5 + classes, h, w)
        for a, anchor in enumerate(anchors):
            wh = (float(layer.anchors[2 * anchor]), float(layer.anchors[2 * anchor + 1]))
            for part, sl in PARTS.items():
                st = error_stats(ref[a, sl], run[a, sl])
                err = np.abs(run[a, sl] - ref[a, sl])
                rows.append(HeadError(i, anchor, wh, part, float(st.sqnr_db), float(err.mean()), float(st.max_abs)))
    return rows
