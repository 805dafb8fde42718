"""Every fast kernel against its naive reference: im2col/GEMM conv, Winograd F(2x2,3x3), maxpool."""
from __future__ import annotations

import numpy as np
import pytest

from engine.kernels import gemm as kernels, scratch, threads, winograd, winograd_gemm
from engine.kernels.conv import conv2d
from engine.kernels.gemm import bias_act, conv2d_naive, conv_out_size
from engine.kernels.scratch import Scratch
from engine.kernels.threads import parallel_for
from engine.layers.activations import leaky
from engine.layers.maxpool import maxpool, maxpool_naive, maxpool_out_size

RTOL = 1e-4


def random_conv(rng, c, h, w, n, k, groups=1):
    x = rng.standard_normal((c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((n, c // groups, k, k)) / np.sqrt(c // groups * k * k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    return x, wt, b


def assert_close(y, ref, what):
    """float32 kernels vs the float64 reference: within 1e-4 of the reference's largest value."""
    assert y.shape == ref.shape, f"{what}: shape {y.shape}, expected {ref.shape}"
    tol = RTOL * max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(y.astype(np.float64) - ref).max())
    assert err <= tol, f"{what}: max |diff| {err:.3g} > {tol:.3g}"


CONV_CASES = [  # (c, h, w, n, k, s, p, groups)
    (3, 13, 13, 4, 3, 1, 1, 1), (3, 13, 13, 4, 3, 2, 1, 1), (2, 1, 1, 3, 3, 1, 1, 1), (2, 2, 3, 3, 3, 1, 1, 1),
    (4, 7, 5, 2, 1, 1, 0, 1), (4, 6, 6, 2, 1, 2, 0, 1), (3, 9, 8, 2, 5, 1, 2, 1), (3, 11, 9, 2, 5, 2, 2, 1),
    (3, 10, 10, 2, 7, 2, 3, 1), (3, 8, 8, 2, 7, 1, 3, 1), (4, 6, 7, 4, 3, 1, 0, 1), (4, 6, 7, 4, 3, 1, 2, 1),
    (4, 9, 9, 6, 3, 1, 1, 2), (4, 8, 8, 4, 3, 2, 1, 4), (6, 5, 5, 3, 1, 1, 0, 3), (2, 3, 3, 2, 3, 3, 0, 1),
    (2, 4, 4, 2, 2, 2, 0, 1), (1, 5, 4, 1, 3, 1, 1, 1),
]


@pytest.mark.parametrize("c,h,w,n,k,s,p,groups", CONV_CASES)
def test_conv2d_matches_naive(c, h, w, n, k, s, p, groups):
    rng = np.random.default_rng(hash((c, h, w, n, k, s, p, groups)) & 0xFFFF)
    x, wt, b = random_conv(rng, c, h, w, n, k, groups)
    y = conv2d(x, wt.reshape(n, -1), b, k, s, p, groups, Scratch())
    assert y.shape == (n, conv_out_size(h, k, s, p), conv_out_size(w, k, s, p))
    assert_close(y, conv2d_naive(x, wt, b, s, p, groups), f"conv c{c} {h}x{w} n{n} k{k} s{s} p{p} g{groups}")


@pytest.mark.parametrize("act", ["linear", "leaky", "relu"])
def test_conv2d_fused_activation_matches_naive_then_activation(act):
    rng = np.random.default_rng(7)
    x, wt, b = random_conv(rng, 3, 64, 66, 16, 3)  # big enough for the threaded im2col and epilogue
    y = conv2d(x, wt.reshape(16, -1), b, 3, 1, 1, 1, Scratch(), act=act)
    ref = conv2d_naive(x, wt, b, 1, 1)
    ref = {"linear": ref, "leaky": np.maximum(ref, 0.1 * ref), "relu": np.maximum(ref, 0)}[act]
    assert_close(y, ref, f"conv act={act}")
    assert (y < 0).any() == (act != "relu")


@pytest.mark.parametrize("s,p", [(1, 1), (2, 1), (2, 0), (3, 2)])
def test_conv2d_many_small_bands_match_naive(monkeypatch, s, p):
    """Band edges (rows r0..r1 of the output, last band shorter) are exact for every stride."""
    monkeypatch.setattr(kernels, "BAND", 64)
    monkeypatch.setattr(kernels, "MIN_BAND", 1)
    rng = np.random.default_rng(s * 10 + p)
    x, wt, b = random_conv(rng, 3, 17, 11, 5, 3)
    y = conv2d(x, wt.reshape(5, -1), b, 3, s, p, 1, Scratch(), act="leaky")
    ref = conv2d_naive(x, wt, b, s, p)
    assert_close(y, np.maximum(ref, 0.1 * ref), f"banded conv s{s} p{p}")


def test_even_bands_never_leave_one_thread_more_rows():
    """yolov3-tiny layer 0: 416 rows in bands of at most 46 were 9 x 46 + 2 (230 rows on one thread,
    186 on the other); now bands of 42 (210 / 206). The busier thread never gets more rows than with
    the cache-sized bands, checked against a plain sum over the bands each thread takes in turn."""
    assert kernels.even_bands(416, 46) == 42
    for total in range(1, 160):
        for rows in range(1, total + 2):
            r = kernels.even_bands(total, rows)
            spans = [sum(min(h, total - i) for i in range(j * h, total, 2 * h)) for h in (r, rows) for j in (0, 1)]
            assert 3 * rows <= 4 * r <= 4 * rows and max(spans[:2]) <= max(spans[2:]), (total, rows, r)
            assert kernels.two_thread_span(total, r) == max(spans[:2])


@pytest.mark.parametrize("k,s,p", [(3, 1, 1), (3, 2, 1), (5, 1, 2), (1, 1, 0), (2, 2, 0)])
def test_im2col_gemm_matches_naive(k, s, p):
    rng = np.random.default_rng(k * 7 + s)
    x, wt, b = random_conv(rng, 3, 9, 10, 4, k)
    cols, ho, wo, row = kernels.im2col(x, k, s, p, Scratch())
    y = (wt.reshape(4, -1) @ cols).reshape(4, ho, row)[:, :, :wo] + b[:, None, None]
    assert_close(y, conv2d_naive(x, wt, b, s, p), f"im2col k{k} s{s} p{p}")


def test_conv2d_refuses_an_activation_it_cannot_fuse():
    x, wt, b = random_conv(np.random.default_rng(0), 2, 4, 4, 2, 3)
    with pytest.raises(ValueError, match="mish"):
        conv2d(x, wt.reshape(2, -1), b, 3, 1, 1, 1, Scratch(), act="mish")


def test_scratch_reuse_does_not_leak_between_layers():
    """Two different convs through one Scratch (big, then small) both stay exact."""
    rng, scratch = np.random.default_rng(3), Scratch()
    for c, h, n, k in [(3, 30, 4, 5), (2, 5, 3, 3), (3, 30, 4, 5)]:
        x, wt, b = random_conv(rng, c, h, h, n, k)
        y = conv2d(x, wt.reshape(n, -1), b, k, 1, k // 2, 1, scratch)
        assert_close(y, conv2d_naive(x, wt, b, 1, k // 2), f"conv {c}x{h}x{h} k{k} after reuse")


WINO_CASES = [  # (c, h, w, n, p)
    (3, 13, 13, 5, 1), (4, 1, 1, 2, 1), (2, 2, 3, 3, 1), (3, 6, 6, 2, 0), (3, 7, 5, 2, 2), (5, 26, 26, 4, 1),
    (2, 4, 9, 3, 1),
]


@pytest.mark.parametrize("c,h,w,n,p", WINO_CASES)
@pytest.mark.parametrize("m", [2, 4])  # the tile sizes the chooser uses
def test_winograd_matches_naive(c, h, w, n, p, m):
    rng = np.random.default_rng(c * 1000 + h * 10 + w)
    x, wt, b = random_conv(rng, c, h, w, n, 3)
    y = winograd_gemm.conv3x3(x, winograd_gemm.transform_weights(wt.reshape(n, -1), m), b, p, Scratch())
    assert_close(y, conv2d_naive(x, wt, b, 1, p), f"winograd F({m}x{m}) c{c} {h}x{w} n{n} p{p}")


def test_winograd_is_used_for_wide_layers_and_matches_naive_with_leaky():
    rng = np.random.default_rng(11)
    x, wt, b = random_conv(rng, 64, 13, 13, 64, 3)
    assert winograd.suitable(64, 13, 13, 64, 3, 1, 1)
    y = conv2d(x, wt.reshape(64, -1), b, 3, 1, 1, 1, Scratch(), act="leaky")
    ref = conv2d_naive(x, wt, b, 1, 1)
    assert_close(y, np.maximum(ref, 0.1 * ref), "winograd via conv2d, leaky")


def test_winograd_weight_cache_follows_the_array():
    rng = np.random.default_rng(5)
    w1 = rng.standard_normal((4, 18)).astype(np.float32)
    def cached(w):              # as conv2d keeps a layer's Winograd weights
        return scratch.derived("winograd", (w,), lambda: winograd_gemm.transform_weights(w, 2))
    u1 = cached(w1)
    assert cached(w1) is u1
    w2 = w1 * 2
    np.testing.assert_allclose(cached(w2), 2 * u1, rtol=1e-6)
    key = ("winograd", id(w1))
    assert key in scratch._derived
    del w1
    assert key not in scratch._derived  # dropped with its array


def test_bias_act_strided_source_matches_reference():
    rng = np.random.default_rng(2)
    acc = rng.standard_normal((40, 50, 52)).astype(np.float32)
    b = rng.standard_normal(40).astype(np.float32)
    y = np.empty((40, 50, 50), np.float32)
    bias_act(y, b, "leaky", src=acc[:, :, :50])
    ref = acc[:, :, :50] + b[:, None, None]
    np.testing.assert_array_equal(y, leaky(ref.copy()))


def test_parallel_for_covers_the_range_once(monkeypatch):
    monkeypatch.setattr(threads, "_threads", 2)
    hits = np.zeros(1000, np.int64)

    def mark(lo, hi):
        hits[lo:hi] += 1

    parallel_for(1000, mark, work=1 << 20)
    parallel_for(1000, mark, work=1)
    assert (hits == 2).all()


POOL_CASES = [  # (k, s, p, h, w)
    (2, 2, 1, 13, 13), (2, 2, 1, 12, 12), (2, 2, 1, 7, 6), (2, 1, 1, 13, 13), (2, 1, 1, 4, 5), (3, 2, 0, 9, 7),
    (3, 2, 2, 8, 9), (3, 1, 2, 5, 6), (5, 1, 4, 13, 13), (9, 1, 8, 7, 7), (13, 1, 12, 13, 13), (1, 1, 0, 4, 5),
    (1, 2, 0, 5, 5), (3, 3, 2, 10, 11), (2, 2, 1, 1, 1), (4, 2, 3, 3, 2), (2, 2, 0, 5, 5), (3, 1, 0, 3, 3),
    (2, 2, 0, 8, 6), (2, 2, 1, 2, 2),      # even maps: the 2x2 stride-2 pair path
]


@pytest.mark.parametrize("k,s,p,h,w", POOL_CASES)
@pytest.mark.parametrize("use_scratch", [False, True])
def test_maxpool_matches_naive(k, s, p, h, w, use_scratch):
    rng = np.random.default_rng(k * 100 + s * 10 + h)
    x = rng.standard_normal((3, h, w)).astype(np.float32) - 5  # all negative: -inf padding must not leak 0s
    y = maxpool(x, k, s, p, scratch=Scratch() if use_scratch else None)
    assert y.shape == (3, maxpool_out_size(h, k, s, p), maxpool_out_size(w, k, s, p))
    np.testing.assert_array_equal(y, maxpool_naive(x, k, s, p), err_msg=f"maxpool k{k} s{s} p{p} {h}x{w}")


def test_maxpool_threaded_big_map_matches_naive_on_a_corner():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((16, 64, 64)).astype(np.float32)
    y = maxpool(x, 2, 2, 1, scratch=Scratch())
    ref = x.reshape(16, 32, 2, 32, 2).max(axis=(2, 4))
    np.testing.assert_array_equal(y, ref)


def test_maxpool_pair_path_on_a_non_contiguous_input_in_blocks():
    rng = np.random.default_rng(10)
    big = rng.standard_normal((40, 52, 60)).astype(np.float32)
    x = big[:, :, 4:56]                                      # rows not contiguous; 40 channels: several blocks
    for n in (1, 2):
        with threads.blas_limit(n):                          # own_threads then runs n kernel threads
            y = maxpool(x, 2, 2, 1)
        np.testing.assert_array_equal(y, maxpool_naive(x, 2, 2, 1))


def test_maxpool_int8_uses_the_fill_value():
    x = np.full((2, 3, 3), -100, np.int8)
    y = maxpool(x, 2, 1, 1, fill=np.iinfo(np.int8).min)
    assert y.dtype == np.int8 and (y == -100).all()


@pytest.mark.parametrize("count", [1, 2])
def test_threaded_kernels_match_naive(monkeypatch, count):
    """The channel/row splits of im2col, the epilogue, Winograd and maxpool give the same result."""
    monkeypatch.setattr(threads, "_threads", count)
    rng = np.random.default_rng(21)
    x, wt, b = random_conv(rng, 3, 64, 64, 16, 3)
    y = conv2d(x, wt.reshape(16, -1), b, 3, 1, 1, 1, Scratch(), act="leaky")
    ref = conv2d_naive(x, wt, b, 1, 1)
    assert_close(y, np.maximum(ref, 0.1 * ref), f"conv, {count} threads")
    x, wt, b = random_conv(rng, 64, 40, 40, 64, 3)
    y = winograd_gemm.conv3x3(x, winograd_gemm.transform_weights(wt.reshape(64, -1), 2), b, 1, Scratch())
    ref = np.stack([conv2d_naive(x, wt[i:i + 1], b[i:i + 1], 1, 1)[0] for i in (0, 63)])
    assert_close(y[[0, 63]], ref, f"winograd, {count} threads")
    x = rng.standard_normal((32, 64, 64)).astype(np.float32)
    np.testing.assert_array_equal(maxpool(x, 2, 2, 1, scratch=Scratch()), x.reshape(32, 32, 2, 32, 2).max(axis=(2, 4)))


def test_own_threads_makes_blas_single_threaded_and_restores_it():
    from helpers import require
    require(bool(threads._kernel_blas()), "no BLAS found by threadpoolctl: kernels keep BLAS threading")
    with threads.blas_limit(2):
        assert threads.blas_threads() == 2
        with threads.own_threads():
            assert threads.blas_threads() == 1 and threads.kernel_threads() == 2
        assert threads.blas_threads() == 2 and threads.kernel_threads() == 1


def test_own_threads_shortens_the_gil_switch_interval_and_restores_it():
    import sys
    from helpers import require
    require(bool(threads._kernel_blas()), "no BLAS found by threadpoolctl: kernels keep BLAS threading")
    before = sys.getswitchinterval()
    with threads.blas_limit(2):
        with pytest.raises(RuntimeError):
            with threads.own_threads():
                assert sys.getswitchinterval() == pytest.approx(threads.SWITCH_INTERVAL)
                with threads.own_threads():              # nested: leaves it to the outer one
                    pass
                assert sys.getswitchinterval() == pytest.approx(threads.SWITCH_INTERVAL)
                raise RuntimeError("a failing forward")
        assert sys.getswitchinterval() == before
    with threads.blas_limit(1):                          # no kernel threads: nothing to change
        with threads.own_threads():
            assert sys.getswitchinterval() == before


def test_blas_limit_is_the_one_control_backends_use():
    from engine.scale import backends
    assert backends.blas_limit is threads.blas_limit and backends.set_blas_threads is threads.set_blas_threads
    before = threads.blas_threads()
    with backends.blas_limit(1) as n:
        assert n == 1 and threads.blas_threads() == 1
    assert threads.blas_threads() == before


@pytest.mark.parametrize("name, size", [("yolov3-tiny", 416), ("yolov3", 160), ("yolov4-tiny", 224)])
def test_float_forward_is_bit_identical_on_1_and_2_threads(tiny, name, size, tmp_path):
    """OpenBLAS sums in another order for another GEMM shape; the kernels cut the same GEMMs on any
    thread count, so a single-threaded Dask worker and a 2-thread notebook agree bit for bit."""
    import engine
    from engine.scale.backends import blas_limit
    from helpers import CFG_DIR, resized_cfg
    if name == "yolov3-tiny":
        model = tiny
    else:
        model = engine.load(resized_cfg(CFG_DIR / f"{name}.cfg", size, tmp_path), random_weights=0)
    x = np.random.default_rng(5).random(model.input_shape, dtype=np.float32)
    with blas_limit(1):
        one = model.forward(x)
    with blas_limit(2):
        assert threads.blas_threads() in (0, 2)
        two = model.forward(x)
    for i, (a, b) in enumerate(zip(one, two)):
        assert np.array_equal(a, b), f"{name} layer {i} [{model.layers[i].kind}]: max |diff| {np.abs(a - b).max():.3g}"


def test_winograd_can_be_turned_off_per_model_for_memory(tiny):
    """A model prepared inside winograd.disabled() keeps im2col weights for good (less memory) and
    agrees with the Winograd model to float32 rounding (and with OpenCV, as every FLOAT path must)."""
    import engine
    from helpers import TINY_CFG, TINY_WEIGHTS, max_rel_diff
    x = np.random.default_rng(8).random(tiny.input_shape, dtype=np.float32)
    with winograd.disabled():
        plain = engine.load(TINY_CFG, weights=TINY_WEIGHTS)
        plain.forward(x)                                   # layers are prepared on first use
    assert winograd.ENABLED
    a, b = tiny.forward(x), plain.forward(x)               # after the block: still im2col
    convs = [l.index for l in tiny.layers if l.kind == "convolutional"]
    assert {i for i in convs if tiny.prepared(i).wino is not None} == {2, 4, 6, 8, 10, 12, 14, 21}
    assert all(plain.prepared(i).wino is None and plain.prepared(i).w is not None for i in convs)
    kept = lambda m: sum(a.nbytes for i in convs for a in (m.prepared(i).w, m.prepared(i).wino)  # noqa: E731
                         if a is not None)
    assert kept(plain) < 0.6 * kept(tiny)                  # 16/9 the 3x3 weights saved
    for i in range(len(a)):
        assert max_rel_diff(b[i], a[i]) <= 1e-5, f"layer {i}"
