"""A Dask worker's batches give this process's bits. The worker's BLAS plugin set OpenBLAS's count on the worker's
event loop, and threadpoolctl then lets only that thread change it: the task thread's kernels could not make BLAS
single-threaded (`own_threads`), OpenBLAS split their GEMMs over its own threads and summed in other orders
(`montecarlo --dask local:1`, one worker with 2 BLAS threads on 2 cores: each variant's mean IoU 1e-7 off the
in-process one, layer 0 of yolov3-tiny already 1e-5 off). `--dask local:2` (1 BLAS thread each) was equal."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from helpers import IMAGES

pytest.importorskip("distributed")


class _Client:
    """What DaskBackend asks a client for when it is made: one worker here, and the plugin to register."""

    def __init__(self) -> None:
        self.plugins: list = []

    def scheduler_info(self, n_workers: int = -1) -> dict:
        return {"workers": {"tls://127.0.0.1:1": {"host": "127.0.0.1"}}}

    def register_plugin(self, plugin, name: str | None = None) -> None:
        self.plugins.append(plugin)


def _in_a_task_thread(fn):
    """fn() on a fresh thread, as a worker runs a batch on its task thread."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    assert out, "the task thread raised"
    return out[0]


def test_a_task_thread_after_the_workers_blas_plugin_gives_this_process_bits(tiny, tiny_kl_pt):
    from engine.kernels import threads
    from engine.scale.backends import DaskBackend
    from engine.scale.evaluate import detect_batch
    photos = sorted(IMAGES.glob("*.jpg"))[:2]
    x = tiny.preprocess(photos[0]).x
    before = threads.blas_threads()
    try:
        assert threads.set_blas_threads(2) == 2            # a 2-core worker of local:1 (BLAS = cores / workers)
        ref = [o.copy() for o in tiny.forward(x)]
        ref_dets = detect_batch(tiny, tiny_kl_pt, ("float", "int"), 0.25, 0.45, "letterbox", "numpy", photos)

        client = _Client()
        DaskBackend(client, blas_threads=2)
        (plugin,) = client.plugins
        plugin.setup(SimpleNamespace(state=SimpleNamespace(nthreads=1)))   # on the worker's event loop
        assert threads.blas_threads() == 2

        outs = _in_a_task_thread(lambda: [o.copy() for o in tiny.forward(x)])
        differ = [i for i, (a, b) in enumerate(zip(ref, outs)) if not np.array_equal(a, b)]
        assert differ == [], (f"layers {differ} differ on the task thread, first by "
                              f"{float(np.abs(ref[differ[0]] - outs[differ[0]]).max()) if differ else 0}")
        dets = _in_a_task_thread(lambda: detect_batch(tiny, tiny_kl_pt, ("float", "int"), 0.25, 0.45, "letterbox",
                                                      "numpy", photos))
        as_dicts = lambda per_image: [{m: [d.to_dict() for d in ds] for m, ds in row.items()} for row in per_image]
        assert as_dicts(dets) == as_dicts(ref_dets)
        assert sum(len(row["int"]) for row in ref_dets) > 0          # boxes to compare
    finally:
        if before:
            threads.set_blas_threads(before)
