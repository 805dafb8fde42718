"""FLOAT forward latency of the NumPy engine against onnxruntime on the exported ONNX graph.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_onnx.py [--runs 30] [--models yolov3-tiny,yolov3] [--json]

A peer comparison, not a target: onnxruntime runs the graph written by `engine.export.export_onnx`
(BN folded, raw heads, opset 17, graph optimisations on). Models: yolov3-tiny @416 with its real
weights, and optionally yolov3 @416 with random weights. Both engines use 2 threads (ORT
intra-op threads = 2, inter-op = 1; OpenBLAS via threadpoolctl if installed, else
OPENBLAS_NUM_THREADS=2 set before NumPy is imported). Timed runs alternate (ours, ORT, ours, ...)
after a warm-up; medians are reported, with the max head difference of the two engines' outputs.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# first: bench_float sets the BLAS thread variables before NumPy is imported
from bench_float import DOG_INPUT, THREADS, TINY_CFG, TINY_WEIGHTS, YOLOV3_CFG, limit_blas_threads  # noqa: E402

import numpy as np  # noqa: E402

import engine  # noqa: E402
from engine.export import export_onnx  # noqa: E402

MODELS = ("yolov3-tiny", "yolov3")


def load_model(name: str, folder: Path) -> engine.Model:
    if name == "yolov3-tiny":
        return engine.load(TINY_CFG, weights=TINY_WEIGHTS)
    text = YOLOV3_CFG.read_text().replace("width=608", "width=416").replace("height=608", "height=416")
    cfg = folder / "yolov3.cfg"
    cfg.write_text(text)
    return engine.load(cfg, random_weights=0)


def model_input(shape: tuple[int, int, int]) -> np.ndarray:
    x = np.load(DOG_INPUT)["input"]
    if x.shape != shape:
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
    return np.ascontiguousarray(x, np.float32)


def ort_session(path: Path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def interleaved(fns: dict[str, Callable[[], object]], runs: int, warmup: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t) * 1e3)
    return times


def bench(name: str, args: argparse.Namespace, folder: Path) -> dict:
    model = load_model(name, folder)
    x = model_input(model.input_shape)
    path = export_onnx(model, folder / f"{name}.onnx", heads="raw")
    sess = ort_session(path)
    names = [o.name for o in sess.get_outputs()]
    feed = {"input": x[None]}
    outs = model.forward(x)
    got = sess.run(names, feed)
    diffs = {n: float(np.abs(g[0] - outs[int(n[5:])]).max() / max(1.0, float(np.abs(outs[int(n[5:])]).max())))
             for n, g in zip(names, got)}
    times = interleaved({"ours": lambda: model.forward(x), "onnxruntime": lambda: sess.run(names, feed)},
                        args.runs, args.warmup)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"model": name, "input": list(model.input_shape), "runs": args.runs, "onnx_bytes": path.stat().st_size,
            "ours_ms": med["ours"], "ort_ms": med["onnxruntime"], "ratio": med["ours"] / med["onnxruntime"],
            "ours_min_ms": min(times["ours"]), "ort_min_ms": min(times["onnxruntime"]), "head_max_rel_diff": diffs}


def report(res: dict) -> None:
    print(f"{res['model']} @{res['input'][1]}x{res['input'][2]}, median of {res['runs']} interleaved runs, "
          f"{THREADS} threads each (ONNX file {res['onnx_bytes'] / 1e6:.1f} MB)")
    print(f"  ours        {res['ours_ms']:8.2f} ms (min {res['ours_min_ms']:.2f})")
    print(f"  onnxruntime {res['ort_ms']:8.2f} ms (min {res['ort_min_ms']:.2f})")
    print(f"  ours / ORT  {res['ratio']:8.3f} x")
    print("  max |ORT - ours| / max(1, max|ours|): " +
          ", ".join(f"{k} {v:.2e}" for k, v in res["head_max_rel_diff"].items()))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30, help="timed runs per engine (>= 20)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--models", default="yolov3-tiny", help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    for n in names:
        if n not in MODELS:
            ap.error(f"--models: unknown model {n!r}; known: {', '.join(MODELS)}")
    if args.runs < 20:
        ap.error(f"--runs {args.runs}: at least 20 timed runs are needed for a stable median")
    blas = limit_blas_threads()
    import onnxruntime
    with tempfile.TemporaryDirectory(prefix="bench_onnx_") as tmp:
        results = [bench(n, args, Path(tmp)) for n in names]
    if args.json:
        print(json.dumps({"threads": THREADS, "blas_threads": blas, "numpy": np.__version__,
                          "onnxruntime": onnxruntime.__version__, "results": results}, indent=1))
        return
    print(f"NumPy {np.__version__}, onnxruntime {onnxruntime.__version__}, BLAS threads: {blas}")
    for res in results:
        report(res)


if __name__ == "__main__":
    main()
