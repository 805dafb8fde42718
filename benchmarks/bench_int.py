"""INT and HYBRID `Session.run()` against FLOAT `Session.run()`, as a user meets them (issue 17).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_int.py [--runs 15] [--layers] [--cpu]

yolov3-tiny @416 with its real weights on dog.jpg, quantized per channel with minmax from the shared
photos. One session per mode; each round resets and runs every session (the order rotates), so all
modes see the same machine; medians and the median of the per-round ratios are printed.
Target: INT / FLOAT <= 1.2. `--layers` adds per-layer medians (each layer timed alone, modes
alternating) with the kernel each int8 conv used, and for each int8 conv its kernel alone (the exact
accumulators, handed to an epilogue that does nothing): INT ms minus that is the requantization. `--cpu` times process CPU instead of wall clock
(steadier on a shared host; run it with OPENBLAS_NUM_THREADS=1 to compare single-thread work).
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")   # before NumPy is imported, as bench_float.py

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import engine  # noqa: E402
from engine.calib.collect import collect  # noqa: E402
from engine.quant import intops, intwinograd  # noqa: E402
from engine.quant.executor import Executor, Value  # noqa: E402
from engine.quant.qmodel import quantize_model  # noqa: E402
from engine.session import Session  # noqa: E402

SHARED = Path(os.environ.get("QW_SHARED", ROOT.parent / "shared"))
MODES = ("float", "hybrid", "int")


def kernel_of(model, layer, x_shape) -> str:
    if layer.kind != "convolutional":
        return ""
    c, h, w = x_shape
    if intwinograd.suitable(c, h, w, layer.out_shape[0], layer.size, layer.stride, layer.padding, layer.groups):
        return "int-winograd"
    return "1x1" if layer.size == 1 else f"im2col {layer.size}x{layer.size}/{layer.stride}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--layers", action="store_true")
    ap.add_argument("--cpu", action="store_true", help="process CPU time instead of wall clock")
    args = ap.parse_args(argv)
    clock = time.process_time if args.cpu else time.perf_counter
    model = engine.load(SHARED / "models/yolov3-tiny.cfg", weights=SHARED / "models/yolov3-tiny.weights")
    photos = sorted((SHARED / "images").glob("*.jpg"))
    qm = quantize_model(model, collect(model, photos, progress=False), "minmax", per_channel=True)
    image = SHARED / "images/dog.jpg"
    sessions = {m: Session(model, None if m == "float" else qm, m, image) for m in MODES}
    for s in sessions.values():             # warm-up: prepared weights, scratch buffers, derived caches
        s.run()
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(args.runs):
        order = MODES[r % 3:] + MODES[:r % 3]
        for m in order:
            s = sessions[m]
            s.reset()
            t = clock()
            s.run()
            times[m].append(clock() - t)
    t = {m: np.array(v) for m, v in times.items()}
    ratio = {m: float(np.median(t[m] / t["float"])) for m in ("hybrid", "int")}
    print(f"yolov3-tiny @416 Session.run(), {args.runs} interleaved rounds, BLAS threads "
          f"{os.environ['OPENBLAS_NUM_THREADS']}, {'CPU' if args.cpu else 'wall'} time, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("  " + "   ".join(f"{m.upper()} {1e3 * np.median(t[m]):.1f} ms" for m in MODES))
    print(f"  INT/FLOAT {ratio['int']:.2f} (target <= 1.2)   HYBRID/FLOAT {ratio['hybrid']:.2f}")
    if args.layers:
        exs = {"float": Executor(model), "hybrid": Executor(model, qm, "hybrid"), "int": Executor(model, qm, "int")}
        x = sessions["float"].pre.x
        xv = Value(f=model.check_input(x))
        rounds = max(5, args.runs // 3)
        per = {m: np.zeros((rounds, len(model.layers))) for m in MODES + ("kernel",)}
        for r in range(rounds):
            for m, ex in exs.items():
                values: list[Value] = []
                for i in range(len(model.layers)):
                    ins = ex.inputs_of(i, xv, values)
                    t0 = clock()
                    v, _ = ex.run_layer(i, ins)
                    per[m][r, i] = clock() - t0
                    values.append(v)
                    layer = model.layers[i]
                    if m == "int" and v.q is not None and layer.kind == "convolutional" and layer.groups == 1:
                        x_q, lq = ex.to_q(ins[0], layer.inputs[0], {}).q, qm.layers[i]
                        t0 = clock()
                        intops.conv_int_fused(x_q, lq.w_q, lambda: lq.w_f, layer.size, layer.stride,
                                              layer.padding, lambda *a: None)
                        per["kernel"][r, i] = clock() - t0
        med = {m: 1e3 * np.median(v, axis=0) for m, v in per.items()}
        print(f"{'layer':<16}{'int8 kernel':>16}{'FLOAT ms':>10}{'HYBRID ms':>11}{'INT ms':>9}{'(kernel)':>10}")
        for i, layer in enumerate(model.layers):
            shape = model.layers[layer.inputs[0]].out_shape if layer.inputs[0] >= 0 else model.input_shape
            kern = f"{med['kernel'][i]:>10.2f}" if med["kernel"][i] else ""
            print(f"{i:>3} {layer.kind:<12}{kernel_of(model, layer, shape):>16}{med['float'][i]:>10.2f}"
                  f"{med['hybrid'][i]:>11.2f}{med['int'][i]:>9.2f}{kern}")
        print(f"{'sum':<28}{med['float'].sum():>10.2f}{med['hybrid'].sum():>11.2f}{med['int'].sum():>9.2f}"
              f"{med['kernel'].sum():>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
