"""Winograd F(m x m, 3x3) with GEMM transforms (m = 2, 4, 6) against the direct conv (float64 loops),
its matrices against Lavin's, and where the chooser uses it."""
from __future__ import annotations

import numpy as np
import pytest

from engine.kernels import winograd_gemm
from engine.kernels.conv import choice
from engine.kernels.gemm import conv2d_naive
from engine.kernels.scratch import Scratch
from helpers import assert_close, assert_kernel_on_layer, random_conv3x3

CASES = [  # (c, h, w, n, p): partial tiles in both directions, 1-pixel maps, padding 0 and 2
    (3, 13, 13, 5, 1), (4, 1, 1, 2, 1), (2, 2, 3, 3, 1), (3, 6, 6, 2, 0), (3, 7, 5, 2, 2), (5, 26, 26, 4, 1),
    (2, 4, 9, 3, 1), (8, 17, 10, 6, 1), (6, 9, 14, 7, 0), (40, 12, 16, 9, 1),
]


def test_f4x4_matrices_are_lavins():
    bt, g, at = winograd_gemm.matrices(4)
    assert np.array_equal(bt, [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                               [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]])
    assert np.allclose(g, [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                           [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], rtol=0, atol=1e-15)
    assert np.array_equal(at, [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]])


@pytest.mark.parametrize("m", [2, 4, 6])
def test_1d_transforms_compute_a_correlation(m):
    """A^T [(G g) . (B^T d)] = the m outputs of d (m+2) correlated with g (3), in float64."""
    bt, g, at = winograd_gemm.matrices(m)
    rng = np.random.default_rng(m)
    d, k = rng.standard_normal(m + 2), rng.standard_normal(3)
    ref = np.array([d[i:i + 3] @ k for i in range(m)])
    assert np.allclose(at @ ((g @ k) * (bt @ d)), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m", [2, 4, 6])
@pytest.mark.parametrize("c,h,w,n,p", CASES)
def test_winograd_gemm_matches_the_direct_conv(m, c, h, w, n, p):
    rng = np.random.default_rng(c * 1000 + h * 10 + w)
    x, wt, b = random_conv3x3(rng, c, h, w, n)
    u = winograd_gemm.transform_weights(wt.reshape(n, -1), m)
    y = winograd_gemm.conv3x3(x, u, b, p, Scratch(), act="leaky")
    ref = conv2d_naive(x, wt, b, 1, p)
    assert_close(y, np.maximum(ref, 0.1 * ref), f"F({m}x{m}) c{c} {h}x{w} n{n} p{p}")


def test_weights_of_no_winograd_shape_are_refused():
    with pytest.raises(ValueError, match="25 weight planes"):
        winograd_gemm.conv3x3(np.zeros((1, 4, 4), np.float32), np.zeros((25, 1, 1), np.float32),
                              np.zeros(1, np.float32), 1, Scratch())


@pytest.mark.parametrize("c,side,n", [(64, 52, 128), (64, 104, 128), (128, 26, 256), (32, 24, 64), (96, 39, 64)])
def test_f4x4_on_real_layer_shapes_matches_naive_and_is_thread_independent(c, side, n):
    """yolov3-tiny layer 6 (64 -> 128 @52) and yolov3's 64 -> 128 @104, leaky, through conv2d: the chooser
    picks F(4x4); first and last filters against the direct conv; 1 and 2 threads give the same bits
    (several channel and filter blocks: the blocks are the same GEMMs on any thread count). And the
    24-39 px maps with small weights (SMALL_F4X4): yolov3-tiny layer 8 (128 -> 256 @26) and the ends
    of the range, whose 4x4 tiles stick out of the map."""
    assert_kernel_on_layer("winograd-4x4", c, side, n, "F(4x4)")


def test_chooser_keeps_f2x2_on_13_pixel_maps_and_im2col_on_few_channels():
    assert choice(256, 13, 13, 512, 3, 1, 1) == "winograd"        # 6x6 tiles would waste half
    assert choice(128, 26, 26, 256, 3, 1, 1) == "winograd-4x4"    # small weights (SMALL_F4X4)
    assert choice(256, 26, 26, 512, 3, 1, 1) == "winograd"        # 19 MB of F(4x4) weights: F(2x2)
    assert choice(384, 26, 26, 256, 3, 1, 1) == "winograd-4x4"
    assert choice(128, 52, 52, 256, 3, 1, 1) == "winograd-4x4"
    assert choice(64, 104, 104, 128, 3, 1, 1) == "winograd-4x4"
    assert choice(32, 52, 52, 64, 3, 1, 1) == "winograd-4x4"
    assert choice(16, 52, 52, 32, 3, 1, 1) == "im2col-3x3/1"
    assert choice(3, 416, 416, 16, 3, 1, 1) == "im2col-3x3/1"
    assert choice(32, 104, 104, 64, 3, 2, 1) == "im2col-3x3/2"


@pytest.mark.parametrize("kind,c,side,n", [("winograd", 256, 13, 512), ("winograd-4x4", 384, 26, 256)])
def test_tiles_sticking_out_are_cropped_per_filter_block(kind, c, side, n):
    """yolov3-tiny layers 10 (F(2x2) on 13 px: 7x7 tiles of 2 = 14 px) and 21 (F(4x4) on 26 px: 28 px):
    each filter block crops its own tiles into y inside its item; against the direct conv, and the
    same bits on 1 and 2 threads."""
    assert_kernel_on_layer(kind, c, side, n, kind)


@pytest.mark.parametrize("m", [2, 4, 6])
@pytest.mark.parametrize("c,h,w,p", [(3, 13, 13, 1), (2, 1, 1, 1), (2, 2, 3, 2), (3, 7, 5, 0), (5, 26, 26, 1),
                                     (40, 12, 16, 1), (7, 29, 11, 2), (300, 13, 13, 1)])
def test_channels_last_input_transform_matches_a_float64_reference(monkeypatch, m, c, h, w, p):
    """input_transform_hwc: V[t*b + a, tile, c] = sum_yx B^T[a, y] B^T[b, x] d[y, x] over the tile's
    t x t window of the zero-padded input (tiles m apart, the last ones sticking out), against the
    same sums in float64 on np.pad; bands of tile rows (several on the larger maps) give the same bits
    on 1 and 2 threads; and the (C, tiles) `input_transform` of the INT path holds the same values."""
    from engine.kernels import threads
    t = m + 2
    x = np.random.default_rng(c * h + w).standard_normal((c, h, w)).astype(np.float32)
    th, tw = winograd_gemm.tiles_of(h, w, p, m)
    xp = np.zeros((c, m * th + 2, m * tw + 2))
    xp[:, p:p + h, p:p + w] = x
    win = np.stack([np.stack([xp[:, y:y + m * (th - 1) + 1:m, xx:xx + m * (tw - 1) + 1:m] for xx in range(t)])
                    for y in range(t)])                                  # [y, x, c, ty, tx]
    bt, _, _ = winograd_gemm.matrices(m)
    ref = np.einsum("ay,bx,yxcij->baijc", bt, bt, win).reshape(t * t, th * tw, c)
    got = {}
    for count in (1, 2):
        monkeypatch.setattr(threads, "_threads", count)
        got[count] = winograd_gemm.input_transform_hwc(x, p, m, Scratch()).copy()
    assert np.array_equal(got[1], got[2])
    assert_close(got[1], ref, f"hwc input transform F({m}x{m}) c{c} {h}x{w} p{p}", rtol=1e-5)
    chw = winograd_gemm.input_transform(x, p, m, Scratch())
    assert_close(chw.transpose(0, 2, 1), ref, f"chw input transform F({m}x{m}) c{c} {h}x{w} p{p}", rtol=1e-5)


def test_output_transform_bands_are_fixed_by_the_shape_and_cover_the_tile_rows():
    """out_band_rows: at least one tile row, at most BLOCK floats of M^T per band unless one row is more,
    about OUT_BANDS bands, and no more tile rows on the busier of 2 threads than plain ceil bands."""
    from engine.kernels.gemm import two_thread_span
    for th in range(1, 60):
        for per_row in (16, 1000, 36 * 7 * 256, winograd_gemm.BLOCK + 1):
            r = winograd_gemm.out_band_rows(th, per_row)
            assert 1 <= r <= th and (r == 1 or r * per_row <= winograd_gemm.BLOCK), (th, per_row, r)
            cap = max(1, min(winograd_gemm.BLOCK // per_row, -(-th // winograd_gemm.OUT_BANDS)))
            assert r <= cap and two_thread_span(th, r) <= two_thread_span(th, cap), (th, per_row, r)


@pytest.mark.parametrize("m", [2, 4, 6])
@pytest.mark.parametrize("c,h,w,n,p", [(5, 13, 13, 7, 1), (6, 26, 26, 9, 1), (4, 11, 17, 5, 0)])
def test_one_tile_row_bands_match_the_direct_conv_on_1_and_2_threads(monkeypatch, m, c, h, w, n, p):
    """Output bands of one tile row each (the last ones sticking out of the map: cropped per band),
    M^T read by bands: the direct conv's values, and the same bits on 1 and 2 threads."""
    from engine.kernels import threads
    monkeypatch.setattr(winograd_gemm, "OUT_BANDS", 1000)
    rng = np.random.default_rng(m * 100 + h)
    x, wt, b = random_conv3x3(rng, c, h, w, n)
    u = winograd_gemm.transform_weights(wt.reshape(n, -1), m)
    got = {}
    for count in (1, 2):
        monkeypatch.setattr(threads, "_threads", count)
        got[count] = winograd_gemm.conv3x3(x, u, b, p, Scratch(), act="relu")
    assert np.array_equal(got[1], got[2])
    assert_close(got[1], np.maximum(conv2d_naive(x, wt, b, 1, p), 0), f"F({m}x{m}) 1-row bands c{c} {h}x{w} p{p}")


