"""Scaling of batch calibration / evaluation on a 2-worker secure Dask cluster vs in-process.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_dask.py [--images 64] [--repeats 3] [--tasks calib,eval] [--json]

Workload: yolov3-tiny @416 (real weights) on N images = the shared photos and seeded synthetic
variants of them (engine.scale.montecarlo), written as PNG files, so both backends read and decode
the same files. `calib` = `collect_stats` (FLOAT forward + histograms per image); `eval` =
`evaluate(..., modes=("int",))` (FLOAT + INT forward, detections, agreement per image).

Fairness: this host has 2 cores and the cluster has 2 single-threaded workers with 1 BLAS
thread each, so the in-process run also uses 1 BLAS thread (OPENBLAS_NUM_THREADS=1 before NumPy
is imported, and `InProcess(blas_threads=1)`): efficiency then measures what distribution adds
per core (scheduling, TLS, pickling, stragglers), not how well OpenBLAS threads a GEMM.

    speedup    = T_inprocess / T_dask
    efficiency = T_inprocess / (n_workers * T_dask)       (1.0 = perfect; target >= 0.8)

The peer measured in the same run: two plain processes (no Dask, no TLS) each doing half the
images at once. Their efficiency is the ceiling this host allows for the job (two cores share the
memory bandwidth and the L3 that im2col, maxpool and histograms stream through); `dask_vs_ceiling`
= T_pair / T_dask is what distribution itself costs.

Cluster start and the workers' first model load are excluded (one warm-up batch per worker);
timed runs alternate (in-process, Dask, Dask, in-process, ...) and medians are reported. The
load average is printed: other users' jobs on the same 2 cores slow both backends and make the
Dask run (which needs both cores at once) look worse than it is.
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"         # before NumPy is imported: OpenBLAS reads it once

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.calib.collect import collect  # noqa: E402
from engine.scale.backends import DaskBackend, InProcess, blas_threads, secure_local_cluster  # noqa: E402
from engine.scale.evaluate import collect_stats, evaluate  # noqa: E402
from engine.scale.sources import ModelSource, load_source  # noqa: E402
from engine.scale.montecarlo import make_variants, render, source_image  # noqa: E402
from engine.quant.qmodel import quantize_model  # noqa: E402

SHARED = Path(os.environ.get("QW_SHARED", ROOT.parent / "shared"))
SOURCE = ModelSource(str(SHARED / "models/yolov3-tiny.cfg"), str(SHARED / "models/yolov3-tiny.weights"))


def image_set(n: int, folder: Path) -> list[str]:
    photos = sorted(str(p) for p in (SHARED / "images").glob("*.jpg"))
    out = list(photos[:n])
    for v in make_variants(len(photos), max(0, n - len(out)), seed=1):
        path = folder / f"v{v.index:03d}.png"
        render(source_image(photos, v.image, (416, 416)), v).save(path)
        out.append(str(path))
    return out


_WORKER: dict = {}


def _pair_job(task: str, images: list[str], qmodel_path: str | None) -> float:
    """In a plain worker process: the same job as in-process on `images` (model cached per process)."""
    from engine.quant.qmodel import QuantizedModel
    backend = _WORKER.setdefault("backend", InProcess(blas_threads=1))
    if task == "calib":
        t0 = time.perf_counter()
        collect_stats(SOURCE, images, backend)
    else:
        qm = _WORKER.setdefault(qmodel_path, QuantizedModel.load(qmodel_path))
        t0 = time.perf_counter()
        evaluate(SOURCE, qm, images, ("int",), backend)
    return time.perf_counter() - t0


def pair_ceiling(task: str, images: list[str], qmodel_path: str, repeats: int) -> list[float]:
    """Wall time of two plain processes (no Dask) each doing half the images at the same time: what
    two cores of this host give for this job when nothing is distributed (memory bandwidth and the
    shared L3 included). Each process warms up (model load) first."""
    import concurrent.futures
    import multiprocessing
    half = len(images) // 2
    parts = [images[:half], images[half:]]
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_pair_job, [task, task], [images[:2], images[2:4]], [qmodel_path] * 2))   # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(_pair_job, [task, task], parts, [qmodel_path] * 2))
            times.append(time.perf_counter() - t0)
    return times


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tasks", default="calib,eval")
    ap.add_argument("--batch-size", type=int, default=None, help="images per task (default: ~4 tasks per worker)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tasks = args.tasks.split(",")
    load0 = os.getloadavg()
    cluster, client = secure_local_cluster(n_workers=2)
    results: dict = {"images": args.images, "repeats": args.repeats, "cores": os.cpu_count(), "n_workers": 2,
                     "blas_threads": {"in_process": blas_threads(),
                                      "workers": sorted(client.run(blas_threads).values())}}
    try:
        backend, local = DaskBackend(client), InProcess(blas_threads=1)
        with tempfile.TemporaryDirectory() as tmp:
            images = image_set(args.images, Path(tmp))
            model = load_source(SOURCE)
            qmodel = quantize_model(model, collect(model, images[:4], progress=False), "minmax", per_channel=True)
            qmodel_path = str(qmodel.save(Path(tmp) / "q.npz"))
            # warm-up: the workers load the model (and the quantized model) once
            evaluate(SOURCE, qmodel, images[:2], ("int",), backend, batch_size=1)
            jobs = {"calib": (lambda be: collect_stats(SOURCE, images, be, args.batch_size)),
                    "eval": (lambda be: evaluate(SOURCE, qmodel, images, ("int",), be, args.batch_size))}
            for task in tasks:
                t_in, t_dk = [], []
                ref = got = None
                for r in range(args.repeats):
                    order = [("in", local), ("dask", backend)]
                    for name, be in (order if r % 2 == 0 else order[::-1]):
                        dt, res = timed(lambda: jobs[task](be))
                        (t_in if name == "in" else t_dk).append(dt)
                        ref, got = (res, got) if name == "in" else (ref, res)
                same = (repr(ref.to_dict()) == repr(got.to_dict()) if task == "eval" else
                        repr(sorted((k, v.tolist()) for k, v in ref.to_arrays().items())) ==
                        repr(sorted((k, v.tolist()) for k, v in got.to_arrays().items())))
                m_in, m_dk = statistics.median(t_in), statistics.median(t_dk)
                t_pair = pair_ceiling(task, images, qmodel_path, args.repeats)
                m_pair = statistics.median(t_pair)
                results[task] = {"in_process_s": t_in, "dask_s": t_dk, "median_in_process_s": m_in,
                                 "median_dask_s": m_dk, "speedup": m_in / m_dk, "efficiency": m_in / (2 * m_dk),
                                 "identical_results": same, "pair_s": t_pair, "median_pair_s": m_pair,
                                 "ceiling_efficiency": m_in / (2 * m_pair), "dask_vs_ceiling": m_pair / m_dk}
    finally:
        client.close()
        cluster.close()
    results["loadavg_before"], results["loadavg_after"] = load0, os.getloadavg()
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print(f"{args.images} images, yolov3-tiny @416, 2 workers (secure LocalCluster, 1 task thread, BLAS threads "
          f"{results['blas_threads']['workers']}), in-process with {results['blas_threads']['in_process']} BLAS thread "
          f"(fair per-core comparison on a {os.cpu_count()}-core host)")
    for task in tasks:
        r = results[task]
        print(f"{task:<6} in-process {r['median_in_process_s']:7.2f} s   dask {r['median_dask_s']:7.2f} s   "
              f"speedup {r['speedup']:.2f}   efficiency {r['efficiency']:.2f} (target >= 0.8)   "
              f"identical results: {r['identical_results']}   runs in/dask: "
              + " ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(r["in_process_s"], r["dask_s"])))
        print(f"{'':<6} two plain processes at once (no Dask) {r['median_pair_s']:.2f} s: this host's ceiling "
              f"efficiency {r['ceiling_efficiency']:.2f}; Dask reaches {r['dask_vs_ceiling']:.2f} of it")
    busy = max(load0[0], results["loadavg_after"][0])
    print(f"load average before {load0[0]:.1f}, after {results['loadavg_after'][0]:.1f} on {os.cpu_count()} cores"
          + ("  -> the host is shared and busy: both timings are inflated, efficiency is a lower bound"
             if busy > (os.cpu_count() or 1) else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
