"""Which ORT session layout and options give the ORT batch backend its images/s: static vs symbolic
batch axis, intra-op spinning on vs off, one 2-thread session vs two 1-thread sessions side by side.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_ort_sessions.py [--images 64] [--rounds 3] [--int]

yolov3-tiny @416 (real weights), the shared photos letterboxed and repeated to --images. Each
configuration runs the raw ORT graph (heads="raw", as the backend builds it; the [yolo] decode is left
out: it is the same in every configuration) on the whole set once per round, chunk by chunk of 8
images, every configuration on a chunk before the next chunk (order rotated), interleaved with OpenCV
DNN (one image at a time and blobs of 8), 2 threads each. Printed: median and best images/s over the
rounds, median images per process CPU second, the ratio to OpenCV's best, the load average.

Configurations (`spin`: `session.intra_op.allow_spinning` = 1 with `session.force_spinning_stop` = 1,
i.e. the pool's threads spin between the ops of a run and stop when the run returns, so an idle pool
does not steal the next configuration's or OpenCV's CPU; `nospin`: allow_spinning = 0, the backend's
setting before this study):

  sym|st8 2t spin|nospin b8   one 2-thread session, one run on the chunk of 8 (symbolic N / static 8)
  sym|st1 2t spin|nospin 1x8  one 2-thread session, one run per image
  sym 2t spin<US>us b8|1x8    with --spin-us: spinning bounded to US microseconds
                              (`session.intra_op.spin_duration_us`, ORT >= 1.26)
  split sym|st1 1t            two 1-thread sessions' worth: `ort_backend.run_split` (a 1-thread session
                              has no pool, so spinning does not apply)

--no-stop drops force_spinning_stop (ORT's default: the pool spins on after a run, into whatever runs
next, the peer included). Before timing it checks that every layout gives the symbolic graph's bits on
the chunk (FLOAT, and INT with --int: the integer graph of a model quantized under profile onnxruntime).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import engine  # noqa: E402
from bench_float import IMAGES, THREADS, TINY_CFG, TINY_WEIGHTS, OpenCV, limit_blas_threads  # noqa: E402

BLOB = 8
NO_STOP = [False]          # --no-stop: spinning sessions keep spinning after a run (ORT's default)


def with_batch(proto, n: int):
    """A copy of `proto` whose input and outputs have batch axis `n` (an int: static; a str: symbolic)."""
    import onnx
    p = onnx.ModelProto()
    p.CopyFrom(proto)
    for v in list(p.graph.input) + list(p.graph.output):
        d = v.type.tensor_type.shape.dim[0]
        if isinstance(n, int):
            d.dim_value = n
        else:
            d.dim_param = n
    return p


def make_session(proto, threads: int, spin: bool, spin_us: int = 0):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    opts.add_session_config_entry("session.force_spinning_stop", "0" if spin and NO_STOP[0] else "1")
    if spin_us:                                     # ORT >= 1.26: how long an idle thread spins
        opts.add_session_config_entry("session.intra_op.spin_duration_us", str(spin_us))
    opts.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess, [o.name for o in sess.get_outputs()]


def configs(model, proto, prefix: str, spin_us: int = 0) -> dict:
    from engine.export.ort_backend import run_split
    sym, st1, st8 = with_batch(proto, "N"), with_batch(proto, 1), with_batch(proto, BLOB)
    out: dict = {}

    def batch(sess, names):
        return lambda chunk: sess.run(names, {"input": chunk})

    def each(sess, names):
        return lambda chunk: [sess.run(names, {"input": chunk[k:k + 1]}) for k in range(len(chunk))]

    def split(sess, names):
        shp = [tuple(o.shape[1:]) for o in sess.get_outputs()]
        return lambda chunk: run_split(sess, names, shp, chunk, THREADS)
    for spin in (True, False):
        tag = "spin" if spin else "nospin"
        out[f"{prefix}sym 2t {tag} b8"] = batch(*make_session(sym, THREADS, spin))
        out[f"{prefix}st8 2t {tag} b8"] = batch(*make_session(st8, THREADS, spin))
        out[f"{prefix}sym 2t {tag} 1x8"] = each(*make_session(sym, THREADS, spin))
        out[f"{prefix}st1 2t {tag} 1x8"] = each(*make_session(st1, THREADS, spin))
    if spin_us:
        out[f"{prefix}sym 2t spin{spin_us}us b8"] = batch(*make_session(sym, THREADS, True, spin_us))
        out[f"{prefix}sym 2t spin{spin_us}us 1x8"] = each(*make_session(sym, THREADS, True, spin_us))
    out[f"{prefix}split sym 1t"] = split(*make_session(sym, 1, False))
    out[f"{prefix}split st1 1t"] = split(*make_session(st1, 1, False))
    return out


def same_bits(runs: dict, chunk: np.ndarray) -> str:
    """Every layout's outputs on `chunk` against the first's: 'identical' or the ones that differ."""
    names = list(runs)
    ref = runs[names[0]](chunk)                      # a batch layout: one array per output
    bad = []
    for name in names[1:]:
        got = runs[name](chunk)
        if isinstance(got[0], list):                  # one run per image: stack image k's outputs
            got = [np.concatenate([g[j] for g in got]) for j in range(len(got[0]))]
        if not all(np.array_equal(a, b) for a, b in zip(ref, got)):
            bad.append(name)
    return "identical" if not bad else "DIFFER: " + ", ".join(bad)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--int", action="store_true", help="also the integer graph (profile onnxruntime)")
    ap.add_argument("--spin-us", type=int, default=0, metavar="US",
                    help="also spinning bounded to US microseconds (session.intra_op.spin_duration_us)")
    ap.add_argument("--no-stop", action="store_true",
                    help="spinning sessions without force_spinning_stop: they spin on after each run, into "
                         "whatever runs next (OpenCV included), as ORT does by default")
    ap.add_argument("--only", default="", help="comma-separated substrings: keep configurations naming one")
    args = ap.parse_args(argv)
    limit_blas_threads()
    NO_STOP[0] = args.no_stop
    from engine.export.onnx_float import build_onnx
    model = engine.load(TINY_CFG, TINY_WEIGHTS)
    photos = sorted(IMAGES.glob("*.jpg"))
    base = [model.preprocess(p).x for p in photos]
    xs = np.stack([base[i % len(base)] for i in range(args.images)]).astype(np.float32)
    cv = OpenCV(TINY_CFG, TINY_WEIGHTS, model.input_shape)

    def cv_blobs(size: int):
        def f(chunk):
            for i in range(0, len(chunk), size):
                cv.net.setInput(chunk[i:i + size])
                cv.net.forward(cv.outs)
        return f
    modes = {"OpenCV, one at a time": cv_blobs(1), f"OpenCV, blobs of {BLOB}": cv_blobs(BLOB)}
    fl = configs(model, build_onnx(model, heads="raw", dynamic_batch=True), "FLOAT ", args.spin_us)
    print("FLOAT layouts on one chunk vs 'sym 2t spin b8':", same_bits(fl, xs[:BLOB]), flush=True)
    modes.update(fl)
    if args.int:
        from engine.calib.collect import collect
        from engine.export.onnx_int8 import build_int8
        from engine.quant.qmodel import quantize_model
        qm = quantize_model(model, collect(model, photos, progress=False), "minmax", per_channel=True,
                            profile="onnxruntime")
        it = configs(model, build_int8(model, qm, heads="raw", dynamic_batch=True), "INT ", args.spin_us)
        print("INT layouts on one chunk vs 'sym 2t spin b8':", same_bits(it, xs[:BLOB]), flush=True)
        modes.update(it)
    if args.only:
        keep = args.only.split(",")
        modes = {k: v for k, v in modes.items() if k.startswith("OpenCV") or any(s in k for s in keep)}
    for fn in modes.values():                       # warm-up
        fn(xs[:BLOB])
    rates = {k: [] for k in modes}
    per_cpu = {k: [] for k in modes}
    chunks: dict[str, list[float]] = {k: [] for k in modes}     # seconds per chunk, every round
    items = list(modes.items())
    loads = [os.getloadavg()[0]]
    t0 = time.perf_counter()
    for r in range(args.rounds):
        spent, cpu = dict.fromkeys(modes, 0.0), dict.fromkeys(modes, 0.0)
        for c, start in enumerate(range(0, len(xs), BLOB)):
            chunk, turn = xs[start:start + BLOB], (r + c) % len(items)
            for name, fn in items[turn:] + items[:turn]:
                t, p = time.perf_counter(), time.process_time()
                fn(chunk)
                chunks[name].append(time.perf_counter() - t)
                spent[name] += chunks[name][-1]
                cpu[name] += time.process_time() - p
        for name in modes:
            rates[name].append(len(xs) / spent[name])
            per_cpu[name].append(len(xs) / cpu[name])
        loads.append(os.getloadavg()[0])
    cv_best = max(float(np.median(rates[k])) for k in modes if k.startswith("OpenCV"))
    print(f"yolov3-tiny @416, {len(xs)} images, {args.rounds} interleaved rounds ({time.perf_counter() - t0:.0f} s), "
          f"{THREADS} threads, load average {min(loads):.1f}-{max(loads):.1f}")
    print(f"  {'':26} {'median':>7} {'best':>7} {'ms/img':>7} {'img/CPUs':>8} {'/OpenCV best med':>16}")
    for name in modes:
        med = float(np.median(rates[name]))
        print(f"  {name:26} {med:7.2f} {max(rates[name]):7.2f} {1e3 / med:7.1f} {np.median(per_cpu[name]):8.2f} "
              f"{med / cv_best:15.2f}x")
    # paired per chunk (each chunk ran every configuration back to back): the median over chunks of the
    # speed ratio to OpenCV's faster mode on that chunk, and to the backend's layout before this study
    cv_chunk = np.minimum(*[np.array(chunks[k]) for k in modes if k.startswith("OpenCV")])
    print(f"  paired per chunk ({len(cv_chunk)} chunks), median speed ratio: vs OpenCV's faster mode on the chunk; "
          f"vs 'split sym 1t'")
    for name in modes:
        if name.startswith("OpenCV"):
            continue
        mine = np.array(chunks[name])
        ref = chunks.get(name.split()[0] + " split sym 1t")
        vs_ref = f"{np.median(np.array(ref) / mine):.3f}x" if ref else "-"
        print(f"    {name:26} {np.median(cv_chunk / mine):.3f}x   {vs_ref}")

if __name__ == "__main__":
    main()
