"""Time the panel encoders on every yolov3-tiny layer output (FLOAT forward of a bundled photo).

    QW_MODEL_DIR=../shared/models .venv/bin/python benchmarks/bench_encode.py [--repeat 5]

Per layer: feature_montage (64 channels max, 8 columns, 64-px tiles), histogram_counts (128 bins)
and histogram_png (one series, two markers), best of `--repeat` runs (the machine is shared, so
the minimum is the figure that means something). Target: montage + histogram <= 30 ms per layer.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from engine import zoo
from engine.imaging.samples import sample
from engine.session.stats import histogram_counts
from qwidgets._encode import feature_montage, histogram_png

TARGET_MS = 30.0


def best_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    model = zoo.load("yolov3-tiny")
    outs = model.forward(model.preprocess(sample("dog")).x)
    print(f"{'layer':>5} {'shape':>16} {'montage':>8} {'counts':>7} {'hist png':>8} {'total':>7}"
          f"  (ms, best of {args.repeat})")
    worst = 0.0
    for i, y in enumerate(outs):
        counts = histogram_counts(y)
        markers = {"max": float(np.abs(y).max()), "p99.9": float(np.percentile(np.abs(y), 99.9))}
        t_m = best_ms(lambda: feature_montage(y), args.repeat)
        t_c = best_ms(lambda: histogram_counts(y), args.repeat)
        t_h = best_ms(lambda: histogram_png({"FLOAT": counts}, markers), args.repeat)
        total = t_m + t_c + t_h
        worst = max(worst, total)
        shape = "x".join(map(str, y.shape))
        flag = "  > target" if total > TARGET_MS else ""
        print(f"{i:>5} {shape:>16} {t_m:8.1f} {t_c:7.1f} {t_h:8.1f} {total:7.1f}{flag}")
    print(f"worst layer: {worst:.1f} ms (target {TARGET_MS:.0f} ms)")


if __name__ == "__main__":
    main()
