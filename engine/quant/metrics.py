"""COCO-style detection metrics of quantized detections against reference (FLOAT) detections.

The reference detections are the ground truth (every box counts, none is a crowd); predictions are
ranked by score. The rules are pycocotools' `COCOeval` for bounding boxes, area range "all" and
maxDets 100, reproduced so the numbers are the same (tests check them against pycocotools):
* per image and class, predictions in score order (stable) each take the still-unmatched truth box
  with the highest IoU >= t (an IoU equal to the best so far moves to the later box, as COCOeval);
* per class, predictions of all images are ranked by score (stable, image order first), precision
  is made monotone from the right and sampled at 101 recall points (0, 0.01, ..., 1);
* classes without a truth box are left out of the mean; a class with truth boxes but no prediction
  scores 0. mAP@[.5:.95] averages over IoU 0.50, 0.55, ..., 0.95.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from engine.darknet.detect import Detection

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETS = 100


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes (n, 4) and (m, 4) in x1, y1, x2, y2 -> (n, m)."""
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _boxes(dets: Sequence[Detection]) -> np.ndarray:
    return np.array([[d.x1, d.y1, d.x2, d.y2] for d in dets], np.float64).reshape(-1, 4)


def match(preds: Sequence[Detection], truth: Sequence[Detection], thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One image and class: (tp (T, n) bool for the predictions in the given order, ious of the matches).

    `preds` must already be in rank order. ious (T, n) holds the IoU of each match (nan if none).
    """
    n = len(preds)
    tp = np.zeros((len(thresholds), n), bool)
    matched_iou = np.full((len(thresholds), n), np.nan)
    if n == 0 or not truth:
        return tp, matched_iou
    ious = box_iou(_boxes(preds), _boxes(truth))
    for ti, t in enumerate(thresholds):
        taken = np.zeros(len(truth), bool)
        for d in range(n):
            best, bound = -1, min(t, 1 - 1e-10)
            for g in range(len(truth)):
                if taken[g] or ious[d, g] < bound:
                    continue
                bound, best = ious[d, g], g
            if best >= 0:
                taken[best] = True
                tp[ti, d] = True
                matched_iou[ti, d] = ious[d, best]
    return tp, matched_iou


def average_precision_101(tp: np.ndarray, n_truth: int) -> np.ndarray:
    """AP per threshold row of tp (T, n) (predictions already ranked), COCO's 101-point interpolation."""
    tps = np.cumsum(tp, axis=1, dtype=np.float64)
    fps = np.cumsum(~tp, axis=1, dtype=np.float64)
    out = np.zeros(tp.shape[0])
    if tp.shape[1] == 0:
        return out
    for ti in range(tp.shape[0]):
        rc = tps[ti] / n_truth
        pr = tps[ti] / (fps[ti] + tps[ti])     # COCOeval adds eps here: a perfect class then scores 1 - 1e-16
        pr = np.maximum.accumulate(pr[::-1])[::-1]
        inds = np.searchsorted(rc, RECALL_POINTS, side="left")
        q = np.where(inds < pr.size, pr[np.minimum(inds, pr.size - 1)], 0.0)
        out[ti] = q.mean()
    return out


@dataclass
class CocoResult:
    map50_95: float                                  # mean over classes and IoU 0.50:0.95
    map50: float                                     # IoU 0.5 only
    per_class: dict[int, np.ndarray] = field(default_factory=dict)   # class -> AP per threshold
    tp50: int = 0                                    # predictions matched at IoU 0.5
    n_truth: int = 0
    n_preds: int = 0
    ious50: list = field(default_factory=list)       # IoU of each match at 0.5


def coco_map(truth: Sequence[Sequence[Detection]], preds: Sequence[Sequence[Detection]],
             thresholds: np.ndarray = IOU_THRESHOLDS) -> CocoResult:
    """mAP of `preds` against `truth`, both one list of detections per image (same image order).

    With no truth box at all, mAP is 1.0 if there is no prediction either, else 0.0 (pycocotools
    reports -1 there). Threshold 0.5 must be among `thresholds` for `map50` / `tp50`.
    """
    if len(truth) != len(preds):
        raise ValueError(f"coco_map: {len(truth)} truth images but {len(preds)} prediction images")
    thresholds = np.asarray(thresholds, np.float64)
    i50 = int(np.flatnonzero(np.isclose(thresholds, 0.5))[0]) if np.isclose(thresholds, 0.5).any() else None
    classes = sorted({d.class_id for dets in truth for d in dets})
    n_truth = sum(len(t) for t in truth)
    n_preds = sum(len(p) for p in preds)
    per_class: dict[int, np.ndarray] = {}
    tp50, ious50 = 0, []
    for k in classes:
        scores, tps, n_gt = [], [], 0
        for gts, ps in zip(truth, preds):
            gt = [d for d in gts if d.class_id == k]
            n_gt += len(gt)
            dt = [d for d in ps if d.class_id == k]
            order = np.argsort([-d.score for d in dt], kind="mergesort")[:MAX_DETS]
            dt = [dt[j] for j in order]
            tp, miou = match(dt, gt, thresholds)
            scores.extend(d.score for d in dt)
            tps.append(tp)
            if i50 is not None:
                tp50 += int(tp[i50].sum())
                ious50.extend(miou[i50][tp[i50]].tolist())
        tp_all = np.concatenate(tps, axis=1) if tps else np.zeros((len(thresholds), 0), bool)
        rank = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")
        per_class[k] = average_precision_101(tp_all[:, rank], n_gt)
    if not classes:
        empty = float(n_preds == 0)
        return CocoResult(empty, empty, {}, 0, 0, n_preds, [])
    aps = np.array(list(per_class.values()))           # (K, T)
    return CocoResult(float(aps.mean()), float(aps[:, i50].mean()) if i50 is not None else float("nan"),
                      per_class, tp50, n_truth, n_preds, ious50)
