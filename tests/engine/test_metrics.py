"""COCO mAP of quantized detections against FLOAT detections: engine/quant/metrics.py against pycocotools
on real yolov3-tiny detections (INT kl per-tensor, the method that loses most, and jittered boxes that
spread the IoUs over 0.5..0.95), plus the validation variants and the Scorer."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from engine.darknet.detect import detect_outputs
from engine.quant.executor import Executor, FloatView
from engine.quant.fitness import detection_agreement
from engine.quant.metrics import coco_map
from engine.quant.qmodel import quantize_model
from engine.quant.valset import KINDS, variants
from helpers import IMAGES


def pycoco(truth, preds, iou=None):
    """(mAP@[.5:.95], mAP@0.5) by pycocotools' COCOeval on the same detections."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    classes = sorted({d.class_id for dets in truth + preds for d in dets})
    gt = {"images": [{"id": i + 1} for i in range(len(truth))],
          "categories": [{"id": k + 1} for k in classes], "annotations": []}
    for i, dets in enumerate(truth):
        for d in dets:
            w, h = d.x2 - d.x1, d.y2 - d.y1
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i + 1, "category_id": d.class_id + 1,
                                      "bbox": [d.x1, d.y1, w, h], "area": w * h, "iscrowd": 0})
    res = [{"image_id": i + 1, "category_id": d.class_id + 1, "bbox": [d.x1, d.y1, d.x2 - d.x1, d.y2 - d.y1],
            "score": d.score} for i, dets in enumerate(preds) for d in dets]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(res), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[0], ev.stats[1]


@pytest.fixture(scope="module")
def real_dets(tiny, tiny_stats):
    pres = [tiny.preprocess(p) for p in sorted(IMAGES.glob("*.jpg"))]
    truth = [detect_outputs(tiny, tiny.forward(p.x), p) for p in pres]
    ex = Executor(tiny, quantize_model(tiny, tiny_stats, "kl", rules=(), clip_max=1), "int")   # |x| KL alone: loses boxes
    preds = [detect_outputs(tiny, FloatView(ex.run(p.x)[0]), p, 0.1) for p in pres]
    return truth, preds


def test_map_matches_pycocotools_on_int_detections(real_dets):
    truth, preds = real_dets
    ours = coco_map(truth, preds)
    ref = pycoco(truth, preds)
    assert 0.0 < ours.map50_95 < ours.map50 < 1.0           # a real, imperfect agreement
    assert ours.map50_95 == pytest.approx(ref[0], abs=1e-12)
    assert ours.map50 == pytest.approx(ref[1], abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_matches_pycocotools_on_jittered_boxes(real_dets, seed):
    """FLOAT boxes moved by a few pixels, rescored, some dropped, some duplicated: IoUs everywhere."""
    truth, _ = real_dets
    rng = np.random.default_rng(seed)
    preds = []
    for dets in truth:
        out = []
        for d in dets:
            if rng.random() < 0.15:
                continue
            for _ in range(1 + (rng.random() < 0.2)):
                j = rng.normal(0, 0.06 * (d.x2 - d.x1), 4)
                out.append(d._replace(x1=d.x1 + j[0], y1=d.y1 + j[1], x2=d.x2 + j[2], y2=d.y2 + j[3],
                                   score=float(rng.uniform(0.2, 1.0))))
        preds.append(out)
    ours, ref = coco_map(truth, preds), pycoco(truth, preds)
    assert ours.map50_95 == pytest.approx(ref[0], abs=1e-12)
    assert ours.map50 == pytest.approx(ref[1], abs=1e-12)
    assert ours.map50_95 < ours.map50


def test_agreement_counts_and_identity(real_dets):
    truth, preds = real_dets
    same = detection_agreement(truth, truth)
    assert same.map50 == same.map50_95 == 1.0 and same.missed == same.extra == 0
    a = detection_agreement(truth, preds)
    n_truth, n_preds = sum(map(len, truth)), sum(map(len, preds))
    assert a.matched + a.missed == n_truth and a.matched + a.extra == n_preds
    assert a.map50_95 == pytest.approx(pycoco(truth, preds)[0], abs=1e-12)
    strict = detection_agreement(truth, preds, iou=0.9)
    assert strict.matched <= a.matched and strict.map50 == a.map50


def test_validation_variants_are_deterministic_and_distinct():
    vs = variants(IMAGES, mosaics=2)
    assert len(vs) == 4 * len(KINDS) + 2
    again = variants(IMAGES, kinds=("noise", "jpeg"), mosaics=0)
    by_name = {v.name: v for v in vs}
    for v in again:
        assert np.array_equal(np.asarray(v.image), np.asarray(by_name[v.name].image))
    arrays = [np.asarray(v.image.resize((32, 32))) for v in vs]
    assert all(not np.array_equal(arrays[0], a) for a in arrays[1:])
    with pytest.raises(ValueError, match="variant kind"):
        variants(IMAGES, kinds=("sepia",))
