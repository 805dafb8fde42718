"""Integer Winograd F(2x2, 3x3) (engine/quant/intwinograd.py) against the naive int64 loops: the exact
int32 accumulators, bit for bit, through the single-GEMM path, the channel-chunked path (per-block bounds) and
the fallback to im2col; and the INT layer through it against the im2col kernel."""
from __future__ import annotations

import numpy as np
import pytest

from engine.quant import intwinograd
from engine.quant.intops import _scratch, conv_int, conv_int_naive


def _data(seed: int, c: int, n: int, h: int, w: int, xmax: int = 127, wmax: int = 127):
    rng = np.random.default_rng(seed)
    x_q = rng.integers(-xmax, xmax + 1, (c, h, w)).astype(np.int8)
    w_q = rng.integers(-wmax, wmax + 1, (n, c, 3, 3)).astype(np.int8)
    return x_q, w_q


@pytest.mark.parametrize("c,n,h,w", [(128, 64, 13, 13), (130, 66, 8, 11), (128, 64, 6, 7)])
def test_winograd_accumulators_equal_naive_loops(c, n, h, w):
    x_q, w_q = _data(c + h, c, n, h, w, xmax=20, wmax=20)       # small values: one float32 GEMM per position
    got = intwinograd.conv3x3_acc(x_q, w_q, _scratch())
    want = conv_int_naive(x_q, w_q, np.zeros(n, np.int32), 1, 1)
    assert got is not None and got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("threads_", [1, 2])
def test_output_transform_by_channel_blocks_equals_naive_loops(threads_):
    """A map big enough for the output transform to run by channel blocks on the kernel threads
    (70 filters: uneven blocks; odd H and W: partial tiles): the same accumulators on 1 and 2 threads."""
    from engine.kernels import threads
    c, n, h, w = 64, 70, 17, 23
    assert 16 * n * ((h + 1) // 2) * ((w + 1) // 2) >= threads.PARALLEL_MIN
    x_q, w_q = _data(17, c, n, h, w, xmax=20, wmax=20)
    with threads.blas_limit(threads_):
        got = intwinograd.conv3x3_acc(x_q, w_q, _scratch())
    np.testing.assert_array_equal(got, conv_int_naive(x_q, w_q, np.zeros(n, np.int32), 1, 1))


def test_full_range_values_take_the_chunked_float64_path_and_stay_exact():
    x_q, w_q = _data(3, 256, 64, 9, 9)             # |x|, |w| up to 127: sum_c |U'| * |V| far above 2**24
    wt = intwinograd.weights(w_q)
    v = intwinograd.input_tiles(x_q, _scratch()).reshape(16, -1)
    plans = [wt.chunks(p, float(np.abs(v[intwinograd._PERM[p]]).max())) for p in range(16)]
    assert any(pl is not None and len(pl) > 1 for pl in plans)       # the split path is exercised
    got = intwinograd.conv3x3_acc(x_q, w_q, _scratch())
    want = conv_int_naive(x_q, w_q, np.zeros(64, np.int32), 1, 1)
    if got is None:       # a 64-channel block too large for float32: the caller runs im2col
        assert any(pl is None for pl in plans)
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("c,h,w", [(3, 5, 7), (70, 8, 6)])
def test_gemm_input_transform_equals_naive_integer_tiles(c, h, w):
    """V from the K_B GEMM equals B^T d B of every padded 4x4 tile in Python-int loops (Lavin's B^T,
    the matrix U' is made for), after this module's position order and signs."""
    x_q, _ = _data(c * h, c, 1, h, w)
    got = intwinograd.input_tiles(x_q, _scratch())
    bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    th, tw = (h + 1) // 2, (w + 1) // 2
    xp = np.zeros((c, 2 * th + 2, 2 * tw + 2), np.int64)
    xp[:, 1:1 + h, 1:1 + w] = x_q
    rng = np.random.default_rng(c)
    for ch, ty, tx in zip(rng.integers(0, c, 12), rng.integers(0, th, 12), rng.integers(0, tw, 12)):
        d = xp[ch, 2 * ty:2 * ty + 4, 2 * tx:2 * tx + 4].tolist()
        for a in range(4):
            for b in range(4):
                want = sum(bt[a][i] * d[i][j] * bt[b][j] for i in range(4) for j in range(4))
                q = intwinograd._PERM[4 * a + b]
                assert got[q, ch, ty * tw + tx] * intwinograd._SIGN[4 * a + b] == want


def test_chunks_keep_every_partial_sum_below_2_24():
    x_q, w_q = _data(4, 512, 64, 5, 5)
    wt = intwinograd.weights(w_q)
    u = wt.u.astype(np.int64)
    for vmax in (50.0, 127.0, 300.0):
        for p in range(16):
            plan = wt.chunks(p, vmax)
            if plan is None:
                continue
            assert plan[0][0] == 0 and plan[-1][1] == 512
            assert all(a[1] == b[0] for a, b in zip(plan, plan[1:]))
            for a, b in plan:
                assert np.abs(u[p, :, a:b]).sum(axis=1).max() * vmax < 2 ** 24


def test_impossible_block_returns_none():
    x_q = np.full((128, 6, 6), 127, np.int8)
    w_q = np.full((64, 128, 3, 3), 127, np.int8)     # 64 channels * 1143 * 508 > 2**24 in one block
    assert intwinograd.conv3x3_acc(x_q, w_q, _scratch()) is None


def test_int_layer_uses_winograd_and_equals_the_im2col_kernel(tiny, tiny_q):
    """INT layer 21 of yolov3-tiny (384 -> 256 @ 26x26) via conv_forward_int equals the im2col kernel
    plus the naive Python-integer requantization rule."""
    from engine.quant.executor import Executor
    from engine.quant.int_layers import conv_forward_int, requantize_activation
    from engine.quant.qtensor import QTensor
    from helpers import IMAGES
    ex = Executor(tiny, tiny_q, "int")
    x = tiny.preprocess(sorted(IMAGES.glob("*.jpg"))[0]).x
    values, _ = ex.run(x, stop=20)
    layer, lq = tiny.layers[21], tiny_q.layers[21]
    xq = values[20].q
    assert intwinograd.suitable(*xq.q.shape, lq.w_q.shape[0], 3, layer.stride, layer.padding)
    rec: dict = {}
    got = conv_forward_int(layer, [xq], lq, tiny_q.scales["21"], rec)
    acc = conv_int(xq.q, lq.w_f, lq.b_q, 3, 1, 1)
    want = requantize_activation(acc, xq.scale * np.broadcast_to(lq.w_scale, (256,)), tiny_q.scales["21"],
                                 layer.activation, {})
    np.testing.assert_array_equal(got.q, want)
    assert rec["acc_min"] == int(acc.min()) and rec["acc_max"] == int(acc.max())


def test_methods_share_int8_weights_and_kept_forms_die_with_them(tiny, tiny_stats, monkeypatch):
    import gc
    from engine.quant import intcache
    monkeypatch.setattr(intcache, "BUDGET", intcache.used_bytes() + (256 << 20))   # whatever earlier tests keep
    from engine.quant.layerquant import LayerQuant
    from engine.quant.qmodel import quantize_model
    a = quantize_model(tiny, tiny_stats, "minmax", per_channel=True)
    b = quantize_model(tiny, tiny_stats, "kl", per_channel=True)
    assert a.layers[12].w_q is b.layers[12].w_q and not a.layers[12].w_q.flags.writeable
    assert quantize_model(tiny, tiny_stats, "kl", per_channel=False).layers[12].w_q is not a.layers[12].w_q
    w_q = np.random.default_rng(0).integers(-127, 128, (128, 128, 3, 3)).astype(np.int8)
    lq = LayerQuant(w_q, np.full(128, 0.01), np.zeros(128, np.int32), 0.1, "per_channel")
    gc.collect()        # earlier tests' models left in reference cycles: their forms go now, not inside the count
    before = intcache.used_bytes()
    w_f = lq.w_f
    assert lq.w_f is w_f and intcache.used_bytes() == before + w_f.nbytes
    np.testing.assert_array_equal(w_f, w_q.reshape(128, -1))
    del lq, w_q, w_f
    gc.collect()
    assert intcache.used_bytes() == before


def test_kept_forms_made_by_two_threads_at_once_are_counted_once(monkeypatch):
    # Two threads miss the same form and make it at the same time (whole images on the kernel threads:
    # engine.scale.compare). The second used to replace the first's entry, whose weak reference then died
    # uncalled with its bytes still counted: the budget filled up and nothing more was kept.
    import gc
    import threading
    import time
    from engine.quant import intcache
    gc.collect()        # earlier tests' models left in reference cycles: their forms go now, not inside the count
    monkeypatch.setattr(intcache, "BUDGET", intcache.used_bytes() + (256 << 20))   # whatever earlier tests keep
    before = intcache.used_bytes()
    w_q = np.ones((64, 64, 3, 3), np.int8)
    started = threading.Barrier(2)

    def make():
        started.wait()                  # both threads are inside make(): both missed
        time.sleep(0.01)
        return np.zeros(1 << 16, np.float32)

    got = [None, None]
    threads = [threading.Thread(target=lambda k=k: got.__setitem__(k, intcache.kept("test-race", w_q, make)))
               for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got[0] is got[1]                                      # one form, kept once
    assert intcache.used_bytes() == before + (1 << 18)
    del w_q, got
    gc.collect()
    assert intcache.used_bytes() == before                       # and released with its array


@pytest.mark.parametrize("c,n,h,w", [(64, 72, 12, 10), (96, 64, 26, 26)])
def test_even_maps_with_small_sums_take_the_float32_path_exactly(c, n, h, w):
    """Even maps whose output sums stay below 2**24 come out of one float32 output GEMM (A^T (x) A^T / 4)
    as float32 exact integers, equal to the naive loops; larger values too when the products' actual
    extremes keep the sums below 2**24 (else the int32 transform): the naive loops' values either way."""
    x_q, w_q = _data(c + w, c, n, h, w, xmax=6, wmax=6)
    got = intwinograd.conv3x3_acc(x_q, w_q, _scratch())
    want = conv_int_naive(x_q, w_q, np.zeros(n, np.int32), 1, 1)
    assert got is not None and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    x_q, w_q = _data(c + w, c, n, h, w, xmax=100, wmax=100)
    got = intwinograd.conv3x3_acc(x_q, w_q, _scratch())
    if got is not None:
        assert got.dtype in (np.float32, np.int32)
        np.testing.assert_array_equal(got, conv_int_naive(x_q, w_q, np.zeros(n, np.int32), 1, 1))


@pytest.mark.parametrize("h,w", [(16, 16), (15, 17)])
def test_worst_case_output_sums_take_the_int32_transform_exactly(h, w):
    """Near the worst case of the output transform: x and w at +-127, every channel alike (no
    cancellation across channels), 16 channels: each product sum is exact in float32 (16 * 1143 * 508
    < 2**24) but 9 of them add up to ~3 * 2**24, past float32's integers: the integer transform runs
    and the accumulators are the naive loops', even and odd maps."""
    rng = np.random.default_rng(0)
    c, n = 16, 8
    x_q = np.broadcast_to(rng.choice([-127, 127], (h, w)).astype(np.int8), (c, h, w)).copy()
    w_q = np.broadcast_to(rng.choice([-127, 127], (n, 1, 3, 3)).astype(np.int8), (n, c, 3, 3)).copy()
    wt = intwinograd.weights(w_q)
    v = intwinograd.input_tiles(x_q, _scratch())
    m = np.array([np.abs(wt.u[p].astype(np.float64) @ v[intwinograd._PERM[p]].astype(np.float64)).max()
                  for p in range(16)])
    assert intwinograd._output_bound(m) > 2 * 2**24            # the actual sums, not only the bound, are past 2**24
    got = intwinograd.conv3x3_acc(x_q, w_q, _scratch())
    assert got is not None and got.dtype == np.int32
    np.testing.assert_array_equal(got, conv_int_naive(x_q, w_q, np.zeros(n, np.int32), 1, 1))


def test_per_block_input_ranges_keep_one_gemm_exact():
    """A block of 64 channels with full-range inputs next to three with small ones: the global bound
    (sum |U'| * max |V|) is far above 2**24, the per-block bound is not, so each position runs as one
    float32 GEMM, and the accumulators still equal the naive loops; a block bound over 2**24 splits."""
    rng = np.random.default_rng(21)
    c, n, h, w = 256, 64, 10, 12
    x_q = rng.integers(-3, 4, (c, h, w)).astype(np.int8)
    x_q[64:128] = rng.integers(-127, 128, (64, h, w))
    w_q = rng.integers(-127, 128, (n, c, 3, 3)).astype(np.int8)
    wt = intwinograd.weights(w_q)
    v = intwinograd.input_tiles(x_q, _scratch())
    v3 = v.reshape(16, 4, -1)
    vblock = np.maximum(v3.max(axis=2), -v3.min(axis=2)).astype(np.float64)[intwinograd._PERM]
    vmax = vblock.max(axis=1)
    assert max(wt.row_sums * vmax) > 2 ** 24
    assert all(wt.chunks(p, float(vmax[p]), vblock[p]) == [(0, c)] for p in range(16))
    u = np.abs(wt.u.astype(np.int64))                       # the bound the single GEMM relies on
    for p in range(16):
        per_block = u[p].reshape(n, 4, 64).sum(axis=2) * vblock[p]
        assert per_block.sum(axis=1).max() < 2 ** 24
    np.testing.assert_array_equal(intwinograd.conv3x3_acc(x_q, w_q, _scratch()),
                                  conv_int_naive(x_q, w_q, np.zeros(n, np.int32), 1, 1))
    x_q[128:] = rng.integers(-127, 128, (128, h, w))        # three full-range blocks: positions split
    got = intwinograd.conv3x3_acc(x_q, w_q, _scratch())
    v3 = intwinograd.input_tiles(x_q, _scratch()).reshape(16, 4, -1)
    vblock = np.maximum(v3.max(axis=2), -v3.min(axis=2)).astype(np.float64)[intwinograd._PERM]
    plans = [wt.chunks(p, float(vblock[p].max()), vblock[p]) for p in range(16)]
    assert any(pl is not None and len(pl) > 1 for pl in plans)
    for p, pl in enumerate(plans):                          # every chunk within the per-block bound
        for a, b in pl or []:
            per_block = u[p][:, a:b].reshape(n, -1, 64).sum(axis=2) * vblock[p][a // 64:b // 64]
            assert per_block.sum(axis=1).max() < 2 ** 24
    if got is not None:
        np.testing.assert_array_equal(got, conv_int_naive(x_q, w_q, np.zeros(n, np.int32), 1, 1))


@pytest.mark.parametrize("h,w", [(13, 13), (12, 10)])
@pytest.mark.parametrize("threads_", [1, 2])
def test_split_positions_add_their_chunks_in_float32_exactly(h, w, threads_):
    """A position whose channel bound splits it (full-range inputs in two 64-channel blocks) adds its
    chunks' float32 sums in float32 when the actual running sums stay below 2**24: the float32
    accumulators equal the naive loops, on odd and even maps, 1 and 2 threads. With constant inputs
    and weights (no cancellation) each block's sum is exact but two add up past 2**24: the chunks then
    add in integers, still the naive loops' values."""
    from engine.kernels import threads

    def plans(x_q, w_q):
        c = x_q.shape[0]
        v3 = intwinograd.input_tiles(x_q, _scratch()).reshape(16, c // 64, -1)
        vblock = np.maximum(v3.max(axis=2), -v3.min(axis=2)).astype(np.float64)[intwinograd._PERM]
        wt = intwinograd.weights(w_q)
        return [wt.chunks(p, float(vblock[p].max()), vblock[p]) for p in range(16)]

    def run(x_q, w_q):
        kinds = []
        with threads.blas_limit(threads_):
            assert intwinograd.conv3x3_fused(x_q, w_q, _scratch(), lambda part, r0, r1, acc, ch: kinds.append(acc.dtype))
            got = intwinograd.conv3x3_acc(x_q, w_q, _scratch())
        np.testing.assert_array_equal(got, conv_int_naive(x_q, w_q, np.zeros(w_q.shape[0], np.int32), 1, 1))
        return set(kinds)

    rng = np.random.default_rng(5)
    c, n = 256, 64
    x_q = rng.integers(-3, 4, (c, h, w)).astype(np.int8)
    x_q[:128] = rng.integers(-127, 128, (128, h, w))
    w_q = rng.integers(-127, 128, (n, c, 3, 3)).astype(np.int8)
    pl = plans(x_q, w_q)
    assert all(p is not None for p in pl) and any(len(p) > 1 for p in pl)
    assert run(x_q, w_q) == {np.dtype(np.float32)}            # chunks added in float32, exact
    x_q = np.full((128, h, w), 100, np.int8)                   # M at the centre: 36 * 60 * 100 * 64 per block
    w_q = np.full((8, 128, 3, 3), 60, np.int8)
    pl = plans(x_q, w_q)
    assert all(p is not None for p in pl) and any(len(p) > 1 for p in pl)
    wt = intwinograd.weights(w_q)
    v = intwinograd.input_tiles(x_q, _scratch())
    m = max(np.abs(wt.u[p].astype(np.float64) @ v[intwinograd._PERM[p]].astype(np.float64)).max() for p in range(16))
    assert m > 2 ** 24                                         # a product sum float32 cannot hold: integer adds
    run(x_q, w_q)


@pytest.mark.parametrize("h,w", [(12, 10), (13, 13)])
@pytest.mark.parametrize("big", [False, True])
def test_bias_folded_into_m11_gives_the_naive_accumulators(h, w, big):
    """`conv3x3_fused(bias=, on_fold=)`: on the float32 path 4 * b goes into M[1, 1] (every output
    reads it with weight 1/4) when the output bound still holds, and the epilogue's accumulators are
    the naive loops' sums with the bias, even and odd maps; a bias too large for that bound is not
    folded (on_fold never called) and the accumulators come without it, as before."""
    from engine.quant.intops import conv_int_fused
    c, n = 64, 66
    x_q, w_q = _data(h * w, c, n, h, w, xmax=20, wmax=20)
    rng = np.random.default_rng(h + w)
    b_q = rng.integers(-5000, 5000, n).astype(np.int32)
    if big:
        b_q[3] = 2 ** 22 + 5                                   # 4 * b alone is past 2**24
    folded = []
    got = np.full((n, h, w), -1, np.int64)

    def keep(part, r0, r1, acc, ch):
        assert acc.dtype == np.float32
        got[ch, r0:r1] = acc[:, :, :w]

    kernel = conv_int_fused(x_q, w_q, lambda: None, 3, 1, 1, keep, bias=b_q, on_fold=lambda: folded.append(1))
    assert kernel == "winograd"
    want = conv_int_naive(x_q, w_q, b_q, 1, 1)
    assert folded == ([] if big else [1])
    np.testing.assert_array_equal(got + (b_q[:, None, None] if big else 0), want)


def test_output_bound_is_the_largest_9_term_sum_an_output_reads():
    """`_output_bound` (one gather) equals the largest sum of |M[p]| bounds over the positions each of the
    4 outputs of a tile reads, taken from the output transform itself (the nonzero entries of _KA)."""
    rng = np.random.default_rng(0)
    reads = [np.flatnonzero(intwinograd._KA[:, j]) for j in range(4)]
    assert all(r.size == 9 for r in reads)
    for _ in range(200):
        b = rng.integers(0, 2 ** 30, 16).astype(np.float64)
        assert intwinograd._output_bound(b) == max(float(b[r].sum()) for r in reads)
