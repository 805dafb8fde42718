"""Images per second over a set of images: ours (one at a time, batched) against OpenCV DNN (one at
a time, blobs of 8), in one run, 2 threads each; FLOAT and INT, and the ONNX Runtime batch backend.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_throughput.py [--images 64] [--rounds 2]

yolov3-tiny @416 with its real weights; the inputs are the shared photos letterboxed (repeated to
--images). Each engine/mode processes the whole set once per round, modes alternating round by
round; the best round of each is reported (throughput: the machine's quietest moment counts).
Target of the performance issue: ours >= 1.3x OpenCV's best rate. INT: the NumPy engine's int8
executor and ORT's integer kernels on a model quantized (minmax, per channel, on the 4 photos) with
profile `onnxruntime`, where the two give identical outputs; the ORT backend runs one image per call
(`engine.export.ort_backend.forward_on`, heads decoded by the engine as in a batch evaluation).
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

import engine  # noqa: E402
from bench_float import THREADS, TINY_CFG, TINY_WEIGHTS, OpenCV, limit_blas_threads  # noqa: E402

BLOB = 8


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime backend")
    args = ap.parse_args(argv)
    limit_blas_threads()
    model = engine.load(TINY_CFG, TINY_WEIGHTS)
    photos = sorted(Path("/work/shared/images").glob("*.jpg"))
    base = [model.preprocess(p).x for p in photos]
    xs = np.stack([base[i % len(base)] for i in range(args.images)])
    cv = OpenCV(TINY_CFG, TINY_WEIGHTS, model.input_shape)

    def cv_blobs(size: int) -> None:
        for i in range(0, len(xs), size):
            cv.net.setInput(xs[i:i + size])
            cv.net.forward(cv.outs)

    modes = {
        "ours, one at a time": lambda: [model.forward(x) for x in xs],
        f"ours, batches of {BLOB}": lambda: [model.forward(xs[i:i + BLOB]) for i in range(0, len(xs), BLOB)],
        "OpenCV, one at a time": lambda: cv_blobs(1),
        f"OpenCV, blobs of {BLOB}": lambda: cv_blobs(BLOB),
    }
    modes.update(int_and_ort_modes(model, photos, xs, args.no_ort))
    cv_blobs(BLOB)
    model.forward(xs[:2])
    best = {k: 0.0 for k in modes}
    items = list(modes.items())
    for r in range(args.rounds):
        for name, fn in items[r % len(items):] + items[:r % len(items)]:
            t = time.perf_counter()
            fn()
            best[name] = max(best[name], len(xs) / (time.perf_counter() - t))
    cv_best = max(v for k, v in best.items() if k.startswith("OpenCV"))
    ours_best = max(v for k, v in best.items() if k.startswith("ours,"))
    print(f"yolov3-tiny @416, {len(xs)} images, best of {args.rounds} rounds, {THREADS} threads")
    for name, rate in best.items():
        print(f"  {name:24} {rate:7.2f} images/s")
    print(f"  ours best / OpenCV best = {ours_best / cv_best:.2f}x (target >= 1.3x)")
    int_best = max((v for k, v in best.items() if k.startswith("ours INT")), default=None)
    if "ORT FLOAT, one at a time" in best:
        f, i = best["ORT FLOAT, one at a time"], best["ORT INT, one at a time"]
        print(f"  FLOAT images/s: NumPy best {ours_best:.2f}, ORT {f:.2f}, OpenCV best {cv_best:.2f}  "
              f"(ORT / NumPy {f / ours_best:.2f}x, ORT / OpenCV {f / cv_best:.2f}x)")
        print(f"  INT   images/s: NumPy best {int_best:.2f}, ORT {i:.2f}  (ORT / NumPy {i / int_best:.2f}x, "
              f"ORT INT / OpenCV FLOAT {i / cv_best:.2f}x)")
    elif int_best is not None:
        print(f"  INT images/s: NumPy best {int_best:.2f} (ORT not run: {ORT_SKIPPED[0]})")


ORT_SKIPPED = [""]


def int_and_ort_modes(model, photos, xs, no_ort: bool) -> dict:
    """The NumPy INT executor (one at a time, batched) and, where onnxruntime is installed, ORT FLOAT / INT."""
    from engine.calib.collect import collect
    from engine.export.ort_backend import forward_on, ort_missing
    from engine.quant.executor import Executor
    from engine.quant.qmodel import quantize_model
    qm = quantize_model(model, collect(model, photos, progress=False), "minmax", per_channel=True,
                        profile="onnxruntime")
    ex = Executor(model, qm, "int")
    ex.forward(xs[:2])                   # warm-up: the int8 kernels' weight forms
    modes = {"ours INT, one at a time": lambda: [ex.forward(x) for x in xs],
             f"ours INT, batches of {BLOB}": lambda: [ex.forward(xs[i:i + BLOB]) for i in range(0, len(xs), BLOB)]}
    missing = "--no-ort" if no_ort else ort_missing()
    if missing:
        ORT_SKIPPED[0] = missing
        return modes
    heads = [layer.index for layer in model.layers if layer.is_head]

    def on_ort(run):
        def f(images=xs):
            for x in images:
                outs = run(x)
                for h in heads:          # the [yolo] outputs a batch evaluation decodes
                    outs[h]
        f(xs[:1])                        # warm-up (the ORT session is built by forward_on)
        return f
    modes["ORT FLOAT, one at a time"] = on_ort(forward_on("onnxruntime", model, None, "float"))
    modes["ORT INT, one at a time"] = on_ort(forward_on("onnxruntime", model, qm, "int"))
    return modes


if __name__ == "__main__":
    main()
