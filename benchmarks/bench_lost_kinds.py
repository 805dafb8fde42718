"""What kind of loss each lost detection is: a score drop, a moved box, an NMS flip, or a box another FLOAT box took.

For a quantized file (as `python -m engine quantize` writes it) and validation sets, prints each set's INT
mAP@[.5:.95], lost and extra (`detection_agreement`, COCO's pairing), then for every FLOAT detection that pairing
leaves unmatched, the head position it comes from and what INT computes there:
* "score drop": the position's INT score is at or under the threshold (with "moved" when its box is also at IoU < .5);
* "moved box": the position still scores over the threshold but its INT box is at IoU < .5 with the FLOAT one;
* "NMS flip": its INT box is there, but NMS suppressed it: a same-class INT box it overlaps above the NMS threshold
  now scores higher (the position and score of that box are printed);
* "taken": its INT box survived NMS but COCO's pairing gave it to another FLOAT box.
docs/quantization.md, round 13, classifies the best configuration's lost detections with it.

    python benchmarks/bench_lost_kinds.py QUANTIZED.npz [--sets first,second,seed2,...]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.darknet.detect import candidates, correct_boxes, detect_outputs  # noqa: E402
from engine.darknet.nms import box_iou  # noqa: E402
from engine.model import load  # noqa: E402
from engine.quant.executor import Executor, FloatView  # noqa: E402
from engine.quant.fitness import detection_agreement  # noqa: E402
from engine.quant.metrics import box_iou as pair_iou  # noqa: E402
from engine.quant.qmodel import QuantizedModel  # noqa: E402
from engine.quant.valset import random_variants, second_variants, variants  # noqa: E402

SHARED = Path(os.environ.get("QW_SHARED", ROOT.parent / "shared"))
THRESH, NMS = 0.25, 0.45


def unmatched(truth, preds) -> list:
    """The FLOAT detections COCO's pairing at IoU .5 leaves unmatched (what `Agreement.missed` counts): per class,
    INT detections by score each take the free FLOAT box of highest IoU >= .5 (a tie to the later box, as
    engine/quant/metrics.match)."""
    def corners(ds):
        return np.array([[d.x1, d.y1, d.x2, d.y2] for d in ds], np.float64).reshape(-1, 4)
    out = []
    for k in {d.class_id for d in truth}:
        gt = [d for d in truth if d.class_id == k]
        dt = sorted((d for d in preds if d.class_id == k), key=lambda d: -d.score)
        ious = pair_iou(corners(dt), corners(gt))
        taken = np.zeros(len(gt), bool)
        for row in ious:
            best, bound = -1, 0.5
            for g, v in enumerate(row):
                if not taken[g] and v >= bound:
                    best, bound = g, v
            if best >= 0:
                taken[best] = True
        out += [g for g, t in zip(gt, taken) if not t]
    return out


def positions(model, outs, pre):
    """Every head position's box (relative to the image), and its class probabilities (objectness x class)."""
    c, _ = candidates(model, outs, 0.0)     # thresh 0: every position, in the same order for FLOAT and INT
    return correct_boxes(c.boxes, pre), c.probs


def kind(g, fb, fp, qb, qp, dets) -> str:
    """What INT does at the position FLOAT detection g comes from (see the module doc)."""
    k, box = g.class_id, np.array([g.cx, g.cy, g.w, g.h])
    j = int(np.argmin(np.abs(fp[:, k] - g.score) + np.abs(fb - box).sum(axis=1)))
    own = box_iou(box, qb[j])
    where = f"FLOAT {g.name} {g.score:.4f}, INT {qp[j, k]:.4f} at its position {j} (box IoU {own:.2f})"
    if qp[j, k] <= THRESH:
        return ("score drop, moved" if own < 0.5 else "score drop") + ": " + where
    if own < 0.5:
        return "moved box: " + where
    if not any(d.class_id == k and abs(d.score - qp[j, k]) < 1e-9 for d in dets):
        rivals = np.flatnonzero((qp[:, k] > qp[j, k]) & (box_iou(qb[j], qb) > NMS))
        rivals = ", ".join(f"position {r} INT {qp[r, k]:.4f} (FLOAT {fp[r, k]:.4f}) at IoU {box_iou(qb[j], qb[r]):.2f}"
                           for r in rivals[np.argsort(-qp[rivals, k])])
        return f"NMS flip: {where}; suppressed by {rivals}"
    return "taken: " + where + "; paired with another FLOAT box"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("quantized", help="a quantized model file of yolov3-tiny (python -m engine quantize ... -o FILE)")
    ap.add_argument("--sets", default="first,second," + ",".join(f"seed{s}" for s in range(2, 19)),
                    help="first (valset.variants), second (second_variants), seedN (random_variants(..., 10, N))")
    ap.add_argument("--images", default=str(SHARED / "images"))
    ap.add_argument("--models", default=str(SHARED / "models"))
    args = ap.parse_args(argv)
    model = load(Path(args.models) / "yolov3-tiny.cfg", Path(args.models) / "yolov3-tiny.weights")
    ex = Executor(model, QuantizedModel.load(args.quantized), "int")
    make = {"first": lambda: variants(args.images), "second": lambda: second_variants(args.images)}
    lost_total = 0
    for name in [s for s in args.sets.split(",") if s]:
        items = make[name]() if name in make else random_variants(args.images, 10, seed=int(name.removeprefix("seed")))
        truth, preds, lines = [], [], []
        for v in items:
            pre = model.preprocess(v.image, "letterbox")
            fo, qo = model.forward(pre.x), FloatView(ex.run(pre.x)[0])
            truth.append(detect_outputs(model, fo, pre, THRESH, NMS))
            preds.append(detect_outputs(model, qo, pre, THRESH, NMS))
            lost = unmatched(truth[-1], preds[-1])
            if lost:
                (fb, fp), (qb, qp) = positions(model, fo, pre), positions(model, qo, pre)
                lines += [f"    {v.name}: {kind(g, fb, fp, qb, qp, preds[-1])}" for g in lost]
        a = detection_agreement(truth, preds)
        lost_total += a.missed
        print(f"{name}: INT mAP@[.5:.95] {a.map50_95:.3f} lost {a.missed} extra {a.extra}", flush=True)
        if lines:
            print("\n".join(lines), flush=True)
    print(f"lost in all: {lost_total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
