"""A/B harness: FLOAT forward of a model in several engine trees, interleaved with OpenCV DNN.

    git worktree add --detach /tmp/base main          # the tree to compare against
    .venv/bin/python benchmarks/bench_ab_trees.py --trees base=/tmp/base,new=. [--model yolov3-tiny|yolov3]
        [--rounds 60] [--mode int]

`--mode int` (yolov3-tiny, real weights): each tree's worker holds a FLOAT and an INT `Session` (minmax,
per channel, calibrated on the shared photos, as `bench_int_profile.py`) and times one `Session.run()`
of each per round (order alternating), no OpenCV: it prints per tree the medians, the median of the
per-round INT / FLOAT ratios, and INT against the base tree's INT.

On a shared, noisy host a change of a few percent is only visible this way: both trees and the peer
measured in the same seconds, many rounds, medians and per-round ratios (README's figures quote them).

Each tree runs in its own worker process (PYTHONPATH = the tree, OPENBLAS_NUM_THREADS=2), OpenCV in
another (cv2.setNumThreads(2), DNN_BACKEND_OPENCV, blob 1x3x416x416). The master asks the workers for
one timed forward each, round-robin, the order rotating every round, for `rounds` rounds after a
warm-up; it prints medians and ratios ours / OpenCV per tree, and the load average before and after.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("QW_BENCH_CACHE", Path(tempfile.gettempdir()) / "qwidgets-bench"))   # inputs, random weights
MODELS = Path(os.environ.get("QW_MODEL_DIR", ROOT.parent / "shared" / "models"))

WORKER = r'''
import os, sys, time
import numpy as np
which, model, folder = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, os.path.join(os.environ.get("PYTHONPATH", "."), "benchmarks"))
from pathlib import Path
if which == "opencv":
    import cv2
    cv2.setNumThreads(2)
    cfg, weights = sys.argv[4], sys.argv[5]
    net = cv2.dnn.readNetFromDarknet(cfg, weights)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    outs = net.getUnconnectedOutLayersNames()
    blob = np.load(sys.argv[6])["x"][None]
    def run():
        net.setInput(blob)
        net.forward(outs)
elif which == "int":
    import engine
    from threadpoolctl import threadpool_limits
    threadpool_limits(2)
    from engine.calib.collect import collect
    from engine.quant.qmodel import quantize_model
    from engine.session import Session
    cfg, weights, shared = sys.argv[4], sys.argv[5], Path(sys.argv[6])
    m = engine.load(cfg, weights)
    photos = sorted((shared / "images").glob("*.jpg"))
    qm = quantize_model(m, collect(m, photos, progress=False), "minmax", per_channel=True)
    image = shared / "images" / "dog.jpg"
    ss = [Session(m, None, "float", image), Session(m, qm, "int", image)]
    print("engine", engine.__file__, file=sys.stderr, flush=True)
    flip = [0]
    def run():
        flip[0] ^= 1
        res = []
        for s in (ss if flip[0] else ss[::-1]):
            s.reset()
            t, c = time.perf_counter(), time.process_time()
            s.run()
            res.append(((time.perf_counter() - t) * 1e3, (time.process_time() - c) * 1e3))
        return res if flip[0] else res[::-1]
else:
    import engine
    from threadpoolctl import threadpool_limits
    threadpool_limits(2)
    cfg, weights = sys.argv[4], sys.argv[5]
    m = engine.load(cfg, weights)
    x = np.ascontiguousarray(np.load(sys.argv[6])["x"], np.float32)
    print("engine", engine.__file__, file=sys.stderr, flush=True)
    def run():
        m.forward(x)
out = sys.stdout
for line in sys.stdin:
    n = int(line)
    ts = []
    for _ in range(n):
        if which == "int":
            ts.append(";".join(f"{w:.4f}:{c:.4f}" for w, c in run()))
            continue
        t, c = time.perf_counter(), time.process_time()
        run()
        ts.append(f"{(time.perf_counter() - t) * 1e3:.4f}:{(time.process_time() - c) * 1e3:.4f}")
    out.write(" ".join(ts) + "\n")
    out.flush()
'''


def model_files(model: str, tree: str) -> tuple[str, str, str]:
    """(cfg, weights, input npz) shared by every worker."""
    WORK.mkdir(parents=True, exist_ok=True)
    inp = WORK / f"{model}-input.npz"
    if model == "yolov3-tiny":
        cfg, weights = MODELS / "yolov3-tiny.cfg", MODELS / "yolov3-tiny.weights"
    else:
        cfg, weights = WORK / "yolov3.cfg", WORK / "yolov3-random.weights"
    if not (Path(weights).exists() and inp.exists()):
        code = (
            "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; import numpy as np\n"
            "import bench_float as b\n"
            f"cfg, w = b.model_files({model!r}, Path({str(WORK)!r}))\n"
            "import engine; m = engine.load(cfg, w)\n"
            f"np.savez({str(inp)!r}, x=b.model_input(m.input_shape))\n")
        subprocess.run([sys.executable, "-c", code], cwd=tree, check=True,
                       env={**os.environ, "PYTHONPATH": tree, "QW_MODEL_DIR": str(MODELS)})
    return str(cfg), str(weights), str(inp)


def start(which: str, tree: str, files: tuple[str, str, str], model: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": tree, "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2",
           "QW_MODEL_DIR": str(MODELS)}
    return subprocess.Popen([sys.executable, "-c", WORKER, which, model, str(WORK), *files], cwd=tree, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)


def ask(p: subprocess.Popen, n: int = 1) -> list:
    p.stdin.write(f"{n}\n")
    p.stdin.flush()
    return [tuple(float(x) for x in v.split(":")) if ";" not in v
            else tuple(tuple(float(x) for x in u.split(":")) for u in v.split(";"))
            for v in p.stdout.readline().split()]


def run_rounds(workers: dict[str, subprocess.Popen], rounds: int, warmup: int) -> tuple[dict[str, list], str]:
    """Warm every worker up, then ask each for one sample per round, round-robin with the starting
    worker rotated every round; close them. Returns each worker's replies and a line on time and load."""
    for p in workers.values():
        ask(p, warmup)
    load0 = os.getloadavg()
    got: dict[str, list] = {k: [] for k in workers}
    items = list(workers.items())
    t0 = time.time()
    for r in range(rounds):
        for k, p in items[r % len(items):] + items[:r % len(items)]:
            (reply,) = ask(p)
            got[k].append(reply)
    load1 = os.getloadavg()
    for p in workers.values():
        p.stdin.close()
        p.wait()
    return got, (f"{rounds} rounds round-robin, 2 threads each, {time.time() - t0:.0f} s; "
                 f"load {load0[0]:.2f}/{load0[1]:.2f} -> {load1[0]:.2f}/{load1[1]:.2f}")


def against(base: str, wall: dict, cpu: dict, k: str) -> str:
    """Tree k against the base tree (the first): ratios of the median wall and CPU times."""
    return (f"vs {base}: {np.median(wall[k]) / np.median(wall[base]):.3f}"
            f" (CPU {np.median(cpu[k]) / np.median(cpu[base]):.3f})")


def main_int(args, trees: dict[str, str]) -> None:
    """--mode int: FLOAT and INT `Session.run()` per tree, interleaved (module docstring)."""
    shared = MODELS.parent
    files = (str(MODELS / "yolov3-tiny.cfg"), str(MODELS / "yolov3-tiny.weights"), str(shared))
    workers = {name: start("int", tree, files, "yolov3-tiny") for name, tree in trees.items()}
    got, when = run_rounds(workers, args.rounds, args.warmup)
    fl = {k: [f for (f, _), _ in v] for k, v in got.items()}
    it = {k: [i for _, (i, _) in v] for k, v in got.items()}
    cf = {k: [c for (_, c), _ in v] for k, v in got.items()}
    ci = {k: [c for _, (_, c) in v] for k, v in got.items()}
    print(f"yolov3-tiny @416 INT vs FLOAT Session.run(), {when}")
    base = next(iter(trees))
    for k in trees:
        f, q = np.array(fl[k]), np.array(it[k])
        line = (f"  {k:8s} FLOAT {np.median(f):7.2f} ms, INT {np.median(q):7.2f} ms (p25 {np.percentile(q, 25):.2f}); "
                f"INT/FLOAT per-round median {np.median(q / f):.3f} (CPU {np.median(np.array(ci[k]) / np.array(cf[k])):.3f})")
        if k != base:
            line += f"; INT {against(base, it, ci, k)}"
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="yolov3-tiny", choices=("yolov3-tiny", "yolov3"))
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--trees", required=True, help="name=path,name=path,...: engine trees (the first is the base)")
    ap.add_argument("--mode", default="float", choices=("float", "int"),
                    help="int: FLOAT and INT Session.run() of yolov3-tiny per tree, no OpenCV")
    args = ap.parse_args()
    trees = {k: str(Path(v).resolve()) for k, v in (t.split("=", 1) for t in args.trees.split(","))}
    if args.mode == "int":
        main_int(args, trees)
        return
    files = model_files(args.model, next(iter(trees.values())))
    workers = {name: start("ours", tree, files, args.model) for name, tree in trees.items()}
    workers["opencv"] = start("opencv", next(iter(trees.values())), files, args.model)
    got, when = run_rounds(workers, args.rounds, args.warmup)
    times = {k: [wall for wall, _ in v] for k, v in got.items()}
    cpu = {k: [c for _, c in v] for k, v in got.items()}
    cv = float(np.median(times["opencv"]))
    print(f"{args.model} @416, {when}")
    print(f"  opencv {cv:8.2f} ms (p25 {np.percentile(times['opencv'], 25):.2f}, min {min(times['opencv']):.2f}); "
          f"CPU {np.median(cpu['opencv']):.1f} ms per forward")
    base = next(iter(trees))
    for k in trees:
        med = float(np.median(times[k]))
        # per-round ratios: each round's ours / that round's OpenCV, then the median
        rr = float(np.median(np.array(times[k]) / np.array(times["opencv"])))
        line = (f"  {k:8s} {med:8.2f} ms (p25 {np.percentile(times[k], 25):.2f}, min {min(times[k]):.2f})  "
                f"ratio {med / cv:.3f}x OpenCV (per-round median {rr:.3f})")
        if k != base:
            line += f"  {against(base, times, cpu, k)}"
        print(line + f"; CPU {np.median(cpu[k]):.1f} ms per forward")


if __name__ == "__main__":
    main()
