"""Where a FLOAT forward spends its time, layer by layer: GEMM vs the rest, next to OpenCV DNN.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_profile.py [--model yolov3-tiny] [--runs 15] [--json]

Each layer is timed inside full forwards (its real input, in its place in the network, so caches
hold what they would). GEMM time is measured by wrapping `np.matmul` (every float GEMM of the
kernels goes through it) with a per-thread clock: a GEMM running on each of 2 threads at once counts
as half its time each, so `gemm` is the layer's wall time spent in GEMMs and `rest` = wall - gemm
(im2col copies, Winograd transforms, epilogues, maxpool, routing, Python). OpenCV's own per-layer
times come from `getPerfProfile()` on forwards interleaved with ours (same machine state);
Darknet layer i maps to OpenCV's layers named `*_i` (activation layers to the conv before them).
Medians over runs.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import engine  # noqa: E402
from bench_float import THREADS, OpenCV, kernel_of, limit_blas_threads, model_files, model_input  # noqa: E402

ACTIVATION_PREFIXES = ("leaky", "mish", "relu", "logistic", "swish", "tanh", "elu", "selu", "relu6")


class GemmClock:
    """Wraps np.matmul while active; `take()` returns the wall seconds spent in GEMMs since the last
    take, counting overlapping GEMMs on n threads as 1/n each (an interval sweep over all calls)."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float]] = []
        self.lock = threading.Lock()
        self.orig = np.matmul

    def __enter__(self) -> "GemmClock":
        orig, calls, lock = self.orig, self.calls, self.lock

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                t1 = time.perf_counter()
                with lock:
                    calls.append((t0, t1))

        np.matmul = timed
        return self

    def __exit__(self, *exc) -> None:
        np.matmul = self.orig

    def take(self) -> float:
        with self.lock:
            calls, self.calls[:] = list(self.calls), []
        if not calls:
            return 0.0
        # union of the GEMM intervals: wall time during which at least one GEMM ran
        calls.sort()
        total, (lo, hi) = 0.0, calls[0]
        for a, b in calls[1:]:
            if a > hi:
                total, lo, hi = total + hi - lo, a, b
            else:
                hi = max(hi, b)
        return total + hi - lo


def ours_layers(model: engine.Model, x: np.ndarray, clock: GemmClock) -> tuple[list[float], list[float]]:
    """One forward, layer by layer: (wall ms, GEMM ms) per layer."""
    x = model.check_input(x)
    outs, wall, gemm = [], [], []
    clock.take()
    for i in range(len(model.layers)):
        t = time.perf_counter()
        outs.append(model.run_layer(i, model.inputs_of(i, x, outs)))
        wall.append((time.perf_counter() - t) * 1e3)
        gemm.append(clock.take() * 1e3)
    return wall, gemm


def opencv_owner(names: list[str]) -> dict[str, int]:
    """OpenCV layer name -> Darknet layer index (as tests/helpers.opencv_layer_outputs maps them)."""
    owner = {}
    for name in names:
        m = re.fullmatch(r"([a-z]+)_(\d+)", name)
        if m:
            owner[name] = int(m.group(2)) - (1 if m.group(1) in ACTIVATION_PREFIXES else 0)
    return owner


def profile(name: str, runs: int, folder: Path) -> dict:
    cfg, weights = model_files(name, folder)
    model = engine.load(cfg, weights)
    x = model_input(model.input_shape)
    cv = OpenCV(cfg, weights, model.input_shape)
    names = list(cv.net.getLayerNames())
    owner = opencv_owner(names)
    n = len(model.layers)
    walls, gemms, cvs, tot_ours, tot_cv = [], [], [], [], []
    with GemmClock() as clock:
        for r in range(runs + 2):
            t = time.perf_counter()
            w, g = ours_layers(model, x, clock)
            t_ours = time.perf_counter() - t
            t = time.perf_counter()
            cv()
            t_cv = time.perf_counter() - t
            _, ticks = cv.net.getPerfProfile()
            per = np.zeros(n)
            for lname, tk in zip(names, np.asarray(ticks).ravel()):
                if lname in owner and 0 <= owner[lname] < n:
                    per[owner[lname]] += tk
            if r >= 2:   # warm-up
                walls.append(w)
                gemms.append(g)
                cvs.append(per * 1e3 / cv2_freq())
                tot_ours.append(t_ours * 1e3)
                tot_cv.append(t_cv * 1e3)
    wall, gemm, cvl = (np.median(np.array(a), axis=0) for a in (walls, gemms, cvs))
    rows = [{"index": l.index, "kind": l.kind, "out_shape": list(l.out_shape), "kernel": kernel_of(l),
             "gmacs": l.macs / 1e9, "ms": float(wall[i]), "gemm_ms": float(gemm[i]),
             "rest_ms": float(wall[i] - gemm[i]), "opencv_ms": float(cvl[i])} for i, l in enumerate(model.layers)]
    return {"model": name, "input": list(model.input_shape), "runs": runs, "threads": THREADS,
            "forward_ms": float(np.median(tot_ours)), "opencv_ms": float(np.median(tot_cv)),
            "layers_ms": float(wall.sum()), "gemm_ms": float(gemm.sum()), "rest_ms": float((wall - gemm).sum()),
            "rows": rows}


def cv2_freq() -> float:
    import cv2
    return cv2.getTickFrequency()


def report(res: dict) -> None:
    print(f"{res['model']} @{res['input'][1]}x{res['input'][2]} FLOAT, medians of {res['runs']} forwards "
          f"interleaved with OpenCV, {res['threads']} threads")
    print(f"  forward: ours {res['forward_ms']:.1f} ms, OpenCV {res['opencv_ms']:.1f} ms "
          f"(ratio {res['forward_ms'] / res['opencv_ms']:.2f}x)")
    print(f"  ours = GEMM {res['gemm_ms']:.1f} ms + rest {res['rest_ms']:.1f} ms "
          f"({100 * res['rest_ms'] / res['layers_ms']:.0f}% outside GEMMs)")
    print(f"{'idx':>4} {'kind':14} {'out shape':>14} {'kernel':14} {'ms':>7} {'gemm':>7} {'rest':>7} "
          f"{'opencv':>7} {'GFLOP/s':>8}")
    by_kind: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    for r in res["rows"]:
        flops = 2e3 * r["gmacs"] / r["ms"] if r["gmacs"] and r["ms"] else 0.0
        shape = "x".join(map(str, r["out_shape"]))
        print(f"{r['index']:>4} {r['kind']:14} {shape:>14} {r['kernel']:14} {r['ms']:7.2f} {r['gemm_ms']:7.2f} "
              f"{r['rest_ms']:7.2f} {r['opencv_ms']:7.2f} {flops:8.1f}")
        k = by_kind[r["kind"]]
        for j, key in enumerate(("ms", "gemm_ms", "rest_ms", "opencv_ms")):
            k[j] += r[key]
    print("by kind:      ms    gemm    rest  opencv")
    for kind, (ms, g, rest, c) in sorted(by_kind.items(), key=lambda kv: -kv[1][0]):
        print(f"  {kind:12} {ms:7.1f} {g:7.1f} {rest:7.1f} {c:7.1f}")


def main(argv: list[str] | None = None) -> None:
    import tempfile
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="yolov3-tiny", choices=("yolov3-tiny", "yolov3"))
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    limit_blas_threads()
    with tempfile.TemporaryDirectory(prefix="bench_profile_") as tmp:
        res = profile(args.model, args.runs, Path(tmp))
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        report(res)


if __name__ == "__main__":
    main()
