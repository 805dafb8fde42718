"""Session.compare_methods against the FLOAT forwards it needs, and what its error statistics cost.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_compare.py [--images 8] [--methods minmax,kl,mse] [--cpu]

yolov3-tiny with its real weights on the shared photos (repeated, flipped every other time, up to
--images). The floor is the FLOAT forwards the comparison needs: per image, one for calibration, one
FLOAT reference and, per method, an INT and a HYBRID run: images * (2 + 2 * methods). Comparison
and floor alternate (--rounds), so both see the same machine; the median of the per-round ratios
is reported. The per-layer error statistics (`fitness.error_stats`) are timed inside the comparison
(their reference formulation is tests/engine/test_fitness_stats.py's, which checks them).
Target of the performance issue: compare <= 2x the floor (15 images, minmax, kl, mse). `--cpu` times
process CPU instead of wall clock (steadier on a shared host).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import engine  # noqa: E402
from bench_float import IMAGES, THREADS, TINY_CFG, TINY_WEIGHTS, limit_blas_threads  # noqa: E402
from engine.quant import fitness  # noqa: E402
from engine.session import Session  # noqa: E402

PHOTOS = sorted(IMAGES.glob("*.jpg"))


def images(n: int) -> list[np.ndarray]:
    from PIL import Image
    out = []
    for i in range(n):
        im = Image.open(PHOTOS[i % len(PHOTOS)]).convert("RGB")
        out.append(np.asarray(im.transpose(Image.FLIP_LEFT_RIGHT) if (i // len(PHOTOS)) % 2 else im))
    return out


CLOCK = [time.perf_counter]


def timed_stats(impl):
    spent = [0.0]

    def wrapper(*a, **k):
        t = CLOCK[0]()
        try:
            return impl(*a, **k)
        finally:
            spent[0] += CLOCK[0]() - t
    return wrapper, spent


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=15)
    ap.add_argument("--methods", default="minmax,kl,mse")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cpu", action="store_true", help="process CPU time instead of wall clock")
    args = ap.parse_args(argv)
    clock = time.process_time if args.cpu else time.perf_counter
    limit_blas_threads()
    CLOCK[0] = clock
    methods = [m for m in args.methods.split(",") if m]
    model = engine.load(TINY_CFG, TINY_WEIGHTS)
    imgs = images(args.images)
    pres = [model.preprocess(im) for im in imgs]
    model.forward(pres[0].x)
    n_fwd = args.images * (2 + 2 * len(methods))
    impl = fitness.error_stats
    wrapper, spent = timed_stats(impl)
    compares, floors, stats = [], [], []
    fitness.error_stats = wrapper
    try:
        for _ in range(args.rounds):
            spent[0] = 0.0
            t = clock()
            Session(model).compare_methods(imgs, methods)
            compares.append(clock() - t)
            stats.append(spent[0])
            t = clock()
            for k in range(n_fwd):
                model.forward(pres[k % len(pres)].x)
            floors.append(clock() - t)
    finally:
        fitness.error_stats = impl
    ratio = float(np.median(np.array(compares) / np.array(floors)))
    print(f"yolov3-tiny @416, {args.images} images, methods {', '.join(methods)}, {THREADS} threads, "
          f"{args.rounds} rounds, {'CPU' if args.cpu else 'wall'} time (load average {os.getloadavg()[0]:.1f})")
    print(f"  compare_methods        {np.median(compares):7.2f} s  (error statistics {np.median(stats):.2f} s)")
    print(f"  {n_fwd} FLOAT forwards   {np.median(floors):7.2f} s  -> compare = {ratio:.2f}x the floor (target <= 2x)")


if __name__ == "__main__":
    main()
