"""How well each layer of a FLOAT forward uses 2 threads: wall on 2 threads against CPU on 1.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_scaling.py [--model yolov3-tiny] [--runs 15]

Forwards alternate between 1 thread (BLAS and the kernels single-threaded: `set_blas_threads(1)`)
and 2 threads (as `bench_float.py` runs them), with an OpenCV forward on 2 threads in between, all in
one process. Per layer: CPU ms of the 1-thread run (`time.thread_time`, the work itself), wall ms of
the 2-thread run, and `lost` = wall2 - cpu1 / 2, the time 2 threads spend beyond a perfect split
(hand-offs, wake-ups, serial passes, imbalance, contention between the two threads for memory
bandwidth). Minima and medians over runs: on a shared host the minimum is closest to what the
layer costs when nothing else runs, the median to what a user meets.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import engine  # noqa: E402
from bench_float import THREADS, OpenCV, kernel_of, limit_blas_threads, model_files, model_input  # noqa: E402
from engine.kernels.threads import set_blas_threads  # noqa: E402


def layer_times(model: engine.Model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """One forward layer by layer: (wall ms, calling thread's CPU ms) per layer, whole wall ms."""
    outs, wall, cpu = [], [], []
    t_all = time.perf_counter()
    for i in range(len(model.layers)):
        t, c = time.perf_counter(), time.thread_time()
        outs.append(model.run_layer(i, model.inputs_of(i, x, outs)))
        cpu.append((time.thread_time() - c) * 1e3)
        wall.append((time.perf_counter() - t) * 1e3)
    return np.array(wall), np.array(cpu), (time.perf_counter() - t_all) * 1e3


def run(name: str, runs: int, folder: Path) -> None:
    cfg, weights = model_files(name, folder)
    model = engine.load(cfg, weights)
    x = model.check_input(model_input(model.input_shape))
    cv = OpenCV(cfg, weights, model.input_shape)
    w1s, c1s, w2s, f1s, f2s, cvs = [], [], [], [], [], []
    for r in range(runs + 2):
        set_blas_threads(1)
        w1, c1, f1 = layer_times(model, x)
        set_blas_threads(THREADS)
        w2, _, f2 = layer_times(model, x)
        t = time.perf_counter()
        cv()
        tcv = (time.perf_counter() - t) * 1e3
        if r >= 2:
            w1s.append(w1), c1s.append(c1), w2s.append(w2), f1s.append(f1), f2s.append(f2), cvs.append(tcv)
    c1, w2 = np.array(c1s), np.array(w2s)
    print(f"{name} @{model.input_shape[1]}: {runs} rounds (1-thread forward, 2-thread forward, OpenCV 2 threads)")
    print(f"  whole forward, median / min ms: 1 thread {np.median(f1s):.1f} / {min(f1s):.1f}, "
          f"2 threads {np.median(f2s):.1f} / {min(f2s):.1f}, OpenCV {np.median(cvs):.1f} / {min(cvs):.1f}; "
          f"ours / OpenCV {np.median(f2s) / np.median(cvs):.2f} (min {min(f2s) / min(cvs):.2f})")
    print(f"{'idx':>4} {'kind':14} {'kernel':15} {'cpu1':>7} {'wall2':>7} {'lost':>6} {'eff':>5}"
          f" | {'cpu1 min':>8} {'wall2 min':>9} {'lost':>6}")
    tot = np.zeros(6)
    for i, layer in enumerate(model.layers):
        cm, wm = np.median(c1[:, i]), np.median(w2[:, i])
        cn, wn = c1[:, i].min(), w2[:, i].min()
        row = np.array([cm, wm, wm - cm / 2, cn, wn, wn - cn / 2])
        tot += row
        print(f"{i:>4} {layer.kind:14} {kernel_of(layer):15} {cm:7.2f} {wm:7.2f} {wm - cm / 2:6.2f} "
              f"{cm / 2 / wm:5.2f} | {cn:8.2f} {wn:9.2f} {wn - cn / 2:6.2f}")
    print(f"{'sum':>4} {'':14} {'':15} {tot[0]:7.1f} {tot[1]:7.1f} {tot[2]:6.1f} {tot[0] / 2 / tot[1]:5.2f} | "
          f"{tot[3]:8.1f} {tot[4]:9.1f} {tot[5]:6.1f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="yolov3-tiny", choices=("yolov3-tiny", "yolov3"))
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args(argv)
    limit_blas_threads()
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
        run(args.model, args.runs, Path(tmp))


if __name__ == "__main__":
    main()
