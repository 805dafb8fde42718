"""The float kernels of a 3x3 stride-1 conv on every such layer shape of yolov3-tiny and yolov3 @416:
im2col + GEMM, Winograd F(m x m,3x3) with GEMM transforms for m = 2, 4, 6 (G(mxm), `kernels.winograd_gemm`)
and F(6, 3) down the rows only (R(6), `kernels.winograd_rows`), next to what `kernels.conv.choice` picks.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_conv_kernels.py [--threads 1] [--runs 11]

With --threads 1 (default) each kernel's CPU time of the calling thread is measured (BLAS
single-threaded): on a host shared with other work that is far steadier than wall time. With
--threads 2, wall time inside `own_threads` (the kernels' two threads). Kernels alternate run by
run; medians. Random inputs and weights (the time does not depend on the values).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (C, side, n): input channels, input side, filters; tiny layers 0, 2, 4, 6, 8, 21, 10/14, 12; yolov3's
SHAPES = [(3, 416, 16), (16, 208, 32), (32, 104, 64), (64, 52, 128), (128, 26, 256), (384, 26, 256), (256, 13, 512),
          (512, 13, 1024), (32, 208, 64), (64, 104, 128), (128, 52, 256), (256, 26, 512)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, choices=(1, 2))
    ap.add_argument("--runs", type=int, default=11)
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits
    threadpool_limits(args.threads)
    from engine.kernels import winograd_gemm, winograd_rows
    from engine.kernels.conv import choice
    from engine.kernels.gemm import conv_gemm
    from engine.kernels.scratch import Scratch
    from engine.kernels.threads import own_threads
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    rng = np.random.default_rng(0)
    scratch = Scratch()
    print(f"3x3 stride-1 conv kernels, {'CPU' if args.threads == 1 else 'wall'} ms, {args.threads} thread(s), "
          f"medians of {args.runs}")
    names = ("im2col", "G(2x2)", "G(4x4)", "G(6x6)", "R(6)")
    print(f"{'C':>5} {'side':>5} {'n':>5} " + " ".join(f"{k:>8}" for k in names) + "  fastest   chooser")
    for c, h, n in SHAPES:
        x = rng.standard_normal((c, h, h), dtype=np.float32)
        w2d = (rng.standard_normal((n, c * 9), dtype=np.float32) / np.sqrt(c * 9)).astype(np.float32)
        b = rng.standard_normal(n, dtype=np.float32)
        fns = {"im2col": lambda: conv_gemm(x, w2d, b, 3, 1, 1, 1, scratch, "leaky")}
        for m in (2, 4, 6):
            um = winograd_gemm.transform_weights(w2d, m)
            fns[f"G({m}x{m})"] = lambda um=um: winograd_gemm.conv3x3(x, um, b, 1, scratch, "leaky")
        ur = winograd_rows.transform_weights(w2d)
        fns["R(6)"] = lambda: winograd_rows.conv3x3(x, ur, b, 1, scratch, "leaky")
        times: dict[str, list[float]] = {k: [] for k in fns}
        with own_threads():
            for fn in fns.values():
                fn()
            for _ in range(args.runs):
                for k, fn in fns.items():
                    t = clock()
                    fn()
                    times[k].append((clock() - t) * 1e3)
        med = {k: float(np.median(v)) for k, v in times.items()}
        best = min(med, key=med.get)
        pick = {"winograd": "G(2x2)", "winograd-4x4": "G(4x4)", "winograd-rows": "R(6)"}.get(choice(c, h, h, n, 3, 1, 1), "im2col")
        print(f"{c:>5} {h:>5} {n:>5} " + " ".join(f"{med[k]:8.2f}" for k in names) + f"  {best:8}  {pick}",
              flush=True)


if __name__ == "__main__":
    main()
