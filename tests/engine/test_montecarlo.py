"""Monte Carlo validation: seeded variants, reproducible runs, a 200-variant run with worst cases.

yolov3-tiny's real weights run at a 224x224 input (0.29x the MACs of 416x416) so that 200
variants (FLOAT + HYBRID each) take ~15 s of CPU; the 200-variant run uses a 2-worker secure
LocalCluster.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from helpers import IMAGES, TINY_CFG, TINY_WEIGHTS

from engine.calib.collect import collect
from engine.scale.backends import InProcess, blas_limit
from engine.scale.sources import ModelSource, load_source
from engine.scale.montecarlo import RANGES, Variant, make_variants, render, run_montecarlo, save_worst_cases
from engine.quant.qmodel import quantize_model

SOURCE = ModelSource(str(TINY_CFG), str(TINY_WEIGHTS), size=(224, 224))
PHOTOS = sorted(IMAGES.glob("*.jpg"))[:3]


@pytest.fixture(scope="module")
def dask_backend():
    from engine.scale.backends import dask_backend as open_dask_backend
    with open_dask_backend("local:2") as backend:
        yield backend


@pytest.fixture(scope="module")
def model():
    return load_source(SOURCE)


@pytest.fixture(scope="module")
def qmodel(model):
    with blas_limit(1):
        return quantize_model(model, collect(model, PHOTOS, progress=False), "minmax", per_channel=True)


def test_make_variants_is_reproducible_within_ranges():
    a, b = make_variants(3, 50, seed=7), make_variants(3, 50, seed=7)
    assert a == b
    assert a != make_variants(3, 50, seed=8)
    assert [v.image for v in a[:6]] == [0, 1, 2, 0, 1, 2]
    for name, (lo, hi) in RANGES.items():
        vals = np.array([getattr(v, name) for v in a])
        assert lo <= vals.min() and vals.max() <= hi, name
    assert any(v.flop for v in a) and not all(v.flop for v in a)


def test_render_is_deterministic_and_identity_without_changes():
    src = Image.open(PHOTOS[0]).convert("RGB")
    same = Variant(0, 0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, False, False, 0)
    assert np.array_equal(np.asarray(render(src, same)), np.asarray(src))
    mirrored = render(src, Variant(0, 0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, False, True, 0))
    assert np.array_equal(np.asarray(mirrored), np.asarray(src)[:, ::-1])
    v = make_variants(1, 3, seed=1)[2]
    assert np.array_equal(np.asarray(render(src, v)), np.asarray(render(src, v)))
    assert render(src, v).size == src.size


def test_small_run_is_reproducible_and_backend_independent(model, qmodel, dask_backend):
    a = run_montecarlo(model, qmodel, PHOTOS, 6, ("hybrid", "int"), InProcess(blas_threads=1), seed=3)
    b = run_montecarlo(SOURCE, qmodel, PHOTOS, 6, ("hybrid", "int"), dask_backend, seed=3, batch_size=2)
    assert repr(a.rows) == repr(b.rows) and a.variants == b.variants     # repr: NaN-safe (no matched box)
    assert a.summary("int")["n"] == 6


def test_200_variants_complete_with_distribution_and_worst_cases(qmodel, dask_backend, tmp_path):
    from engine.workspace import Workspace
    t0 = time.perf_counter()
    res = run_montecarlo(SOURCE, qmodel, PHOTOS, 200, ("hybrid",), dask_backend, seed=0, worst_k=6)
    elapsed = time.perf_counter() - t0
    s = res.summary()
    print(f"\n{res.report()}\n(wall {elapsed:.1f} s on 2 workers)")
    assert s["n"] == 200 and sum(s["histogram"]["counts"]) == 200
    assert 0.0 <= s["min"] <= s["p5"] <= s["p50"] <= s["p95"] <= 1.0
    assert s["matched"] > 0
    worst = res.worst()
    scores = [r["hybrid"]["map50"] for _, r in worst]
    assert len(worst) == 6 and scores == sorted(scores) and scores[0] == s["min"]
    ws = Workspace(root=tmp_path / "ws")
    entry = save_worst_cases(res, ws, "mc-worst")
    assert entry.kind == "imageset" and len(entry.files) == 6
    case = entry.meta["cases"][0]
    v = Variant(**case["params"])
    assert v == worst[0][0] and case["agreement"]["hybrid"]["map50"] == scores[0]
    assert entry.meta["montecarlo"]["n_variants"] == 200
