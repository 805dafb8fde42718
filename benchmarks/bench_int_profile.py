"""Per-layer INT against FLOAT inside real `Session.run()` calls, interleaved in one process (issue 17).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_int_profile.py [--runs 25] [--method minmax]

yolov3-tiny @416, real weights, dog.jpg, quantized per channel (minmax, or --method) from the
shared photos (as `bench_int.py`). Each round resets and runs the FLOAT and the INT session (order alternating) and
keeps the session's own per-layer wall times (`Session.timings`, what the Explorer shows), so the
per-layer figures add up to the whole runs they come from. Prints per layer the medians of FLOAT and
INT, INT - FLOAT and INT / FLOAT, then the whole runs (median of the per-round ratios) and the load.
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
from engine.quant.qmodel import quantize_model  # noqa: E402
from engine.session import Session  # noqa: E402

SHARED = Path(os.environ.get("QW_SHARED", ROOT.parent / "shared"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=25)
    ap.add_argument("--method", default="minmax", help="calibration method of the quantized model")
    args = ap.parse_args(argv)
    model = engine.load(SHARED / "models/yolov3-tiny.cfg", weights=SHARED / "models/yolov3-tiny.weights")
    photos = sorted((SHARED / "images").glob("*.jpg"))
    qm = quantize_model(model, collect(model, photos, progress=False), args.method, per_channel=True)
    image = SHARED / "images/dog.jpg"
    sessions = {"float": Session(model, None, "float", image), "int": Session(model, qm, "int", image)}
    for s in sessions.values():
        s.run()
        s.reset()
        s.run()
    load0 = os.getloadavg()[0]
    whole = {m: [] for m in sessions}
    layers = {m: [] for m in sessions}
    for r in range(args.runs):
        for m in (("float", "int") if r % 2 == 0 else ("int", "float")):
            s = sessions[m]
            s.reset()
            t = time.perf_counter()
            s.run()
            whole[m].append(time.perf_counter() - t)
            layers[m].append(list(s.timings))
    f, q = (1e3 * np.median(np.array(layers[m]), axis=0) for m in ("float", "int"))
    print(f"{'layer':<18}{'FLOAT ms':>9}{'INT ms':>9}{'INT-FL':>8}{'ratio':>7}")
    for i, layer in enumerate(model.layers):
        desc = layer.kind[:5] + (f" {layer.size}x{layer.size}/{layer.stride} {layer.out_shape[0]}"
                                 if layer.kind == "convolutional" else "")
        print(f"{i:>3} {desc:<14}{f[i]:>9.2f}{q[i]:>9.2f}{q[i] - f[i]:>+8.2f}{q[i] / max(f[i], 1e-9):>7.2f}")
    print(f"{'sum of medians':<18}{f.sum():>9.2f}{q.sum():>9.2f}{q.sum() - f.sum():>+8.2f}{q.sum() / f.sum():>7.2f}")
    wf, wi = np.array(whole["float"]), np.array(whole["int"])
    print(f"{args.method}: Session.run() {args.runs} rounds, BLAS threads {os.environ['OPENBLAS_NUM_THREADS']}: FLOAT "
          f"{1e3 * np.median(wf):.1f} ms, INT {1e3 * np.median(wi):.1f} ms, INT/FLOAT {np.median(wi / wf):.3f} "
          f"(median of per-round ratios; target <= 1.2), load {load0:.1f} -> {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
