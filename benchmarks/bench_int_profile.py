"""Per-layer INT against FLOAT inside real `Session.run()` calls, interleaved in one process (issue 17).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_int_profile.py [--runs 25] [--method minmax]
        [--profiles qwidgets,onnxruntime,qwidgets_asym] [--mode int|hybrid]

yolov3-tiny @416, real weights, dog.jpg, quantized per channel (minmax, or --method) from the
shared photos (as `bench_int.py`), once per device profile (--profiles; default the engine's own,
`qwidgets`). Each round resets and runs the FLOAT session and each profile's INT session (order rotated
every round) and keeps the session's own per-layer wall times (`Session.timings`, what the Explorer
shows), so the per-layer figures add up to the whole runs they come from. Prints per layer the medians
of FLOAT and of each INT, and INT - FLOAT, then per profile the whole runs (median of the per-round
ratios) and the load. `--mode hybrid` times HYBRID sessions instead.
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
    ap.add_argument("--method", default="minmax", help="calibration method of the quantized models")
    ap.add_argument("--profiles", default="qwidgets", help="device profiles, comma-separated (engine/quant/profiles)")
    ap.add_argument("--mode", default="int", choices=("int", "hybrid"), help="the quantized sessions' mode")
    args = ap.parse_args(argv)
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    model = engine.load(SHARED / "models/yolov3-tiny.cfg", weights=SHARED / "models/yolov3-tiny.weights")
    photos = sorted((SHARED / "images").glob("*.jpg"))
    stats = collect(model, photos, progress=False)
    image = SHARED / "images/dog.jpg"
    sessions = {"float": Session(model, None, "float", image)}
    for p in profiles:
        qm = quantize_model(model, stats, args.method, per_channel=True, profile=p)
        sessions[p] = Session(model, qm, args.mode, image)
    for s in sessions.values():
        s.run()
        s.reset()
        s.run()
    load0 = os.getloadavg()[0]
    names = list(sessions)
    whole = {m: [] for m in names}
    layers = {m: [] for m in names}
    for r in range(args.runs):
        k = r % len(names)
        for m in names[k:] + names[:k]:
            s = sessions[m]
            s.reset()
            t = time.perf_counter()
            s.run()
            whole[m].append(time.perf_counter() - t)
            layers[m].append(list(s.timings))
    med = {m: 1e3 * np.median(np.array(layers[m]), axis=0) for m in names}
    f = med["float"]
    print(f"{'layer':<18}{'FLOAT ms':>9}" + "".join(f"{p[:14]:>15}{'-FL':>7}" for p in profiles))
    for i, layer in enumerate(model.layers):
        desc = layer.kind[:5] + (f" {layer.size}x{layer.size}/{layer.stride} {layer.out_shape[0]}"
                                 if layer.kind == "convolutional" else "")
        print(f"{i:>3} {desc:<14}{f[i]:>9.2f}" + "".join(f"{med[p][i]:>15.2f}{med[p][i] - f[i]:>+7.2f}" for p in profiles))
    print(f"{'sum of medians':<18}{f.sum():>9.2f}" + "".join(f"{med[p].sum():>15.2f}{med[p].sum() - f.sum():>+7.2f}"
                                                          for p in profiles))
    wf = np.array(whole["float"])
    for p in profiles:
        wi = np.array(whole[p])
        mode = args.mode.upper()
        print(f"{args.method}, profile {p}: Session.run() {args.runs} rounds, BLAS threads "
              f"{os.environ['OPENBLAS_NUM_THREADS']}: FLOAT {1e3 * np.median(wf):.1f} ms, {mode} {1e3 * np.median(wi):.1f} ms, "
              f"{mode}/FLOAT {np.median(wi / wf):.3f} (median of per-round ratios; INT target <= 1.2)")
    print(f"load {load0:.1f} -> {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
