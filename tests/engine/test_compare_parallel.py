"""Whole images on the kernel threads: compare_batch (engine.scale.compare.IMAGE_PARALLEL: each image's
INT, HYBRID, local statistics and detections on one thread with single-threaded kernels) and detect_each
for NumPy runs (evaluate, Monte Carlo, the scorer). The results must be the ones of the images run one at
a time with threaded kernels, bit for bit, and the images must really have run on two threads at once
(else the comparison proves nothing)."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from engine.calib.collect import collect
from engine.kernels.threads import blas_limit
from engine.quant.autoquant import quantize
from engine.scale import compare as compare_mod
from engine.scale.compare import compare, compare_batch
from helpers import IMAGES

PHOTOS = sorted(IMAGES.glob("*.jpg"))


def _images() -> list:
    from PIL import Image
    flipped = [np.asarray(Image.open(p).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)) for p in PHOTOS[:2]]
    return list(PHOTOS) + flipped


def _rows(model, qms, items, parallel: bool, monkeypatch) -> tuple[list[dict], set[str]]:
    threads: set[str] = set()
    real = compare_mod.method_rows

    def spy(*a, **k):
        threads.add(threading.current_thread().name)
        return real(*a, **k)

    monkeypatch.setattr(compare_mod, "IMAGE_PARALLEL", parallel)
    monkeypatch.setattr(compare_mod, "method_rows", spy)
    with blas_limit(2):
        rows = compare_batch(model, tuple(qms.items()), "letterbox", "numpy", items)
    monkeypatch.undo()
    return rows, threads


def _same(a, b) -> bool:
    return json.dumps(a, default=lambda o: repr(o), sort_keys=True) == json.dumps(b, default=lambda o: repr(o), sort_keys=True)


def _assert_same_rows(serial: list[dict], parallel: list[dict], qms: dict) -> None:
    for a, b in zip(serial, parallel, strict=True):
        assert list(a["float"]) == list(b["float"])
        for m in qms:
            for mode in ("hybrid", "int"):
                assert list(a[m][mode]) == list(b[m][mode]), (m, mode)     # detections: boxes, scores, classes
            for key in ("hybrid_sqnr", "int_sqnr", "int_local_sqnr", "saturation", "range_use"):
                assert _same(a[m][key], b[m][key]), (m, key)


@pytest.mark.parametrize("profile", ["qwidgets", "qwidgets_asym"])
def test_images_on_the_kernel_threads_give_the_rows_of_one_at_a_time(tiny, tiny_stats, profile, monkeypatch):
    qms = {m: quantize(tiny, tiny_stats, m, per_channel=True, profile=profile) for m in ("minmax", "kl", "mse")}
    items = _images()
    serial, t1 = _rows(tiny, qms, items, False, monkeypatch)
    parallel, t2 = _rows(tiny, qms, items, True, monkeypatch)
    assert len(t1) == 1 and len(t2) == 2, (t1, t2)          # the images really ran on two threads
    assert len(serial) == len(items) == len(parallel)
    _assert_same_rows(serial, parallel, qms)
    assert sum(len(r["float"]) for r in serial) > 10                  # real photos, real detections


RESIDUAL = """[net]
width=96
height=96
channels=3

[convolutional]
filters=16
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=16
size=3
stride=1
pad=1
activation=leaky

[shortcut]
from=-2
activation=linear

[maxpool]
size=2
stride=2

[convolutional]
filters=32
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=32
size=3
stride=1
pad=1
activation=leaky

[shortcut]
from=-2
activation=linear

[convolutional]
filters=21
size=1
stride=1
pad=1
activation=linear

[yolo]
mask=0,1,2
anchors=10,14,23,27,37,58
classes=2
num=3
"""


def test_a_model_with_shortcut_tails_and_float_forwards_in_the_parts(monkeypatch):
    # [shortcut]s that run as their conv's tail (in its kernel, with the model's buffers), and with no
    # kept FLOAT outputs every image's FLOAT forward runs inside its part too: buffers per thread there
    from engine.model import from_cfg_text, normalise_random
    model = from_cfg_text(RESIDUAL)
    normalise_random(model, seed=3)
    assert model.tail_pairs() == {1, 5}
    items = _images()
    stats = collect(model, items[:3], progress=False)
    qms = {m: quantize(model, stats, m, per_channel=True) for m in ("minmax", "percentile")}
    serial, t1 = _rows(model, qms, items, False, monkeypatch)
    parallel, t2 = _rows(model, qms, items, True, monkeypatch)
    assert len(t2) == 2
    assert sum(len(r["float"]) for r in serial) > 0
    _assert_same_rows(serial, parallel, qms)


def test_the_table_is_the_same_either_way(tiny, tiny_stats, monkeypatch):
    items = PHOTOS[:3]
    tables = []
    for parallel in (False, True):
        monkeypatch.setattr(compare_mod, "IMAGE_PARALLEL", parallel)
        with blas_limit(2):
            t = compare(tiny, tiny_stats, items, ["minmax", "kl"], per_channel=True, progress=False)
        tables.append(json.dumps(t.to_dict(), default=float, sort_keys=True))
    assert tables[0] == tables[1]


@pytest.mark.parametrize("mode", ["float", "hybrid", "int"])
def test_detect_each_runs_numpy_images_side_by_side_with_the_same_detections(tiny, tiny_q, mode):
    # evaluate, Monte Carlo and the mixed-precision scorer feed NumPy runs one image per kernel thread
    from engine.darknet.detect import detect_outputs
    from engine.export.ort_backend import detect_each, feed_size, forward_on
    run = forward_on("numpy", tiny, None if mode == "float" else tiny_q, mode)
    seen: set[str] = set()

    def spied(x):
        seen.add(threading.current_thread().name)
        return run(x)

    pres = [tiny.preprocess(i) for i in _images()]
    with blas_limit(2):
        assert feed_size(run) == 2
        got = detect_each(tiny, spied, pres, 0.25, 0.45)
    want = [detect_outputs(tiny, run(p.x), p, 0.25, 0.45) for p in pres]
    assert len(seen) == 2
    assert [list(d) for d in got] == [list(d) for d in want]
    assert sum(len(d) for d in want) > 10
