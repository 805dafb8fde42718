"""Explorer responsiveness (issue 5 target; figures, not assertions).

Median time from the Step click handler to all views updated, over the 24 yolov3-tiny layers, in
each mode: `explorer.controls.step_button.click()` runs the handler and, synchronously, every
observer it triggers (session step, graph highlight, selection, layer panel PNGs + histograms,
weight-editor grid, overlay, detections), so the wall time of `click()` is the kernel-side latency.
Measured headless in this process (no browser: the comm transfer is not included). Target: median
<= 200 ms. The first pass is cold (per-tensor calibration thresholds are computed and cached on
first view); `--overlay sqnr` also colours the graph by per-layer SQNR (one `fitness` call per step).

    python benchmarks/bench_explorer.py [--repeats 2] [--overlay type|sqnr] [--json]
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
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

import numpy as np  # noqa: E402

MODES = ("float", "hybrid", "int")
TARGET_MS = 200.0


def step_click_times(explorer, repeats: int) -> tuple[list[float], list[float]]:
    """(all click times, first-pass click times) in seconds, `repeats` passes over every layer."""
    times, first = [], []
    for r in range(repeats):
        explorer.controls.reset_button.click()
        while not explorer.session.done:
            t0 = time.perf_counter()
            explorer.controls.step_button.click()
            dt = time.perf_counter() - t0
            times.append(dt)
            if r == 0:
                first.append(dt)
        if explorer.status.startswith("error"):
            raise RuntimeError(explorer.status)
    return times, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--overlay", default="type", choices=["type", "sqnr", "saturation", "range_use"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import engine
    from engine import zoo
    from engine.calib.collect import collect
    from engine.quant.qmodel import quantize_model
    from engine.imaging.samples import sample, sample_images
    from qwidgets import Explorer

    model = zoo.load("yolov3-tiny", progress=False)
    qm = quantize_model(model, collect(model, sample_images(), progress=False), "minmax", per_channel=True)
    figures: dict = {"load_average": os.getloadavg()[0], "overlay": args.overlay, "repeats": args.repeats}
    for mode in MODES:
        t0 = time.perf_counter()
        ex = Explorer(engine.Session(model, qm, mode, sample("dog")))
        build = time.perf_counter() - t0
        ex.graph.overlay = args.overlay
        times, first = step_click_times(ex, args.repeats)
        t, f = np.array(times) * 1000, np.array(first) * 1000
        figures[f"step_click_ms_{mode}"] = {"median": float(np.median(t)), "p90": float(np.percentile(t, 90)),
                                            "max": float(t.max()), "first_pass_median": float(np.median(f)),
                                            "explorer_build_s": build, "steps": int(t.size)}
    figures["load_average_end"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(figures, indent=1))
        return
    print(f"load average {figures['load_average']:.2f} -> {figures['load_average_end']:.2f} "
          "(2 cores; other load inflates times)")
    for mode in MODES:
        f = figures[f"step_click_ms_{mode}"]
        ok = "ok" if f["median"] <= TARGET_MS else "OVER"
        print(f"Step click -> all views updated, yolov3-tiny {mode:>6} (overlay {args.overlay}): median "
              f"{f['median']:.1f} ms, p90 {f['p90']:.1f} ms, max {f['max']:.1f} ms, first pass median "
              f"{f['first_pass_median']:.1f} ms [{ok}, target <= {TARGET_MS:.0f} ms]; Explorer built in "
              f"{f['explorer_build_s']:.2f} s")


if __name__ == "__main__":
    main()
