"""Calibration time with every refinement on, over a plain FLOAT pass on the same images (issue 14: <= 3x).

A FLOAT pass (preprocess + forward of each photo) runs between every two calibrations, and each
calibration's time is divided by the mean of the FLOAT passes around it; per method, a calibration
with every refinement: cross-layer equalization when the tree has it (data-free, `weights` mode),
the statistics pass keeping its FLOAT outputs, thresholds + int8 weights, the EQ threshold search
and bias correction (both reading the kept outputs), and head bias correction (one INT pass) when asked.
The median of those ratios is printed, with the median of each stage over the median FLOAT pass.

    python benchmarks/bench_calib_time.py [--methods minmax,kl,log2] [--rounds 5] [--refine cle,eq,bias,head]
                                          [--profile qwidgets_asym]

EQ searches the grids of qwidgets (int8) and qwidgets_asym (uint8 + zero point); under other profiles every
refinement is cle + bias.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.calib.collect import collect, image_list  # noqa: E402
from engine.calib.floats import FloatOutputs  # noqa: E402
from engine.model import load  # noqa: E402
from engine.quant import refine  # noqa: E402
from engine.quant.autoquant import quantize  # noqa: E402

SHARED = Path(os.environ.get("QW_SHARED", ROOT.parent / "shared"))
HAS_CLE = hasattr(refine, "equalize")


def float_pass(model, photos) -> None:
    for f in photos:
        model.forward(model.preprocess(f).x)


def calibrate(model, photos, method: str, refinements: set[str], profile: str = "qwidgets") -> dict[str, float]:
    """Seconds per stage of one calibration with `refinements`."""
    times: dict[str, float] = {}
    t = time.perf_counter()
    qmodel_of, spec, forward = model, None, None
    if "cle" in refinements and HAS_CLE:
        qmodel_of, spec = refine.equalize(model, "weights", photos)
        forward = refine.derived_forward(model, spec)        # as `quantize --refine cle` calibrates
        times["cle"] = time.perf_counter() - t
        t = time.perf_counter()
    keep = FloatOutputs(qmodel_of) if refinements & {"eq", "bias", "head"} else None
    stats = collect(qmodel_of, photos, progress=False, keep=keep, forward=forward)
    times["statistics"] = time.perf_counter() - t
    t = time.perf_counter()
    qm = quantize(qmodel_of, stats, method, per_channel=True, profile=profile)
    if spec is not None:
        qm = refine.attach_equalization(qm, spec, "weights", model, qmodel_of)
    times["thresholds+weights"] = time.perf_counter() - t
    if "eq" in refinements and profile in ("qwidgets", "qwidgets_asym"):
        t = time.perf_counter()
        qm = refine.eq_search(model, qm, keep)       # the original: eq finds the equalized twin itself
        times["eq"] = time.perf_counter() - t
    if "bias" in refinements:
        t = time.perf_counter()
        qm = refine.bias_correction(model, qm, photos, floats=keep)
        times["bias"] = time.perf_counter() - t
    if "head" in refinements:
        t = time.perf_counter()
        qm = refine.head_bias_correction(model, qm, floats=keep, images=photos)
        times["head"] = time.perf_counter() - t
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default="minmax,kl,log2")
    p.add_argument("--refine", default="cle,eq,bias")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--profile", default="qwidgets")
    p.add_argument("--images", default=str(SHARED / "images"))
    p.add_argument("--models", default=str(SHARED / "models"))
    args = p.parse_args(argv)
    model = load(Path(args.models) / "yolov3-tiny.cfg", Path(args.models) / "yolov3-tiny.weights")
    photos = image_list(args.images)
    methods = [m for m in args.methods.split(",") if m]
    refinements = {r for r in args.refine.split(",") if r}
    if args.profile not in ("qwidgets", "qwidgets_asym"):
        refinements.discard("eq")
    float_pass(model, photos)                               # warm-up: prepared weights, scratch buffers
    for m in methods:
        calibrate(model, photos, m, refinements, args.profile)
    floats: list[float] = []
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    ratios: dict[str, list[float]] = {m: [] for m in methods}

    def timed_float() -> float:
        t = time.perf_counter()
        float_pass(model, photos)
        floats.append(time.perf_counter() - t)
        return floats[-1]

    before = timed_float()
    for _ in range(args.rounds):
        for m in methods:
            runs[m].append(calibrate(model, photos, m, refinements, args.profile))
            after = timed_float()
            # each calibration against the FLOAT passes just before and after it: the load of the
            # shared machine drifts, and a ratio of neighbours cancels most of it
            ratios[m].append(sum(runs[m][-1].values()) / ((before + after) / 2))
            before = after
    f = statistics.median(floats)
    used = sorted(refinements & ({"eq", "bias", "head"} | ({"cle"} if HAS_CLE else set())))
    print(f"{len(photos)} photos, {args.rounds} interleaved rounds, refinements: {', '.join(used)}"
          f"{'' if HAS_CLE or 'cle' not in refinements else ' (no CLE in this tree)'}, profile {args.profile}; "
          f"plain FLOAT pass median {f:.3f} s")
    for m in methods:
        stages = ", ".join(f"{k} {statistics.median(r[k] for r in runs[m]) / f:.2f}" for k in runs[m][0])
        print(f"{m:<8} calibration with every refinement / plain FLOAT pass = {statistics.median(ratios[m]):.2f}x "
              f"(min {min(ratios[m]):.2f}, max {max(ratios[m]):.2f})   stages / median FLOAT: {stages}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
