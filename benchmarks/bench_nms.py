"""Detection decode + NMS against a FLOAT forward of the same model, measured interleaved in one run.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_nms.py [--runs 7] [--json]
        [--models yolov3,yolov3-tiny,yolov3-tiny-random,yolov2-random] [--thresh 0.25]

The hard case of the performance issue: yolov3 @416 with random weights, where nearly every one of
the 10,647 boxes passes the threshold in many of the 80 classes (Darknet's literal per-class NMS
took 32 s there). Also yolov3-tiny with its real weights on the dog photo, and on request yolov3-tiny
and yolov2 ([region]) with random weights, and a lower --thresh (0.005: COCO-style evaluation). Target: decode + NMS
(`detect_outputs`: decode, NMS, the `Detections` view) <= 10% of one FLOAT forward. The view ranks the
survivors by score on the first read that needs the order (len does not) and builds its Detection tuples
on first read: the time with that ranking (a first ordered read) and the time to build every tuple are
printed too, so a caller who reads the order sees what it costs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import engine  # noqa: E402
from bench_float import IMAGES, TINY_CFG, TINY_WEIGHTS, YOLOV3_CFG, THREADS, limit_blas_threads  # noqa: E402
from engine.darknet.detect import candidates, correct_boxes, detect_outputs  # noqa: E402
from engine.darknet.nms import nms_sort  # noqa: E402

IMAGE = IMAGES / "dog.jpg"
TARGET = 0.10


def load(name: str) -> engine.Model:
    if name == "yolov3-tiny":
        return engine.load(TINY_CFG, TINY_WEIGHTS)
    if name == "yolov3-tiny-random":
        return engine.load(TINY_CFG, random_weights=0)
    if name == "yolov2-random":
        return engine.load(YOLOV3_CFG.with_name("yolov2.cfg"), random_weights=0, size=416)
    if name == "yolov3":
        return engine.load(YOLOV3_CFG, random_weights=0, size=416)   # boxes of sane sizes that overlap
    raise SystemExit(f"--models: unknown model {name!r} (yolov3, yolov3-tiny, yolov3-tiny-random, yolov2-random)")


def case(name: str, runs: int, thresh: float = 0.25) -> dict:
    model = load(name)
    pre = model.preprocess(IMAGE)
    outs = model.forward(pre.x)
    c, kind = candidates(model, outs, thresh)

    def nms_only() -> None:
        c2, _ = candidates(model, outs, thresh)
        c2.boxes = correct_boxes(c2.boxes, pre)
        nms_sort(c2, 0.45, kind)

    fns = {"forward": lambda: model.forward(pre.x), "decode+nms": lambda: detect_outputs(model, outs, pre, thresh, 0.45),
           "ranked": lambda: detect_outputs(model, outs, pre, thresh, 0.45)[0],
           "arrays": nms_only, "all tuples": lambda: list(detect_outputs(model, outs, pre, thresh, 0.45))}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(runs):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t) * 1e3)
    med = {k: float(np.median(v)) for k, v in times.items()}
    dets = detect_outputs(model, outs, pre, thresh, 0.45)
    return {"model": name, "thresh": thresh, "boxes": int(c.probs.shape[0]), "box_class_pairs": int(np.count_nonzero(c.probs)),
            "detections": len(dets), "forward_ms": med["forward"], "decode_nms_ms": med["decode+nms"],
            "arrays_ms": med["arrays"], "ranked_ms": med["ranked"], "all_tuples_ms": med["all tuples"], "fraction": med["decode+nms"] / med["forward"], "runs": runs}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--models", default="yolov3,yolov3-tiny")
    ap.add_argument("--thresh", type=float, default=0.25)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    blas = limit_blas_threads()
    results = [case(n.strip(), args.runs, args.thresh) for n in args.models.split(",") if n.strip()]
    if args.json:
        print(json.dumps({"threads": THREADS, "blas_threads": blas, "results": results}, indent=1))
        return
    for r in results:
        verdict = "meets" if r["fraction"] <= TARGET else "MISSES"
        print(f"{r['model']} @416 ({'real' if r['model'] == 'yolov3-tiny' else 'random'} weights, thresh {r['thresh']}): {r['boxes']} boxes, "
              f"{r['box_class_pairs']} (box, class) pairs above thresh, {r['detections']} detections after NMS")
        print(f"  FLOAT forward {r['forward_ms']:8.1f} ms   decode+NMS {r['decode_nms_ms']:7.1f} ms   "
              f"= {100 * r['fraction']:.1f}% of a forward (target <= {100 * TARGET:.0f}%: {verdict}); "
              f"medians of {r['runs']} interleaved runs, {THREADS} threads")
        print(f"  with the ranking a first ordered read does (dets[0]): {r['ranked_ms']:.1f} ms "
              f"= {100 * r['ranked_ms'] / r['forward_ms']:.1f}% of a forward")
        print(f"  of which decode + NMS on arrays {r['arrays_ms']:.1f} ms; reading every Detection as a tuple "
              f"(list(dets)): {r['all_tuples_ms']:.1f} ms in all = {100 * r['all_tuples_ms'] / r['forward_ms']:.1f}%")


if __name__ == "__main__":
    main()
