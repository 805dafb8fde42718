"""The ONNX Runtime batch backend against the NumPy engine and OpenCV DNN: images/s over 64 images, and agreement.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_ort_backend.py [--images 64]

yolov3-tiny @416 with its real weights, quantized per channel with minmax under the `onnxruntime` profile
(calibrated on the 4 shared photos). The images are the 4 photos and seeded Monte Carlo variants of them
(engine.scale.montecarlo), letterboxed once before timing. Five runners: NumPy FLOAT (`Model.forward`),
ORT FLOAT and ORT INT (`engine.export.ort_backend.forward_on("onnxruntime", ...)`, the [yolo] layers applied
to their outputs inside the timing), NumPy INT (`Executor.forward`) and OpenCV DNN (the peer), 2 threads
each, interleaved image by image (the order rotates every image). Agreement: max relative difference of
the FLOAT head outputs (layers 15, 16, 22, 23) over every image, and whether INT head outputs and
detections are identical on every image.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_float import IMAGES, THREADS, TINY_CFG, TINY_WEIGHTS, OpenCV, limit_blas_threads  # noqa: E402

import engine  # noqa: E402

HEADS = (15, 16, 22, 23)


def inputs(model, n: int) -> list:
    from engine.scale.montecarlo import make_variants, render, source_image
    photos = [str(p) for p in sorted(IMAGES.glob("*.jpg"))]
    _, h, w = model.input_shape
    pres = [model.preprocess(p) for p in photos]
    for v in make_variants(len(photos), max(0, n - len(photos)), seed=0):
        pres.append(model.preprocess(render(source_image(photos, v.image, (w, h)), v)))
    return pres[:n]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--montecarlo", type=int, default=24, metavar="N",
                    help="also time run_montecarlo over N variants (INT) on each backend (0: skip)")
    args = ap.parse_args(argv)
    limit_blas_threads()
    from engine.calib.collect import collect
    from engine.darknet.detect import detect_outputs
    from engine.export.ort_backend import forward_on
    from engine.quant.executor import Executor
    from engine.quant.qmodel import quantize_model
    model = engine.load(TINY_CFG, TINY_WEIGHTS)
    photos = sorted(IMAGES.glob("*.jpg"))
    qm = quantize_model(model, collect(model, photos, progress=False), "minmax", per_channel=True,
                        profile="onnxruntime")
    pres = inputs(model, args.images)
    cv = OpenCV(TINY_CFG, TINY_WEIGHTS, model.input_shape)

    def heads(run):
        def f(x):
            outs = run(x)
            return {h: outs[h] for h in HEADS}
        return f

    def opencv(x):
        cv.net.setInput(x[None])
        cv.net.forward(cv.outs)
        return None

    runners = {"NumPy FLOAT": heads(model.forward),
               "ORT FLOAT": heads(forward_on("onnxruntime", model, None, "float")),
               "NumPy INT": heads(Executor(model, qm, "int").forward),
               "ORT INT": heads(forward_on("onnxruntime", model, qm, "int")),
               "OpenCV FLOAT": opencv}
    for fn in runners.values():                     # warm-up (ORT sessions are built above, once)
        fn(pres[0].x)
    secs = {k: [] for k in runners}
    got: dict[str, list] = {k: [] for k in runners}
    items = list(runners.items())
    t_all = time.perf_counter()
    for k, pre in enumerate(pres):
        for name, fn in items[k % len(items):] + items[:k % len(items)]:
            t = time.perf_counter()
            y = fn(pre.x)
            secs[name].append(time.perf_counter() - t)
            got[name].append(y)
    wall = time.perf_counter() - t_all
    rel = max(float(np.abs(a[h] - b[h]).max() / np.abs(a[h]).max())
              for a, b in zip(got["NumPy FLOAT"], got["ORT FLOAT"]) for h in HEADS)
    same_int = all(np.array_equal(a[h], b[h]) for a, b in zip(got["NumPy INT"], got["ORT INT"]) for h in HEADS)

    def dets(name: str) -> list:
        return [detect_outputs(model, _Full(model, o), p) for o, p in zip(got[name], pres)]
    d_np, d_ort = dets("NumPy INT"), dets("ORT INT")
    f_np, f_ort = dets("NumPy FLOAT"), dets("ORT FLOAT")
    same_dets = d_np == d_ort
    same_float_classes = [[d.class_id for d in a] for a in f_np] == [[d.class_id for d in b] for b in f_ort]
    cv_rate = len(pres) / sum(secs["OpenCV FLOAT"])
    print(f"yolov3-tiny @416, {len(pres)} images (4 photos + Monte Carlo variants), {THREADS} threads each, "
          f"interleaved image by image ({wall:.0f} s)")
    print(f"  {'runner':14} {'images/s':>9} {'median ms':>10} {'vs OpenCV time':>15}")
    for name, s in secs.items():
        rate = len(s) / sum(s)
        print(f"  {name:14} {rate:9.2f} {1e3 * float(np.median(s)):10.1f} {cv_rate / rate:14.2f}x")
    print(f"  ORT FLOAT / NumPy FLOAT time {sum(secs['ORT FLOAT']) / sum(secs['NumPy FLOAT']):.2f}x; "
          f"ORT INT / NumPy INT time {sum(secs['ORT INT']) / sum(secs['NumPy INT']):.2f}x")
    print(f"agreement: FLOAT heads max rel diff {rel:.2e} (limit 1e-4); FLOAT detections same classes: "
          f"{'yes' if same_float_classes else 'no'}; INT heads identical: {'yes' if same_int else 'no'}; "
          f"INT detections identical: {'yes' if same_dets else 'no'} ({sum(map(len, d_np))} detections)")
    if args.montecarlo:
        montecarlo(model, qm, photos, args.montecarlo)


def montecarlo(model, qm, photos, n: int) -> None:
    """run_montecarlo (INT) on each backend, one after the other, twice in alternating order."""
    from engine.scale.montecarlo import run_montecarlo
    took: dict[str, list[float]] = {"numpy": [], "onnxruntime": []}
    rows = {}
    for order in (("numpy", "onnxruntime"), ("onnxruntime", "numpy")):
        for b in order:
            t = time.perf_counter()
            rows[b] = run_montecarlo(model, qm, photos, n_variants=n, modes=("int",), seed=0, backend=b).rows
            took[b].append(time.perf_counter() - t)
    same = [(r["float_dets"], r["int"]["matched"], r["int"]["missed"], r["int"]["extra"]) for r in rows["numpy"]] == \
           [(r["float_dets"], r["int"]["matched"], r["int"]["missed"], r["int"]["extra"]) for r in rows["onnxruntime"]]
    a, b = min(took["numpy"]), min(took["onnxruntime"])
    print(f"run_montecarlo, {n} variants, INT (FLOAT + INT per variant, render and decode included; best of 2): "
          f"numpy {n / a:.2f} variants/s, onnxruntime {n / b:.2f} variants/s ({a / b:.2f}x); "
          f"same matched/missed/extra: {'yes' if same else 'no'}")


class _Full:
    """The head outputs a runner returned, indexed like a forward's outputs (decoding reads only heads)."""

    def __init__(self, model, outs: dict) -> None:
        self.n, self.outs = len(model.layers), outs

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.outs[i]


if __name__ == "__main__":
    main()
