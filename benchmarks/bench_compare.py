"""Session.compare_methods against the FLOAT forwards it needs, and what its error statistics cost.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_compare.py [--images 8] [--methods minmax,kl,mse]

yolov3-tiny with its real weights on the shared photos (repeated, flipped every other time, up to
--images). The floor is the FLOAT forwards the comparison needs: per image, one for calibration, one
FLOAT reference and, per method, an INT and a HYBRID run: images * (2 + 2 * methods), timed in the
same run. The per-layer error statistics (`fitness.error_stats`) are timed inside the comparison,
and also with the plain formulation they replaced (four float64 conversions per call instead of
two), to show what that change saves. Target of the performance issue: compare <= 2x the floor.
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
from bench_float import THREADS, TINY_CFG, TINY_WEIGHTS, limit_blas_threads  # noqa: E402
from engine.quant import fitness  # noqa: E402
from engine.session import Session  # noqa: E402

PHOTOS = sorted(Path("/work/shared/images").glob("*.jpg"))


def plain_error_stats(ref, y, q=None, saturated=0):
    """The formulation before this round (kept here to measure the difference)."""
    r = ref.astype(np.float64).ravel()
    e = y.astype(np.float64).ravel() - r
    sig, noise = float(r @ r), float(e @ e)
    sqnr = float("inf") if noise == 0 else (10 * np.log10(sig / noise) if sig > 0 else float("-inf"))
    ny = float(np.linalg.norm(y.astype(np.float64)))
    nr = float(np.sqrt(sig))
    cos = float(r @ y.astype(np.float64).ravel() / (nr * ny)) if nr > 0 and ny > 0 else float(nr == ny)
    use = float(np.abs(q.astype(np.int16)).max() / 127) if q is not None and q.size else float("nan")
    return fitness.ErrorStats(sqnr, cos, noise / max(1, r.size), float(np.abs(e).max()) if e.size else 0.0, use,
                              saturated / max(1, r.size))


def images(n: int) -> list[np.ndarray]:
    from PIL import Image
    out = []
    for i in range(n):
        im = Image.open(PHOTOS[i % len(PHOTOS)]).convert("RGB")
        out.append(np.asarray(im.transpose(Image.FLIP_LEFT_RIGHT) if (i // len(PHOTOS)) % 2 else im))
    return out


def timed_stats(impl):
    spent = [0.0]

    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return impl(*a, **k)
        finally:
            spent[0] += time.perf_counter() - t
    return wrapper, spent


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--methods", default="minmax,kl,mse")
    args = ap.parse_args(argv)
    limit_blas_threads()
    methods = [m for m in args.methods.split(",") if m]
    model = engine.load(TINY_CFG, TINY_WEIGHTS)
    imgs = images(args.images)
    pres = [model.preprocess(im) for im in imgs]
    model.forward(pres[0].x)
    rows = {}
    for label, impl in (("new", fitness.error_stats), ("plain", plain_error_stats)):
        wrapper, spent = timed_stats(impl)
        fitness.error_stats = wrapper
        try:
            t = time.perf_counter()
            Session(model).compare_methods(imgs, methods)
            total = time.perf_counter() - t
        finally:
            fitness.error_stats = impl if label == "new" else rows["new_impl"]
        rows[label] = (total, spent[0])
        rows.setdefault("new_impl", impl)
    n_fwd = args.images * (2 + 2 * len(methods))
    t = time.perf_counter()
    for k in range(n_fwd):
        model.forward(pres[k % len(pres)].x)
    floor = time.perf_counter() - t
    new, plain = rows["new"], rows["plain"]
    print(f"yolov3-tiny @416, {args.images} images, methods {', '.join(methods)}, {THREADS} threads")
    print(f"  compare_methods        {new[0]:7.2f} s  (error statistics {new[1]:.2f} s)")
    print(f"  with the plain stats   {plain[0]:7.2f} s  (error statistics {plain[1]:.2f} s: "
          f"{plain[1] / max(new[1], 1e-9):.2f}x the new ones)")
    print(f"  {n_fwd} FLOAT forwards   {floor:7.2f} s  -> compare = {new[0] / floor:.2f}x the floor (target <= 2x)")


if __name__ == "__main__":
    main()
