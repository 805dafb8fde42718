"""Winograd F(4x4,3x3) against the direct conv (float64 loops), and where the chooser uses it."""
from __future__ import annotations

import numpy as np
import pytest

from engine.kernels import threads, winograd4
from engine.kernels.conv import choice, conv2d
from engine.kernels.gemm import conv2d_naive
from engine.kernels.scratch import Scratch

RTOL = 1e-4

CASES = [  # (c, h, w, n, p): partial tiles in both directions, 1-pixel maps, padding 0 and 2
    (3, 13, 13, 5, 1), (4, 1, 1, 2, 1), (2, 2, 3, 3, 1), (3, 6, 6, 2, 0), (3, 7, 5, 2, 2), (5, 26, 26, 4, 1),
    (2, 4, 9, 3, 1), (8, 17, 10, 6, 1), (6, 9, 14, 7, 0),
]


def random_conv(rng, c, h, w, n):
    x = rng.standard_normal((c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((n, c, 3, 3)) / np.sqrt(c * 9)).astype(np.float32)
    return x, wt, rng.standard_normal(n).astype(np.float32)


def assert_close(y, ref, what):
    assert y.shape == ref.shape, f"{what}: shape {y.shape}, expected {ref.shape}"
    err = float(np.abs(y.astype(np.float64) - ref).max())
    tol = RTOL * max(1.0, float(np.abs(ref).max()))
    assert err <= tol, f"{what}: max |diff| {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("c,h,w,n,p", CASES)
def test_winograd4_matches_the_direct_conv(c, h, w, n, p):
    rng = np.random.default_rng(c * 1000 + h * 10 + w)
    x, wt, b = random_conv(rng, c, h, w, n)
    y = winograd4.conv3x3(x, winograd4.transform_weights(wt.reshape(n, -1)), b, p, Scratch())
    assert_close(y, conv2d_naive(x, wt, b, 1, p), f"F(4x4) c{c} {h}x{w} n{n} p{p}")


def test_winograd4_on_a_real_layer_shape_matches_naive_and_is_thread_independent():
    """yolov3-tiny layer 6 (64 -> 128 @52, leaky) through conv2d: the chooser picks F(4x4); filters
    0 and 127 against the direct conv; 1 and 2 threads give the same bits."""
    from helpers import require
    require(bool(threads._kernel_blas()), "no BLAS found by threadpoolctl: thread count cannot be set")
    rng = np.random.default_rng(6)
    x, wt, b = random_conv(rng, 64, 52, 52, 128)
    assert choice(64, 52, 52, 128, 3, 1, 1) == "winograd-4x4"
    with threads.blas_limit(1):
        one = conv2d(x, wt.reshape(128, -1), b, 3, 1, 1, 1, Scratch(), act="leaky")
    with threads.blas_limit(2):
        y = conv2d(x, wt.reshape(128, -1), b, 3, 1, 1, 1, Scratch(), act="leaky")
    assert np.array_equal(y, one)
    ref = conv2d_naive(x, wt[[0, 127]], b[[0, 127]], 1, 1)
    assert_close(y[[0, 127]], np.maximum(ref, 0.1 * ref), "F(4x4) layer 6, leaky")


def test_chooser_keeps_f2x2_on_13_pixel_maps_and_im2col_on_few_channels():
    assert choice(256, 13, 13, 512, 3, 1, 1) == "winograd"        # 6x6 tiles would waste half
    assert choice(128, 26, 26, 256, 3, 1, 1) == "winograd"
    assert choice(384, 26, 26, 256, 3, 1, 1) == "winograd-4x4"
    assert choice(128, 52, 52, 256, 3, 1, 1) == "winograd-4x4"
    assert choice(16, 208, 208, 32, 3, 1, 1) == "im2col-3x3/1"
    assert choice(64, 208, 208, 128, 3, 1, 1) == "winograd"       # big map: F(2x2)'s cheaper transforms
