"""Memory-saving forms keep the numbers: the quantized model's int8 weights read from the file only when
a mode that runs them uses them (never by a FLOAT session), and the Winograd weight transform done in
channel blocks."""
from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np
import pytest

from engine.kernels import winograd_gemm
from engine.npzfile import Deferred, NpzReader
from engine.quant.executor import Executor
from engine.quant.qmodel import QuantizedModel, quantize_model
from engine.session import Session
from helpers import IMAGES, ROOT, TINY_CFG, TINY_WEIGHTS


@pytest.fixture(scope="module")
def dog(tiny):
    return tiny.preprocess(IMAGES / "dog.jpg")


def unread(qm) -> int:
    return sum(isinstance(lq.__dict__["_w_q"], Deferred) for lq in qm.layers.values())


def test_int8_weights_are_read_on_first_use_and_run_identically(tiny, tiny_stats, dog, tmp_path):
    qm = quantize_model(tiny, tiny_stats, "minmax", per_channel=True)
    path = qm.save(tmp_path / "tiny.q.npz")
    back = QuantizedModel.load(path)
    assert unread(back) == len(back.layers) == 13
    Session(tiny, back, "float", IMAGES / "dog.jpg").run()      # FLOAT never reads them
    assert unread(back) == 13
    twin = back.copy()                                            # copies share the layers, unread
    assert unread(twin) == 13
    for i, lq in qm.layers.items():
        w = back.layers[i].w_q
        assert np.array_equal(w, lq.w_q) and w.dtype == np.int8 and w.shape == lq.w_q.shape
        assert not w.flags.writeable          # shared by every use: edits replace, never mutate
        with pytest.raises(ValueError):
            w.reshape(-1)[0] = 1
    assert unread(back) == unread(twin) == 0 and twin.layers[0].w_q is back.layers[0].w_q
    for a, b in zip(Executor(tiny, qm, "int").forward(dog.x), Executor(tiny, back, "int").forward(dog.x)):
        assert np.array_equal(a, b)


REWRITE = """
import sys, numpy as np
sys.path.insert(0, {root!r})
import engine
from engine.errors import WeightsError
from engine.quant.executor import Executor
from engine.quant.qmodel import QuantizedModel
m = engine.load({cfg!r}, {weights!r})
qm = QuantizedModel.load({path!r})
x = m.preprocess({image!r}).x
with open({path!r}, "r+b") as f:      # in place, as cp, np.savez or a notebook's upload write
    {rewrite}
try:
    Executor(m, qm, "int").forward(x)
    print("ran")
except WeightsError as err:
    print("refused:", err)
"""


@pytest.mark.parametrize("how", ["truncated", "other weights", "one byte"])
def test_a_file_rewritten_in_place_is_refused_not_a_crash(tiny, tiny_stats, tmp_path, how):
    """The weights used to be a memory map of the file: truncating it killed the kernel (SIGBUS) and a
    rewrite changed already-checked int8 weights under the session. Now a read after the rewrite is
    refused with a WeightsError naming the file (a subprocess: a SIGBUS must fail the test, not pytest)."""
    qm = quantize_model(tiny, tiny_stats, "minmax", per_channel=True)
    path = qm.save(tmp_path / "q.npz")
    if how == "truncated":
        rewrite = "f.truncate(0)"
    elif how == "other weights":
        other = quantize_model(tiny, tiny_stats, "kl", per_channel=True).save(tmp_path / "other.npz")
        rewrite = f"f.truncate(0); f.write(open({str(other)!r}, 'rb').read())"
    else:                                    # same size, one int8 weight of layer 0 flipped
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("layer0/w_q.npy")
        at = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200
        rewrite = f"f.seek({at}); b = f.read(1); f.seek({at}); f.write(bytes([b[0] ^ 1]))"
    script = REWRITE.format(root=str(ROOT), cfg=str(TINY_CFG), weights=str(TINY_WEIGHTS), path=str(path),
                            image=str(IMAGES / "dog.jpg"), rewrite=rewrite)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.returncode, res.stderr[-500:])
    assert res.stdout.startswith("refused:"), res.stdout
    assert "q.npz: array 'layer" in res.stdout and "changed on disk since the file was loaded" in res.stdout


def test_a_compressed_file_is_read_in_full(tiny, tiny_stats, tmp_path):
    qm = quantize_model(tiny, tiny_stats, "minmax", per_channel=True)
    plain = qm.save(tmp_path / "plain.q.npz")
    packed = tmp_path / "packed.q.npz"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
    back = QuantizedModel.load(packed)
    assert unread(back) == 0                                     # nothing to read later: read now
    for i, lq in qm.layers.items():
        assert np.array_equal(back.layers[i].w_q, lq.w_q)
    with NpzReader(packed) as z:
        assert isinstance(z.deferred("layer0/w_q"), np.ndarray)
    with NpzReader(plain) as z:
        d = z.deferred("layer0/w_q")
    assert isinstance(d, Deferred) and np.array_equal(d.array(), qm.layers[0].w_q)   # after the reader closed


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


def test_the_reader_closes_the_file_it_opened(tmp_path):
    """zipfile never closes a file object it is given: NpzReader must close the one it opened (on close, and
    when the file is not an archive), else every model / quantized model load ended in a ResourceWarning
    (an error under -W error) when the file object was collected."""
    import gc
    import warnings
    from engine.errors import WeightsError
    good, bad = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(good, a=np.arange(3))
    bad.write_bytes(b"not a zip archive")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        with NpzReader(good) as r:
            assert r.read("a").tolist() == [0, 1, 2]
        with pytest.raises(WeightsError):
            NpzReader(bad)
        gc.collect()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", ResourceWarning)
        with NpzReader(good) as r:
            r.read("a")
        with pytest.raises(WeightsError):
            NpzReader(bad)
        gc.collect()
    assert not [w for w in seen if issubclass(w.category, ResourceWarning)], [str(w.message) for w in seen]
