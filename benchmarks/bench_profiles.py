"""Each device profile's agreement with FLOAT on a validation set, and its runtime's agreement with us.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_profiles.py [--json]

yolov3-tiny @416 with its real weights, calibrated on the 4 shared photos (minmax, per channel; the
`yolo2_light` profile also with its own `yolo2_light` method). Validation: 28 images = the 4 photos and
6 variants of each (rotate 15 deg, blur 2, flip, flop, brightness 1.3, noise sigma 8). FLOAT detections
(thresh 0.25) are the truth; INT detections of each profile are scored by mAP@0.5 and mAP@[.5:.95]
(mean of mAP at IoU 0.50, 0.55, ..., 0.95), with FLOAT detections lost / extra. For the profiles with a
runtime (onnxruntime, avx2_u8s8) the onnx-int8 export runs in ONNX Runtime on the same images and every
layer is compared with our INT: mismatched elements (0 = bit-exact). Median INT forward time per profile.
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QW_SHARED", ROOT.parent / "shared"))
RUNS = [("qwidgets", "minmax"), ("onnxruntime", "minmax"), ("avx2_u8s8", "minmax"), ("ort_reduce_range", "minmax"),
        ("yolo2_light", "minmax"),
        ("yolo2_light", "yolo2_light")]


def validation_images(photos):
    from engine.imaging.augment import augment
    out = []
    for p in photos:
        for name, im in augment(p, brightness=1.3, noise_sigma=8.0).items():
            out.append((f"{p.stem}/{name}", np.asarray(im)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import engine
    from engine.calib.collect import collect
    from engine.darknet.detect import detect_outputs
    from engine.quant.executor import Executor
    from engine.quant.fitness import detection_agreement
    from engine.quant.profiles import get_profile
    from engine.quant.qmodel import quantize_model
    model = engine.load(SHARED / "models" / "yolov3-tiny.cfg", weights=SHARED / "models" / "yolov3-tiny.weights")
    photos = sorted((SHARED / "images").glob("*.jpg"))
    stats = collect(model, photos, progress=False)
    images = validation_images(photos)
    pres = [model.preprocess(im) for _, im in images]
    truth = [detect_outputs(model, model.forward(p.x), p) for p in pres]
    rows = []
    for profile, method in RUNS:
        qm = quantize_model(model, stats, method, per_channel=True, profile=profile)
        ex = Executor(model, qm, "int")
        preds, times, outs_all = [], [], []
        for p in pres:
            t = time.perf_counter()
            outs = ex.forward(p.x)
            times.append(time.perf_counter() - t)
            preds.append(detect_outputs(model, outs, p))
            outs_all.append(outs)
        a50 = detection_agreement(truth, preds, 0.5)
        coco = float(np.mean([detection_agreement(truth, preds, t).map50 for t in np.arange(0.5, 0.96, 0.05)]))
        row = {"profile": profile, "method": method, "map50": a50.map50, "map50_95": coco, "found": a50.matched,
               "of": a50.matched + a50.missed, "extra": a50.extra, "int_ms": 1000 * statistics.median(times)}
        if get_profile(qm.profile).exportable:
            from engine.export.onnx_int8 import build_int8, run_ort
            proto = build_int8(model, qm, all_outputs=True)
            mism = total = 0
            for p, outs in zip(pres, outs_all):
                for name, y in run_ort(proto, p.x).items():
                    mism += int(np.count_nonzero(outs[int(name[5:])] != y))
                    total += y.size
            row["ort_mismatched"], row["ort_elements"] = mism, total
        rows.append(row)
    if args.json:
        print(json.dumps({"images": len(images), "truth_detections": sum(map(len, truth)), "rows": rows}, indent=1))
        return
    print(f"yolov3-tiny, {len(images)} validation images, {sum(map(len, truth))} FLOAT detections at 0.25")
    print(f"{'profile':<18}{'method':<13}{'mAP50':>7}{'mAP50-95':>10}{'found':>9}{'extra':>7}{'INT ms':>8}"
          f"{'ORT mismatched':>22}")
    for r in rows:
        ort_cell = f"{r['ort_mismatched']}/{r['ort_elements']}" if "ort_mismatched" in r else "-"
        print(f"{r['profile']:<18}{r['method']:<13}{r['map50']:>7.3f}{r['map50_95']:>10.3f}"
              f"{r['found']:>5}/{r['of']:<3}{r['extra']:>7}{r['int_ms']:>8.0f}{ort_cell:>22}")


if __name__ == "__main__":
    main()
