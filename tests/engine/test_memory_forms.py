"""Memory-saving forms keep the numbers: the quantized model's int8 weights mapped from the file
(never read by a FLOAT session), and the Winograd weight transform done in channel blocks."""
from __future__ import annotations

import mmap
import zipfile

import numpy as np
import pytest

from engine.kernels import winograd_gemm
from engine.npzfile import NpzReader
from engine.quant.executor import Executor
from engine.quant.qmodel import QuantizedModel, quantize_model
from helpers import IMAGES


@pytest.fixture(scope="module")
def dog(tiny):
    return tiny.preprocess(IMAGES / "dog.jpg")


def owner(a: np.ndarray):
    while isinstance(a, np.ndarray):
        a = a.base
    return a.obj if isinstance(a, memoryview) else a


def test_int8_weights_are_read_only_file_views_and_run_identically(tiny, tiny_stats, dog, tmp_path):
    qm = quantize_model(tiny, tiny_stats, "minmax", per_channel=True)
    path = qm.save(tmp_path / "tiny.q.npz")
    back = QuantizedModel.load(path)
    for i, lq in qm.layers.items():
        w = back.layers[i].w_q
        assert np.array_equal(w, lq.w_q) and w.dtype == np.int8 and w.shape == lq.w_q.shape
        assert not w.flags.writeable          # a view of the file's pages: edits replace, never mutate
        with pytest.raises(ValueError):
            w.reshape(-1)[0] = 1
    assert all(isinstance(owner(back.layers[i].w_q), mmap.mmap) for i in back.layers)   # mapped, not copied
    for a, b in zip(Executor(tiny, qm, "int").forward(dog.x), Executor(tiny, back, "int").forward(dog.x)):
        assert np.array_equal(a, b)


def test_a_compressed_file_is_read_in_full(tiny, tiny_stats, tmp_path):
    qm = quantize_model(tiny, tiny_stats, "minmax", per_channel=True)
    plain = qm.save(tmp_path / "plain.q.npz")
    packed = tmp_path / "packed.q.npz"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
    back = QuantizedModel.load(packed)
    for i, lq in qm.layers.items():
        assert np.array_equal(back.layers[i].w_q, lq.w_q)
    with NpzReader(packed) as z:
        w = z.read_mapped("layer0/w_q")
        assert w.flags.writeable and not isinstance(owner(w), mmap.mmap)   # the fallback: read in full


@pytest.mark.parametrize("c,n", [(512, 1024), (64, 128), (3, 64), (37, 29)])
@pytest.mark.parametrize("m", [2, 4])
def test_winograd_weights_in_channel_blocks_equal_one_block(monkeypatch, c, n, m):
    w = np.random.default_rng(c).standard_normal((n, c * 9), dtype=np.float32)
    monkeypatch.setattr(winograd_gemm, "WEIGHT_BLOCK", 1 << 40)
    whole = winograd_gemm.transform_weights(w, m)
    monkeypatch.setattr(winograd_gemm, "WEIGHT_BLOCK", 9 * n * 5)   # 5 channels per block, a ragged last one
    got = winograd_gemm.transform_weights(w, m)
    assert np.array_equal(got, whole) and got.flags.c_contiguous
    _, g_mat, _ = winograd_gemm.matrices(m)
    g = w.astype(np.float64).reshape(n, c, 3, 3)                      # U = G g G^T, per kernel
    ref = np.einsum("ai,ncij,bj->bacn", g_mat, g, g_mat).reshape((m + 2) ** 2, c, n)   # U^T: channels, filters
    assert np.allclose(whole, ref, rtol=1e-6, atol=1e-6)
