"""Session responsiveness and memory (issue 4 targets; figures, not assertions).

* median time of one `step()` plus the inspection data a layer panel needs (output feature-map
  montage PNG and histogram counts, plus the summary statistics), per yolov3-tiny layer, in each
  mode — target <= 150 ms;
* peak RSS of a yolov3 (random weights) FLOAT and INT session that keeps every layer's output, at
  416 and at the cfg's own 608, each measured in a fresh subprocess — target <= 1.0 GiB; also FLOAT
  with QW_WINOGRAD=0 (im2col only: the Winograd-transformed weights are 16/9 of the 3x3 weights).

    python benchmarks/bench_session.py [--repeats 3] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

import numpy as np  # noqa: E402


def step_and_panel_times(mode: str, repeats: int) -> list[float]:
    import engine
    from engine import zoo
    from engine.calib.collect import collect
    from engine.quant.qmodel import quantize_model
    from engine.imaging.samples import sample, sample_images
    from engine.session.stats import histogram_counts
    from qwidgets._encode import feature_montage
    model = zoo.load("yolov3-tiny", progress=False)
    qm = quantize_model(model, collect(model, sample_images(), progress=False), "minmax", per_channel=True)
    times = []
    for _ in range(repeats):
        s = engine.Session(model, qm, mode, sample("dog"))
        while not s.done:
            t0 = time.perf_counter()
            r = s.step()
            y = s.output(r.index)
            feature_montage(y if y.ndim == 3 else y.reshape(-1, 1, 1))
            histogram_counts(y)
            s.summary(r.index)
            times.append(time.perf_counter() - t0)
    return times


def session_peak_rss(mode: str, size: int, winograd: bool = True) -> tuple[int, int]:
    """Peak RSS of a process that only loads the model files and runs a session in `mode` (the model
    and quantized model are prepared in another process, so calibration memory is not counted).
    FLOAT keeps float32 outputs, INT int8 ones (4x smaller): FLOAT is the worst case. The session
    steps to the end without decoding detections: with random weights every one of the 10,647
    boxes x 80 classes passes the threshold (168,000 detections at 416), which measures the list of
    Detection objects, not the session."""
    import tempfile
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        prep = ("import numpy as np, engine\n"
                "from engine.calib.collect import collect\nfrom engine.quant.qmodel import quantize_model\n"
                "from pathlib import Path\n"
                "from engine.darknet.cfg import with_input_size\n"
                f"text = Path(r'{ROOT.parent / 'shared/models/cfg/yolov3.cfg'}').read_text()\n"
                f"Path(r'{tmp}/yolov3.cfg').write_text(with_input_size(text, {size}, {size}))\n"
                f"m = engine.load(r'{tmp}/yolov3.cfg', random_weights=0)\n"
                "x = np.random.default_rng(0).random(m.input_shape, dtype=np.float32)\n"
                "qm = quantize_model(m, collect(m, [x], progress=False), 'minmax', per_channel=True)\n"
                f"m.save(r'{tmp}/m.npz'); qm.save(r'{tmp}/q.npz'); np.save(r'{tmp}/x.npy', x)\n")
        subprocess.run([sys.executable, "-c", prep], cwd=ROOT, check=True, env=env)
        run = ("import numpy as np, resource, engine\n"
               f"m = engine.load(r'{tmp}/m.npz')\n"
               f"s = engine.Session(m, r'{tmp}/q.npz', '{mode}', np.load(r'{tmp}/x.npy'))\n"
               "while not s.done:\n    s.step()\n"
               "kept = sum(v.q.q.nbytes if v.q is not None else v.f.nbytes for v in s.values)\n"
               "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, kept)\n")
        out = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True, cwd=ROOT, check=True,
                             env={**env, "QW_WINOGRAD": "1" if winograd else "0"})
    peak, kept = (int(v) for v in out.stdout.split())
    return peak, kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    figures = {"load_average": os.getloadavg()[0]}
    for mode in ("float", "hybrid", "int"):
        t = np.array(step_and_panel_times(mode, args.repeats)) * 1000
        figures[f"step_panel_ms_{mode}"] = {"median": float(np.median(t)), "p90": float(np.percentile(t, 90)),
                                            "max": float(t.max())}
    for size in (416, 608):
        for mode in ("float", "int", "float-no-winograd"):
            peak, kept = session_peak_rss(mode.split("-")[0], size, winograd=not mode.endswith("no-winograd"))
            figures[f"yolov3_{size}_{mode}_session_peak_rss_gib"] = peak / 2 ** 30
            figures[f"yolov3_{size}_{mode}_kept_outputs_gib"] = kept / 2 ** 30
    if args.json:
        print(json.dumps(figures, indent=1))
        return
    print(f"load average {figures['load_average']:.2f} (2 cores; other load inflates times)")
    for mode in ("float", "hybrid", "int"):
        f = figures[f"step_panel_ms_{mode}"]
        print(f"step + panel data, yolov3-tiny {mode:>6}: median {f['median']:.1f} ms, p90 {f['p90']:.1f} ms, "
              f"max {f['max']:.1f} ms   (target <= 150 ms median)")
    for size in (416, 608):
        for mode in ("float", "int", "float-no-winograd"):
            print(f"yolov3 @{size} {mode.upper()} session keeping all outputs: peak RSS "
                  f"{figures[f'yolov3_{size}_{mode}_session_peak_rss_gib']:.2f} GiB (outputs kept: "
                  f"{figures[f'yolov3_{size}_{mode}_kept_outputs_gib']:.2f} GiB; target <= 1.0 GiB)")


if __name__ == "__main__":
    main()
