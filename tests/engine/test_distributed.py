"""Dask and in-process batch evaluation give identical numbers (calibration, agreement, comparison).

One 2-worker `LocalCluster(security=True)` serves the module; a separately started TLS
`dask scheduler` + 2 `dask worker` processes on 127.0.0.1 checks the same code on a real pair.
The real yolov3-tiny weights run at a 256x256 input (`ModelSource(size=...)`, 0.38x the MACs of
416x416) to keep this module fast on 2 shared cores; equality does not depend on the size.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

from helpers import IMAGES, TINY_CFG, TINY_WEIGHTS  # noqa: E402

from engine.imaging.augment import augment  # noqa: E402
from engine.calib.collect import collect  # noqa: E402
from engine.scale.backends import (DaskBackend, InProcess, blas_limit, blas_threads,  # noqa: E402
                                  temporary_tls)
from engine.scale.backends import dask_backend as open_dask_backend  # noqa: E402  (the fixture takes the name)
from engine.scale.evaluate import collect_stats, compare_distributed, evaluate  # noqa: E402
from engine.scale.sources import ModelSource, load_source  # noqa: E402
from engine.darknet.detect import detect_outputs  # noqa: E402
from engine.quant.executor import Executor  # noqa: E402
from engine.quant.fitness import detection_agreement  # noqa: E402
from engine.quant.qmodel import quantize_model  # noqa: E402

SOURCE = ModelSource(str(TINY_CFG), str(TINY_WEIGHTS), size=(256, 256))
PHOTOS = sorted(IMAGES.glob("*.jpg"))


@pytest.fixture(scope="module")
def model():
    """yolov3-tiny (real weights) at 256x256, loaded in this process by the workers' own loader."""
    return load_source(SOURCE)


@pytest.fixture(scope="module")
def stats(model, images):
    with blas_limit(1):
        return collect(model, images, progress=False)


@pytest.fixture(scope="module")
def qmodel(model, stats):
    return quantize_model(model, stats, "minmax", per_channel=True)


@pytest.fixture(scope="module")
def images():
    """8 images: the 4 photos (paths) + 4 augmentations (PIL images shipped to the workers)."""
    extra = []
    for k, p in enumerate(PHOTOS[:2]):
        aug = augment(p, angle=10.0 + 5 * k, blur_radius=1.5, noise_sigma=8.0, seed=k)
        extra += [aug["rotate"], aug["noise"]]
    return PHOTOS + extra


@pytest.fixture(scope="module")
def dask_backend():
    with open_dask_backend("local:2") as backend:
        yield backend


def assert_stats_equal(a, b) -> None:
    assert a.images == b.images
    assert a.hists.keys() == b.hists.keys()
    for k, h in a.hists.items():
        g = b.hists[k]
        assert (h.hi, h.amax, h.lo_signed, h.hi_signed, h.total) == (g.hi, g.amax, g.lo_signed, g.hi_signed, g.total), k
        np.testing.assert_array_equal(h.counts, g.counts, err_msg=f"tensor {k}")


def test_secure_cluster_uses_tls_and_one_blas_thread_per_worker(dask_backend):
    client = dask_backend.client
    assert client.scheduler.address.startswith("tls://")
    assert dask_backend.n_workers == 2
    threads = client.run(blas_threads)
    assert set(threads.values()) == {1}, threads          # 2 workers on 2 cores: no oversubscription
    env = client.run(lambda: os.environ.get("OPENBLAS_NUM_THREADS"))
    assert set(env.values()) == {"1"}


def test_collect_stats_dask_equals_in_process_collect(model, stats, images, dask_backend):
    assert stats.images == 8
    assert_stats_equal(stats, collect_stats(SOURCE, images, dask_backend, batch_size=3))
    assert_stats_equal(stats, collect_stats(model, images, InProcess(blas_threads=1), batch_size=5))


def test_evaluate_dask_equals_in_process(model, qmodel, images, dask_backend):
    res = evaluate(SOURCE, qmodel, images, ("hybrid", "int"), dask_backend, batch_size=2)
    with blas_limit(1):   # 1 BLAS thread, like the workers
        truth, preds = reference_detections(model, qmodel, images)
    assert res.detections["float"] == truth
    for mode in ("hybrid", "int"):
        assert res.detections[mode] == preds[mode], mode
        assert res.agreement[mode] == detection_agreement(truth, preds[mode]), mode
    assert len(res.images) == 8 and res.agreement["int"].matched > 0


def reference_detections(model, qmodel, images):
    """A plain in-process loop over the engine's own API."""
    inputs = [model.preprocess(i) for i in images]
    truth = [detect_outputs(model, model.forward(pre.x), pre) for pre in inputs]
    preds = {}
    for mode in ("hybrid", "int"):
        ex = Executor(model, qmodel, mode)
        preds[mode] = [detect_outputs(model, ex.forward(pre.x), pre) for pre in inputs]
    return truth, preds


def test_evaluate_qmodel_file_on_workers_equals_object(model, qmodel, images, dask_backend, tmp_path):
    path = qmodel.save(tmp_path / "q.npz")
    a = evaluate(SOURCE, path, images[:3], ("int",), dask_backend, batch_size=1)
    b = evaluate(model, qmodel, images[:3], ("int",), InProcess(blas_threads=1))
    assert a.to_dict() == b.to_dict()


def test_compare_distributed_equals_compare(model, stats, images, dask_backend):
    from engine.scale.compare import compare
    subset = [images[0], images[5]]
    with blas_limit(1):   # the SQNR's float64 dot products: same BLAS threads as the workers, same bits
        ref = compare(model, stats, subset, methods=("minmax", "log2"), per_channel=True, progress=False)
    got = compare_distributed(SOURCE, stats, subset, ("minmax", "log2"), True, dask_backend, batch_size=1)
    a, b = ref.to_dict(), got.to_dict()
    a.pop("images"), b.pop("images")
    assert repr(a) == repr(b)          # repr: NaN-safe equality of every number, ranking included


def test_scheduler_and_two_workers_started_separately(model, tmp_path):
    # the scheduler picks its own port and says which in its scheduler file: a port the test found free and
    # closed again could be taken by any other process of a shared host before the scheduler bound it
    import json

    from distributed import Client
    security, tls = temporary_tls(tmp_path)
    dask = str(Path(sys.executable).with_name("dask"))
    info = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([dask, "scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port", "0",
                               "--scheduler-file", str(info), "--no-dashboard", *tls],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)]
    try:
        deadline, address = time.monotonic() + 120, None
        while address is None:
            assert procs[0].poll() is None, procs[0].stderr.read().decode(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "the scheduler wrote no scheduler file"
            time.sleep(0.1)
            try:                                  # absent, or still being written
                address = json.loads(info.read_text())["address"]
            except (OSError, ValueError, KeyError):
                pass
        assert address.startswith("tls://127.0.0.1:"), address
        procs += [subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--no-dashboard",
                                    "--host", "127.0.0.1", *tls], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL) for _ in range(2)]
        with Client(address, security=security, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
            backend = DaskBackend(client)
            stats = collect_stats(SOURCE, PHOTOS, backend, batch_size=2)
            assert set(client.run(blas_threads).values()) == {1}
        assert_stats_equal(collect(model, PHOTOS, progress=False), stats)
    finally:
        for p in reversed(procs):
            p.terminate()
        deadline = time.monotonic() + 15
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_dask_workers_run_int_on_onnxruntime_identically(model, stats, images, dask_backend):
    """DaskBackend(client, runtime="onnxruntime"): each worker builds its ORT session once; INT of an
    onnxruntime-profile model equals the in-process NumPy INT detections."""
    pytest.importorskip("onnxruntime")
    from engine.scale.backends import DaskBackend
    qm = quantize_model(model, stats, "minmax", per_channel=True, profile="onnxruntime")
    ort = DaskBackend(dask_backend.client, runtime="onnxruntime")
    a = evaluate(SOURCE, qm, images[:4], ("int",), ort, batch_size=2)
    b = evaluate(model, qm, images[:4], ("int",), InProcess(blas_threads=1))
    assert a.detections["int"] == b.detections["int"] and sum(map(len, a.detections["int"])) > 5
