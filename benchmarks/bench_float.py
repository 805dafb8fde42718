"""FLOAT forward latency of the NumPy engine against OpenCV DNN, measured interleaved in one run.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_float.py [--runs 30] [--layers] [--json]

Models: yolov3-tiny @416 with its real weights (target ours/OpenCV <= 1.0, moonshot 0.8) and yolov3 @416 with
random weights written to a temporary `.weights` file that both engines load (target <= 0.9).
Both engines run with 2 threads: `cv2.setNumThreads(2)`, and OpenBLAS through threadpoolctl if it
is installed, else OPENBLAS_NUM_THREADS=2 set before NumPy is imported. Timed runs alternate
(ours, OpenCV, ours, ...) after a warm-up, so both see the same machine state; medians are reported.
Peak RSS is measured per engine in a fresh subprocess (load + warm-up + a few forwards), so the
two engines' memory never mixes.
"""
from __future__ import annotations

import os

THREADS = 2
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, str(THREADS))  # must happen before NumPy is imported

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import engine
from engine.kernels.conv import choice
from engine.darknet.cfg import read_cfg
from engine.darknet.build import build_layers
from engine.darknet.weights import random_params, write_weights

SHARED = Path(os.environ.get("QW_SHARED", ROOT.parent / "shared"))   # ../shared beside the checkout, as CI has it
IMAGES = SHARED / "images"
TINY_CFG = SHARED / "models/yolov3-tiny.cfg"
TINY_WEIGHTS = SHARED / "models/yolov3-tiny.weights"
YOLOV3_CFG = SHARED / "models/cfg/yolov3.cfg"
DOG_INPUT = SHARED / "reference/opencv-yolov3-tiny-dog.npz"
TARGETS = {"yolov3-tiny": 1.0, "yolov3": 0.9}   # performance round 2 (tiny moonshot: 0.8)


def limit_blas_threads() -> str:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return f"OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}"
    threadpool_limits(THREADS)
    return f"threadpoolctl({THREADS})"


def resized_cfg(src: Path, size: int, folder: Path) -> Path:
    """A copy of `src` with width/height set to `size` in [net] (OpenCV reads it too)."""
    from engine.darknet.cfg import with_input_size
    out = folder / src.name
    out.write_text(with_input_size(src.read_text(), size, size))
    return out


def model_files(name: str, folder: Path) -> tuple[Path, Path]:
    """(cfg, weights) for a benchmark model; yolov3 gets random weights written next to its cfg."""
    if name == "yolov3-tiny":
        return TINY_CFG, TINY_WEIGHTS
    cfg = resized_cfg(YOLOV3_CFG, 416, folder)
    weights = folder / "yolov3-random.weights"
    if not weights.exists():
        layers = build_layers(read_cfg(cfg))
        write_weights(weights, layers, random_params(layers, 0))
    return cfg, weights


def model_input(shape: tuple[int, int, int]) -> np.ndarray:
    x = np.load(DOG_INPUT)["input"]
    if x.shape != shape:
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
    return np.ascontiguousarray(x, np.float32)


class Ours:
    def __init__(self, cfg: Path, weights: Path) -> None:
        self.model = engine.load(cfg, weights)
        self.x = model_input(self.model.input_shape)

    def __call__(self) -> None:
        self.model.forward(self.x)


class OpenCV:
    def __init__(self, cfg: Path, weights: Path, shape: tuple[int, int, int]) -> None:
        import cv2
        cv2.setNumThreads(THREADS)
        self.net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
        self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        self.outs = self.net.getUnconnectedOutLayersNames()
        self.blob = model_input(shape)[None]

    def __call__(self) -> None:
        self.net.setInput(self.blob)
        self.net.forward(self.outs)


def interleaved(fns: dict[str, callable], runs: int, warmup: int) -> dict[str, list[float]]:
    """Times of each engine, alternating run by run; the order rotates every round so neither
    engine always runs right after the other. (Idle gaps between runs were tried: the cores then
    drop to low-power states and both engines get 20-50% slower, so runs follow back to back.)
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    items = list(fns.items())
    for r in range(runs):
        for k, fn in items[r % len(items):] + items[:r % len(items)]:
            t = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t) * 1e3)
    return times


def layer_table(model: engine.Model, runs: int) -> list[dict]:
    """Median time of each layer run alone on its real inputs (outputs from one full forward)."""
    x = model.check_input(model_input(model.input_shape))
    outs = model.forward(x)
    rows = []
    for layer in model.layers:
        xs = model.inputs_of(layer.index, x, outs)
        ts = []
        for _ in range(runs):
            t = time.perf_counter()
            model.run_layer(layer.index, xs)
            ts.append((time.perf_counter() - t) * 1e3)
        rows.append({"index": layer.index, "kind": layer.kind, "out_shape": list(layer.out_shape),
                     "ms": float(np.median(ts)), "gmacs": layer.macs / 1e9, "kernel": kernel_of(layer)})
    return rows


def kernel_of(layer) -> str:
    """Which conv kernel engine.kernels.conv picks for this layer."""
    if layer.kind != "convolutional":
        return ""
    (c, h, w), k, s, p = layer.in_shapes[0], layer.size, layer.stride, layer.padding
    return choice(c, h, w, layer.filters, k, s, p, layer.groups)


def print_layers(name: str, rows: list[dict]) -> None:
    total = sum(r["ms"] for r in rows)
    print(f"\nper-layer medians, {name} (sum {total:.1f} ms):")
    print(f"{'idx':>4} {'kind':14} {'out shape':>16} {'ms':>7} {'%':>5} {'GMACs':>6} {'GFLOP/s':>8}  kernel")
    for r in rows:
        flops = 2e3 * r["gmacs"] / r["ms"] if r["gmacs"] and r["ms"] else 0.0
        shape = "x".join(map(str, r["out_shape"]))
        line = f"{r['index']:>4} {r['kind']:14} {shape:>16} {r['ms']:7.2f} {100 * r['ms'] / total:5.1f}"
        if flops:
            line += f" {r['gmacs']:6.3f} {flops:8.1f}  {r['kernel']}"
        print(line)


def peak_rss_mb(name: str, which: str, folder: Path) -> float:
    """Peak RSS (MB) of a fresh process that loads one engine and runs a few forwards."""
    cmd = [sys.executable, __file__, "--rss-child", which, "--models", name, "--tmp", str(folder)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def rss_child(name: str, which: str, folder: Path) -> None:
    limit_blas_threads()
    cfg, weights = model_files(name, folder)
    if which == "ours":
        fn = Ours(cfg, weights)
    else:
        fn = OpenCV(cfg, weights, engine.load(cfg, weights).input_shape)
    for _ in range(5):
        fn()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB


def bench(name: str, args: argparse.Namespace, folder: Path, rss: dict[str, float]) -> dict:
    cfg, weights = model_files(name, folder)
    ours = Ours(cfg, weights)
    cv = OpenCV(cfg, weights, ours.model.input_shape)
    times = interleaved({"ours": ours, "opencv": cv}, args.runs, args.warmup)
    med = {k: float(np.median(v)) for k, v in times.items()}
    res = {"model": name, "input": list(ours.model.input_shape), "runs": args.runs,
           "ours_ms": med["ours"], "opencv_ms": med["opencv"], "ratio": med["ours"] / med["opencv"],
           "target": TARGETS[name], "ours_min_ms": min(times["ours"]), "opencv_min_ms": min(times["opencv"])}
    res["meets_target"] = res["ratio"] <= res["target"]
    res.update(rss)
    if args.layers:
        res["layers"] = layer_table(ours.model, max(5, args.runs // 2))
    return res


def report(res: dict) -> None:
    verdict = "meets" if res["meets_target"] else "MISSES"
    print(f"{res['model']} @{res['input'][1]}x{res['input'][2]}, median of {res['runs']} interleaved runs, "
          f"{THREADS} threads each")
    print(f"  ours   {res['ours_ms']:8.2f} ms (min {res['ours_min_ms']:.2f})")
    print(f"  OpenCV {res['opencv_ms']:8.2f} ms (min {res['opencv_min_ms']:.2f})")
    print(f"  ratio  {res['ratio']:8.3f} x  (target <= {res['target']}: {verdict})")
    if "ours_peak_rss_mb" in res:
        print(f"  peak RSS: ours {res['ours_peak_rss_mb']:.0f} MB, OpenCV {res['opencv_peak_rss_mb']:.0f} MB "
              "(separate processes)")
    if "layers" in res:
        print_layers(res["model"], res["layers"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30, help="timed runs per engine (>= 20)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--models", default="yolov3-tiny,yolov3", help="comma list of yolov3-tiny, yolov3")
    ap.add_argument("--layers", action="store_true", help="also print a per-layer time table (ours)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--rss-child", choices=("ours", "opencv"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    for n in names:
        if n not in TARGETS:
            ap.error(f"--models: unknown model {n!r}; known: {', '.join(TARGETS)}")
    if args.rss_child:
        rss_child(names[0], args.rss_child, Path(args.tmp))
        return
    if args.runs < 20:
        ap.error(f"--runs {args.runs}: at least 20 timed runs are needed for a stable median")
    blas = limit_blas_threads()
    with tempfile.TemporaryDirectory(prefix="bench_float_") as tmp:
        # RSS children first: a forked child starts with the parent's resident pages counted in its
        # ru_maxrss, so they must be spawned while this process is still small.
        rss: dict[str, dict[str, float]] = {n: {} for n in names}
        for n in [] if args.no_rss else names:
            rss[n] = {f"{w}_peak_rss_mb": peak_rss_mb(n, w, Path(tmp)) for w in ("ours", "opencv")}
        results = [bench(n, args, Path(tmp), rss[n]) for n in names]
    if args.json:
        print(json.dumps({"threads": THREADS, "blas_threads": blas, "numpy": np.__version__,
                          "results": results}, indent=1))
        return
    print(f"NumPy {np.__version__}, BLAS threads: {blas}")
    for res in results:
        report(res)


if __name__ == "__main__":
    main()
