"""Winograd F(m, 3) down the rows (direct across the columns) against the direct conv (float64
loops), its bits on 1 and 2 threads, and where the chooser uses it."""
from __future__ import annotations

import numpy as np
import pytest

from engine.kernels import winograd_rows
from engine.kernels.conv import choice
from engine.kernels.gemm import conv2d_naive
from engine.kernels.scratch import Scratch
from helpers import assert_close, assert_kernel_on_layer, random_conv3x3

CASES = [  # (c, h, w, n, p): partial last tile rows, 1-row maps, padding 0 and 2, several bands
    (3, 13, 13, 5, 1), (4, 1, 1, 2, 1), (2, 2, 3, 3, 1), (3, 6, 6, 2, 0), (3, 7, 5, 2, 2), (5, 26, 26, 4, 1),
    (2, 9, 4, 3, 1), (8, 17, 10, 6, 1), (6, 14, 9, 7, 0), (16, 40, 40, 9, 1), (4, 61, 300, 3, 1),
]


@pytest.mark.parametrize("m", [4, 6])
@pytest.mark.parametrize("c,h,w,n,p", CASES)
def test_rows_winograd_matches_the_direct_conv(m, c, h, w, n, p):
    rng = np.random.default_rng(c * 1000 + h * 10 + w)
    x, wt, b = random_conv3x3(rng, c, h, w, n)
    u = winograd_rows.transform_weights(wt.reshape(n, -1), m)
    assert u.shape == (m + 2, n, 3 * c) and winograd_rows.is_rows_form(u)
    ref = conv2d_naive(x, wt, b, 1, p)
    for act, want in (("leaky", np.maximum(ref, 0.1 * ref)), ("relu", np.maximum(ref, 0)), (None, ref)):
        y = winograd_rows.conv3x3(x, u, b, p, Scratch(), act=act)
        assert_close(y, want, f"F({m}, 3) rows c{c} {h}x{w} n{n} p{p} act {act}")


def test_band_rows_split_a_large_map_into_several_bands_balanced_on_two_threads():
    """The (4, 61, 300) case above runs more than one band, the last one partial; on yolov3-tiny's
    layer 4 (18 tile rows, bands of at most 3) 6 bands of 3 split 9 / 9 like 18 of 1, in fewer items,
    where 9 of 2 would give one thread 10."""
    th = -(-61 // winograd_rows.M_ROWS)
    rows = winograd_rows.band_rows(4, 300, th)
    assert 1 <= rows < th and th % rows != 0
    assert winograd_rows.band_rows(32, 104, 18) == 3
    assert winograd_rows.band_rows(16, 208, 35) == 3     # 12 bands, the last of 2 rows


@pytest.mark.parametrize("m", [4, 6])
@pytest.mark.parametrize("c,h,w,p", [(3, 13, 13, 1), (2, 1, 1, 1), (2, 2, 3, 2), (3, 7, 5, 0), (4, 17, 10, 2),
                                     (3, 29, 6, 1), (1, 6, 6, 1)])
def test_tile_rows_equal_tiling_the_np_pad_ed_input_on_every_band(m, c, h, w, p):
    """tile_rows reads the band's tile rows straight from x: the same values as the strided tiling of
    np.pad(x) (zero rows above and below, zero columns either side), for every band [r0, r1) of an odd
    size, the first and the last (whose rows stick out past the padding) included; the buffer it
    fills starts as garbage (NaN), as scratch memory does."""
    t = m + 2
    x = np.random.default_rng(h * w + c).standard_normal((c, h, w)).astype(np.float32)
    ho = h + 2 * p - 2
    th = -(-ho // m)
    xp = np.pad(x, ((0, 0), (p, p + m * th + 2 - (h + 2 * p)), (p, p)))   # room for the last tile row
    full = np.stack([xp[:, j:j + m * (th - 1) + 1:m] for j in range(t)])  # (t, C, th, Wp)
    for rows in range(1, th + 1):
        for r0 in range(0, th, rows):
            r1 = min(th, r0 + rows)
            out = np.full((t, c, r1 - r0, w + 2 * p), np.nan, np.float32)
            got = winograd_rows.tile_rows(x, p, m, r0, r1, out)
            assert np.array_equal(got, full[:, :, r0:r1]), f"m{m} c{c} {h}x{w} p{p} band [{r0}, {r1})"


def test_weights_that_do_not_fit_the_input_are_refused():
    u = winograd_rows.transform_weights(np.ones((2, 27), np.float32))
    with pytest.raises(ValueError, match="do not fit"):
        winograd_rows.conv3x3(np.zeros((4, 8, 8), np.float32), u, np.zeros(2, np.float32), 1, Scratch())
    with pytest.raises(ValueError, match="m=5"):
        winograd_rows.transform_weights(np.ones((2, 27), np.float32), 5)


@pytest.mark.parametrize("c,side,n", [(16, 208, 32), (32, 104, 64)])
def test_real_layer_shapes_match_naive_and_are_thread_independent(c, side, n):
    """yolov3-tiny layers 2 (16 -> 32 @208) and 4 (32 -> 64 @104), leaky, through conv2d: the chooser
    picks the rows kernel; first and last filters against the direct conv; 1 and 2 threads give the
    same bits (bands are the same GEMMs on any thread count)."""
    assert_kernel_on_layer("winograd-rows", c, side, n, "rows")


def test_chooser_gives_rows_to_few_channels_on_large_maps_only():
    assert choice(16, 208, 208, 32, 3, 1, 1) == "winograd-rows"     # yolov3-tiny layer 2
    assert choice(32, 104, 104, 64, 3, 1, 1) == "winograd-rows"     # yolov3-tiny layer 4
    assert choice(32, 208, 208, 64, 3, 1, 1) == "winograd-rows"     # yolov3 layer 3
    assert choice(64, 104, 104, 128, 3, 1, 1) == "winograd-4x4"     # 64 channels: F(4x4) wins
    assert choice(3, 416, 416, 16, 3, 1, 1) == "im2col-3x3/1"       # 3 channels: im2col wins
    assert choice(16, 52, 52, 32, 3, 1, 1) != "winograd-rows"
    assert choice(16, 208, 208, 32, 3, 2, 1) == "im2col-3x3/2"
