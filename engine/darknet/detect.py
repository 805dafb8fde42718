"""Decoding of [yolo] / [region] heads, Darknet's per-class NMS, and boxes in original pixels.

Follows pj `get_network_boxes` + `do_nms_sort` (darknet-semantics.md B.6): thresholds are strict
(`> thresh`), a box's class probability is objectness x class score, NMS is greedy per class by
probability with suppression when IoU > nms, and boxes are mapped back through the letterbox.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from engine.darknet.image import Preprocessed


@dataclass(frozen=True)
class Detection:
    """One (box, class) pair above threshold. cx..h relative to the image; x1..y2 in pixels, unclipped."""
    class_id: int
    name: str
    score: float
    objectness: float
    cx: float
    cy: float
    w: float
    h: float
    x1: float
    y1: float
    x2: float
    y2: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Candidates:
    """Boxes (N, 4) as cx, cy, w, h relative to the network input, objectness (N,), probs (N, K)."""
    boxes: np.ndarray
    objectness: np.ndarray
    probs: np.ndarray


def decode_yolo(y: np.ndarray, mask: Sequence[int], anchors: Sequence[float], classes: int, net_w: int, net_h: int,
                thresh: float) -> Candidates:
    """y: the [yolo] layer output (A*(5+K), H, W), already activated. Order: cell row-major, then anchor."""
    a = len(mask)
    _, h, w = y.shape
    t = y.reshape(a, 5 + classes, h, w).transpose(2, 3, 0, 1).reshape(h * w * a, 5 + classes)
    obj = t[:, 4]
    keep = np.flatnonzero(obj > thresh)
    t = t[keep].astype(np.float64)
    cell, anchor = np.divmod(keep, a)
    row, col = np.divmod(cell, w)
    aw = np.array([anchors[2 * m] for m in mask])[anchor]
    ah = np.array([anchors[2 * m + 1] for m in mask])[anchor]
    boxes = np.stack([(col + t[:, 0]) / w, (row + t[:, 1]) / h, np.exp(t[:, 2]) * aw / net_w,
                      np.exp(t[:, 3]) * ah / net_h], axis=1)
    probs = t[:, 4:5] * t[:, 5:]
    probs[probs <= thresh] = 0.0
    return Candidates(boxes, t[:, 4], probs)


def decode_region(y: np.ndarray, num: int, anchors: Sequence[float], classes: int, thresh: float) -> Candidates:
    """y: the [region] output (num*(5+K), H, W), activated. Every cell/anchor is a candidate (as pj)."""
    _, h, w = y.shape
    t = y.reshape(num, 5 + classes, h, w).transpose(2, 3, 0, 1).reshape(h * w * num, 5 + classes).astype(np.float64)
    cell, anchor = np.divmod(np.arange(h * w * num), num)
    row, col = np.divmod(cell, w)
    an = np.asarray(anchors, np.float64)
    boxes = np.stack([(col + t[:, 0]) / w, (row + t[:, 1]) / h, np.exp(t[:, 2]) * an[2 * anchor] / w,
                      np.exp(t[:, 3]) * an[2 * anchor + 1] / h], axis=1)
    obj = np.where(t[:, 4] > thresh, t[:, 4], 0.0)
    probs = obj[:, None] * t[:, 5:]
    probs[probs <= thresh] = 0.0
    keep = np.flatnonzero(obj > 0)
    return Candidates(boxes[keep], obj[keep], probs[keep])


def correct_boxes(boxes: np.ndarray, pre: Preprocessed) -> np.ndarray:
    """Map boxes relative to the network input back to relative-to-image (undo the letterbox)."""
    _, net_h, net_w = pre.x.shape
    new_w, new_h = pre.inner_size()
    b = boxes.copy()
    b[:, 0] = (b[:, 0] - (net_w - new_w) / 2.0 / net_w) / (new_w / net_w)
    b[:, 1] = (b[:, 1] - (net_h - new_h) / 2.0 / net_h) / (new_h / net_h)
    b[:, 2] *= net_w / new_w
    b[:, 3] *= net_h / new_h
    return b


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one centre-format box a (4,) with boxes b (N, 4), as Darknet's `box_iou`."""
    ow = np.minimum(a[0] + a[2] / 2, b[:, 0] + b[:, 2] / 2) - np.maximum(a[0] - a[2] / 2, b[:, 0] - b[:, 2] / 2)
    oh = np.minimum(a[1] + a[3] / 2, b[:, 1] + b[:, 3] / 2) - np.maximum(a[1] - a[3] / 2, b[:, 1] - b[:, 3] / 2)
    inter = np.where((ow < 0) | (oh < 0), 0.0, ow * oh)
    union = a[2] * a[3] + b[:, 2] * b[:, 3] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_diou(a: np.ndarray, b: np.ndarray, beta: float = 0.6) -> np.ndarray:
    """AB's DIoU used by `nms_kind=greedynms`: IoU - (d^2/c^2)^beta."""
    iou = box_iou(a, b)
    cw = np.maximum(a[0] + a[2] / 2, b[:, 0] + b[:, 2] / 2) - np.minimum(a[0] - a[2] / 2, b[:, 0] - b[:, 2] / 2)
    ch = np.maximum(a[1] + a[3] / 2, b[:, 1] + b[:, 3] / 2) - np.minimum(a[1] - a[3] / 2, b[:, 1] - b[:, 3] / 2)
    c2 = cw * cw + ch * ch
    d2 = (a[0] - b[:, 0]) ** 2 + (a[1] - b[:, 1]) ** 2
    ratio = np.divide(d2, c2, out=np.zeros_like(d2), where=c2 > 0)
    return iou - ratio ** beta


def nms_sort(c: Candidates, nms: float, kind: str = "default") -> np.ndarray:
    """Darknet `do_nms_sort`: per class, greedy by probability; returns the filtered probs (N, K)."""
    probs = c.probs.copy()
    overlap = box_diou if kind == "greedynms" else box_iou
    if nms <= 0:
        return probs
    for k in range(probs.shape[1]):
        idx = np.flatnonzero(probs[:, k] > 0)
        if idx.size < 2:
            continue
        idx = idx[np.argsort(-probs[idx, k], kind="stable")]
        for pos, i in enumerate(idx):
            if probs[i, k] == 0:
                continue
            rest = idx[pos + 1:]
            rest = rest[probs[rest, k] > 0]
            if rest.size:
                probs[rest[overlap(c.boxes[i], c.boxes[rest]) > nms], k] = 0.0
    return probs


def merge(parts: list[Candidates], classes: int) -> Candidates:
    if not parts:
        return Candidates(np.zeros((0, 4)), np.zeros(0), np.zeros((0, classes)))
    return Candidates(np.concatenate([p.boxes for p in parts]), np.concatenate([p.objectness for p in parts]),
                      np.concatenate([p.probs for p in parts]))


def candidates(model, outs: Sequence[np.ndarray], thresh: float) -> tuple[Candidates, str]:
    """Decode every detection head of `model` from its outputs (network-relative boxes)."""
    _, net_h, net_w = model.input_shape
    parts, kind = [], "default"
    for layer in model.layers:       # outs may dequantize on access: read the heads only
        if layer.kind == "yolo":
            parts.append(decode_yolo(outs[layer.index], layer.mask, layer.anchors, layer.classes, net_w, net_h, thresh))
            kind = layer.nms_kind if layer.nms_kind == "greedynms" else kind
        elif layer.kind == "region":
            parts.append(decode_region(outs[layer.index], layer.num, layer.anchors, layer.classes, thresh))
    return merge(parts, model.num_classes), kind


def detect_outputs(model, outs: Sequence[np.ndarray], pre: Preprocessed, thresh: float = 0.25,
                   nms: float = 0.45) -> list[Detection]:
    """Detections (sorted by score, highest first) from a forward pass's outputs."""
    if not 0 <= thresh < 1:
        raise ValueError(f"thresh={thresh}: expected 0 <= thresh < 1")
    if not 0 <= nms <= 1:
        raise ValueError(f"nms={nms}: expected 0 <= nms <= 1")
    c, kind = candidates(model, outs, thresh)
    if c.boxes.shape[0] == 0:
        return []
    c.boxes = correct_boxes(c.boxes, pre)
    probs = nms_sort(c, nms, kind)
    names = model.class_names
    dets = []
    for i, k in zip(*np.nonzero(probs > thresh)):
        cx, cy, bw, bh = (float(v) for v in c.boxes[i])
        dets.append(Detection(int(k), names[k] if k < len(names) else f"class_{k}", float(probs[i, k]),
                              float(c.objectness[i]), cx, cy, bw, bh, (cx - bw / 2) * pre.image_w,
                              (cy - bh / 2) * pre.image_h, (cx + bw / 2) * pre.image_w, (cy + bh / 2) * pre.image_h))
    dets.sort(key=lambda d: -d.score)
    return dets
