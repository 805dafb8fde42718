"""A worker's per-process caches of models and quantized models see a file rewritten at the same path: a user
re-quantizes into the same file and re-runs `montecarlo --dask` on a long-lived cluster. Keyed by
(path, mtime, size), a rewrite of the same size within one timestamp tick was served stale."""
from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

import engine
from engine.calib.collect import collect
from engine.quant.qmodel import fingerprint, quantize_model
from engine.scale.sources import ModelSource, load_source, resolve_qmodel
from helpers import ONE_CONV_CFG, frozen_arrays, same_arrays


def two_models(tmp_path):
    """Two one-conv models of the same shapes and different weights, with their quantized models."""
    cfg = tmp_path / "t.cfg"
    cfg.write_text(ONE_CONV_CFG)
    x = np.random.default_rng(0).random((3, 8, 8), dtype=np.float32)
    out = []
    for seed in (0, 1):
        m = engine.load(cfg, random_weights=seed)
        out.append((m, quantize_model(m, collect(m, [x], progress=False), "minmax")))
    return cfg, out


def rewrite(path, data_from, how: str) -> None:
    """Give `path` the content of `data_from` with its size and its mtime kept (to the ns)."""
    before = os.stat(path)
    if how == "in place":
        with open(path, "r+b") as f:
            f.write(open(data_from, "rb").read())
    else:                                  # as the engine's atomic writer: a new inode renamed over the old
        tmp = f"{path}.new"
        shutil.copyfile(data_from, tmp)
        os.replace(tmp, path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def move_clock_on(monkeypatch) -> None:
    """Stamp as if the files were written long ago (the clock past the racy window): no content hash, so the
    stamp's own fields must tell the files apart. (A rewrite in place that late would have a later ctime,
    which a patched clock cannot show: only the replaced file is tested so.)"""
    later = time.time_ns() + 3600 * 10**9
    monkeypatch.setattr(time, "time_ns", lambda: later)


# a rewrite in the clock tick of the write before it keeps mtime and ctime: only the content tells
CASES = [("in place", "just written"), ("replaced", "just written"), ("replaced", "written long ago")]


@pytest.mark.parametrize("how,clock", CASES)
def test_a_quantized_model_rewritten_with_the_same_size_and_mtime_is_reloaded(tmp_path, monkeypatch, how, clock):
    if clock == "written long ago":
        move_clock_on(monkeypatch)
    _, [(_, q0), (_, q1)] = two_models(tmp_path)
    path, other = q0.save(tmp_path / "q.npz"), q1.save(tmp_path / "q1.npz")
    assert os.path.getsize(path) == os.path.getsize(other)
    assert same_arrays(frozen_arrays(resolve_qmodel(("path", str(path)))), frozen_arrays(q0))
    assert not same_arrays(frozen_arrays(q0), frozen_arrays(q1))
    rewrite(path, other, how)
    assert same_arrays(frozen_arrays(resolve_qmodel(("path", str(path)))), frozen_arrays(q1))


@pytest.mark.parametrize("how,clock", CASES)
def test_a_model_rewritten_with_the_same_size_and_mtime_is_reloaded(tmp_path, monkeypatch, how, clock):
    if clock == "written long ago":
        move_clock_on(monkeypatch)
    cfg, [(m0, _), (m1, _)] = two_models(tmp_path)
    weights, other = tmp_path / "t.weights", tmp_path / "t1.weights"
    m0.save_weights(weights)
    m1.save_weights(other)
    src = ModelSource(str(cfg), str(weights))
    assert fingerprint(load_source(src)) == fingerprint(m0) != fingerprint(m1)
    rewrite(weights, other, how)
    assert fingerprint(load_source(src)) == fingerprint(m1)


@pytest.mark.parametrize("clock", ["just written", "written long ago"])
def test_an_unchanged_file_is_loaded_once(tmp_path, monkeypatch, clock):
    if clock == "written long ago":
        move_clock_on(monkeypatch)
    _, [(_, q0), _] = two_models(tmp_path)
    path = str(q0.save(tmp_path / "q.npz"))
    assert resolve_qmodel(("path", path)) is resolve_qmodel(("path", path))
