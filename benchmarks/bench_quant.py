"""INT8 / HYBRID latency of yolov3-tiny against our FLOAT in the same run, and calibration cost.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_quant.py [--runs 25] [--layers] [--json]

Latency: yolov3-tiny @416 with its real weights, quantized per-channel minmax from the shared images;
FLOAT (`model.forward`), HYBRID and INT (`Executor.run`) alternate run by run after a warm-up (the
order rotates every round), so all three see the same machine state; medians (and the median of the
per-round INT/FLOAT ratios) are reported. Target: INT / FLOAT <= 1.2. `--layers` adds per-layer
medians (each layer timed alone, executors alternating).
Calibration: per image, `collect()` (FLOAT forward + |x| histograms of every tensor) plus the
threshold search of each method (`quantize_model`, which also quantizes the weights), as a ratio to
the FLOAT inference time of the same images (preprocessing included in both). Target: <= 2.
BLAS gets 2 threads (OPENBLAS_NUM_THREADS=2 set before NumPy is imported), as in bench_float.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# first: bench_float sets the BLAS thread variables before NumPy is imported
from bench_float import IMAGES, TINY_CFG, TINY_WEIGHTS  # noqa: E402

import numpy as np  # noqa: E402

import engine  # noqa: E402
from engine.kernels import winograd  # noqa: E402
from engine.imaging.augment import augment  # noqa: E402
from engine.calib.collect import collect  # noqa: E402
from engine.quant.executor import Executor, Value  # noqa: E402
from engine.quant.qmodel import quantize_model  # noqa: E402

METHODS = ("minmax", "kl", "percentile", "mse", "log2", "yolo2_light")
TARGETS = {"int_over_float": 1.2, "calibration_over_float": 2.0}


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def layer_times(exs: dict[str, Executor], x: np.ndarray, rounds: int) -> dict[str, np.ndarray]:
    """Median time of each layer (seconds) per executor, executors alternating round by round."""
    model = next(iter(exs.values())).model
    xv = Value(f=model.check_input(x))
    out = {k: np.zeros((rounds, len(model.layers))) for k in exs}
    for r in range(rounds):
        for k, ex in exs.items():
            values: list[Value] = []
            for i in range(len(model.layers)):
                t = time.perf_counter()
                v, _ = ex.run_layer(i, ex.inputs_of(i, xv, values))
                out[k][r, i] = time.perf_counter() - t
                values.append(v)
    return {k: np.median(v, axis=0) for k, v in out.items()}


def latency(model, qm, x: np.ndarray, runs: int, layers: bool) -> dict:
    ex = {"float": Executor(model), "hybrid": Executor(model, qm, "hybrid"), "int": Executor(model, qm, "int")}
    # the like-for-like peer of INT: FLOAT on the same im2col GEMMs (INT cannot use Winograd: its sums
    # must stay integer-exact in float32)
    with winograd.disabled():
        plain = engine.load(TINY_CFG, weights=TINY_WEIGHTS)
        plain.forward(x)
    fns = {"float": lambda: model.forward(x), "float_im2col": lambda: plain.forward(x),
           "hybrid": lambda: ex["hybrid"].run(x), "int": lambda: ex["int"].run(x)}
    for fn in fns.values():      # warm-up: prepared weights, scratch buffers, derived caches
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for r in range(runs):
        for k in order[r % len(order):] + order[:r % len(order)]:   # rotate: no mode always follows the same
            times[k].append(timed(fns[k]))
    med = {k: float(np.median(v)) for k, v in times.items()}
    ratio = lambda a, b: float(np.median(np.array(times[a]) / np.array(times[b])))  # noqa: E731
    out = {"runs": runs, "median_s": med, "min_s": {k: float(np.min(v)) for k, v in times.items()},
           "int_over_float": ratio("int", "float"), "hybrid_over_float": ratio("hybrid", "float"),
           "int_over_float_im2col": ratio("int", "float_im2col")}
    if layers:
        per = layer_times(ex, x, max(5, runs // 3))
        out["layers_ms"] = [{"layer": i, "kind": l.kind, **{k: round(1e3 * float(v[i]), 2) for k, v in per.items()}}
                            for i, l in enumerate(model.layers)]
    return out


def calibration(model, images: list, rounds: int) -> dict:
    """Per-image calibration cost vs FLOAT inference on the same images (alternating rounds)."""
    def infer() -> None:
        for im in images:
            model.forward(model.preprocess(im).x)

    stats_box = {}

    def calib() -> None:
        stats_box["stats"] = collect(model, images, progress=False)

    infer()
    t_inf, t_col = [], []
    for _ in range(rounds):
        t_inf.append(timed(infer))
        t_col.append(timed(calib))
    stats = stats_box["stats"]
    search = {}
    for m in METHODS:
        search[m] = float(np.median([timed(lambda: quantize_model(model, stats, m, per_channel=m != "yolo2_light"))
                                     for _ in range(max(1, rounds // 2))]))
    inf, col = float(np.median(t_inf)), float(np.median(t_col))
    n = len(images)
    return {"images": n, "float_inference_s_per_image": inf / n, "collect_s_per_image": col / n,
            "quantize_model_s": search,
            "calibration_over_float": {m: (col + s) / inf for m, s in search.items()},
            "collect_over_float": col / inf}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=25, help="timed rounds per mode (>= 20 recommended)")
    ap.add_argument("--calib-rounds", type=int, default=3)
    ap.add_argument("--layers", action="store_true", help="per-layer medians too")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    model = engine.load(TINY_CFG, weights=TINY_WEIGHTS)
    images = [im for p in sorted(IMAGES.glob("*.jpg")) for im in augment(p).values()]
    cal = calibration(model, images, args.calib_rounds)
    stats = collect(model, images, progress=False)
    qm = quantize_model(model, stats, "minmax", per_channel=True)
    x = model.preprocess(IMAGES / "dog.jpg").x
    lat = latency(model, qm, x, args.runs, args.layers)
    result = {"model": "yolov3-tiny@416", "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
              "latency": lat, "calibration": cal, "targets": TARGETS}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    med = lat["median_s"]
    print(f"yolov3-tiny@416, {lat['runs']} interleaved rounds, BLAS threads {result['blas_threads']}")
    print(f"  FLOAT {1e3 * med['float']:.1f} ms   HYBRID {1e3 * med['hybrid']:.1f} ms   INT {1e3 * med['int']:.1f} ms"
          f"   (FLOAT without Winograd {1e3 * med['float_im2col']:.1f} ms)")
    print(f"  INT/FLOAT {lat['int_over_float']:.2f} (target <= {TARGETS['int_over_float']})   "
          f"HYBRID/FLOAT {lat['hybrid_over_float']:.2f}   INT/FLOAT-im2col {lat['int_over_float_im2col']:.2f} "
          "(the same GEMMs, so the cost of integer exactness and requantization)")
    print(f"calibration on {cal['images']} images: collect {1e3 * cal['collect_s_per_image']:.0f} ms/image vs "
          f"FLOAT inference {1e3 * cal['float_inference_s_per_image']:.0f} ms/image ({cal['collect_over_float']:.2f}x)")
    for m, r in cal["calibration_over_float"].items():
        print(f"  {m:<12} threshold search + weights {cal['quantize_model_s'][m]:.2f} s -> calibration/FLOAT {r:.2f} "
              f"(target <= {TARGETS['calibration_over_float']})")
    if args.layers:
        print(f"{'layer':<18}{'FLOAT ms':>10}{'HYBRID ms':>11}{'INT ms':>9}")
        for row in lat["layers_ms"]:
            print(f"{row['layer']:>3} {row['kind']:<14}{row['float']:>10.2f}{row['hybrid']:>11.2f}{row['int']:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
