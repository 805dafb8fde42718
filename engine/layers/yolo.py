"""Darknet [yolo] (YOLOv3/v4 head): sigmoid on x, y, objectness and every class plane.

Anchors are pixels of the network input; `mask` picks this head's anchors. AB's `scale_x_y` maps
x, y as v -> S*v - (S-1)/2; `new_coords=1` skips the sigmoids (the conv already applied them).
Decoding to boxes lives in engine/detect.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.kernels.threads import own_threads, parallel_for
from engine.layers.activations import logistic
from engine.layers.base import LAYERS, BuildContext, Layer, Scratch, darknet_keys


def yolo_activate(x: np.ndarray, n_anchors: int, classes: int, scale_x_y: float = 1.0,
                  new_coords: int = 0) -> np.ndarray:
    """(A*(5+K), H, W) raw head -> same shape with Darknet's in-layer activations applied.

    On the kernel threads by ranges of channels (elementwise: the same bits on any thread count);
    in one thread the 26 px head of yolov3-tiny was 0.5 ms of serial work after the last conv."""
    y = np.empty(x.shape, np.float32)
    with own_threads():
        parallel_for(x.shape[0], lambda lo, hi: yolo_channels(x, y, lo, hi, classes, scale_x_y, new_coords), y.size)
    return y


def yolo_channels(x: np.ndarray, y: np.ndarray, lo: int, hi: int, classes: int, scale_x_y: float = 1.0,
                  new_coords: int = 0) -> None:
    """Channels [lo, hi) of yolo_activate(x) into y (any range: anchors cut anywhere)."""
    per = 5 + classes
    s, shift = np.float32(scale_x_y), np.float32(0.5 * (scale_x_y - 1.0))
    y[lo:hi] = x[lo:hi]
    for a in range(lo // per, -(-hi // per)):
        base = a * per
        xy = y[max(lo, base):min(hi, base + 2)]         # this anchor's x, y planes in [lo, hi)
        if not new_coords:
            logistic(xy)
            logistic(y[max(lo, base + 4):min(hi, base + per)])
        if scale_x_y != 1.0:
            xy[...] = xy * s - shift


@LAYERS.register("yolo")
@dataclass(kw_only=True)
class Yolo(Layer):
    kind = "yolo"
    is_head = True
    float_only = True
    cfg_keys = darknet_keys(
        "anchors beta_nms classes cls_normalizer counters_per_class delta_normalizer dets_for_show "
        "dets_for_track embedding_layer focal_loss ignore_thresh iou_loss iou_normalizer iou_thresh "
        "iou_thresh_kind jitter label_smooth_eps map mask max max_delta new_coords nms_kind num "
        "obj_normalizer objectness_smooth random resize scale_x_y show_details sim_thresh track_ciou_norm "
        "track_history_size truth_thresh")
    mask: tuple[int, ...]
    anchors: tuple[float, ...]
    classes: int
    num: int
    scale_x_y: float
    new_coords: int
    nms_kind: str
    beta_nms: float

    @classmethod
    def build(cls, ctx: BuildContext) -> "Yolo":
        sec = ctx.section
        classes = sec.get_int("classes", 20, lo=1, hi=1 << 16)
        num = sec.get_int("num", 1, lo=1, hi=1 << 12)
        mask = tuple(sec.get_int_list("mask", list(range(num))))
        anchors = tuple(sec.get_float_list("anchors", [0.5] * (2 * num)))
        if len(anchors) < 2 * num:
            raise sec.error(f"anchors= has {len(anchors)} values; num={num} needs {2 * num} (w,h pairs)", "anchors")
        if min(anchors) < 0:
            raise sec.error(f"anchors={sec.raw('anchors')[:60]}: anchor sizes must be >= 0 (pixels)", "anchors")
        bad = [m for m in mask if not 0 <= m < num]
        if bad:
            raise sec.error(f"mask={sec.raw('mask')}: index {bad[0]} is outside 0..{num - 1} (num={num})", "mask")
        scale_x_y = sec.get_float("scale_x_y", 1.0, lo=0.0, hi=16.0)   # AB's cfgs use 1.0..2.0
        src, (c, h, w) = ctx.previous()
        if c != len(mask) * (5 + classes):
            raise sec.error(f"input has {c} channels; {len(mask)} anchors x (5 + {classes} classes) = "
                            f"{len(mask) * (5 + classes)} expected (check the previous conv's filters=)")
        return cls(index=ctx.index, inputs=(src,), in_shapes=((c, h, w),), out_shape=(c, h, w), line=sec.line,
                   source=sec.path, mask=mask, anchors=anchors, classes=classes, num=num,
                   scale_x_y=scale_x_y, new_coords=sec.get_int("new_coords", 0, lo=0, hi=1),
                   nms_kind=sec.get_str("nms_kind", "default"), beta_nms=sec.get_float("beta_nms", 0.6))

    def forward_float(self, xs: list[np.ndarray], prep: None, scratch: Scratch) -> np.ndarray:
        return yolo_activate(xs[0], len(self.mask), self.classes, self.scale_x_y, self.new_coords)
