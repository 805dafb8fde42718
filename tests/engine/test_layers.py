"""Layer semantics against transcribed Darknet loops (reorg, shortcut, route groups, heads)."""
from __future__ import annotations

import numpy as np
import pytest

from engine.layers.region import region_activate
from engine.layers.reorg import reorg_pj, space_to_depth
from engine.layers.route import Route
from engine.layers.shortcut import shortcut_add
from engine.layers.upsample import upsample_nearest
from engine.layers.yolo import yolo_activate
from helpers import reorg_cpu


def test_reorg_matches_darknet_loop():
    x = np.arange(16 * 6 * 8, dtype=np.float32).reshape(16, 6, 8)
    np.testing.assert_array_equal(reorg_pj(x, 2), reorg_cpu(x, 2))


def test_space_to_depth_mapping():
    x = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    y = space_to_depth(x, 2)
    # out[(oy*s + ox)*C + c, j, i] = in[c, j*s + oy, i*s + ox]
    assert y[(1 * 2 + 0) * 2 + 1, 1, 0] == x[1, 3, 0]


def test_shortcut_unequal_shapes_follow_pj():
    prev = np.ones((2, 4, 4), np.float32)
    add = np.arange(3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8)
    y = shortcut_add(prev, add)
    np.testing.assert_array_equal(y[:, 1, 2], 1 + add[:2, 2, 4])  # stride-2 sampling, top-left aligned
    small = np.full((1, 2, 2), 5, np.float32)
    y = shortcut_add(np.zeros((2, 4, 4), np.float32), small)
    assert y[0, 0, 0] == 5 and y[0, 0, 1] == 0 and y[0, 2, 2] == 5 and (y[1] == 0).all()


def test_route_groups_take_the_group_slice():
    from engine.darknet.cfg import parse_cfg
    from engine.darknet.build import build_layers
    layers = build_layers(parse_cfg("[net]\nwidth=4\nheight=4\nchannels=4\n[convolutional]\nfilters=6\n"
                                    "[route]\nlayers=-1\ngroups=3\ngroup_id=2\n", "g.cfg"))
    route = layers[1]
    assert isinstance(route, Route) and route.out_shape == (2, 4, 4)
    x = np.arange(6 * 16, dtype=np.float32).reshape(6, 4, 4)
    np.testing.assert_array_equal(route.forward_float([x], None, None), x[4:6])


def test_upsample_nearest():
    x = np.arange(4, dtype=np.float32).reshape(1, 2, 2)
    np.testing.assert_array_equal(upsample_nearest(x, 2)[0], [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])


def test_yolo_activation_planes():
    x = np.random.default_rng(0).normal(size=(2 * 7, 3, 3)).astype(np.float32)
    y = yolo_activate(x, 2, 2).reshape(2, 7, 3, 3)
    xr = x.reshape(2, 7, 3, 3)
    sig = 1 / (1 + np.exp(-xr))
    np.testing.assert_allclose(y[:, [0, 1, 4, 5, 6]], sig[:, [0, 1, 4, 5, 6]], rtol=1e-6)
    np.testing.assert_array_equal(y[:, 2:4], xr[:, 2:4])
    scaled = yolo_activate(x, 2, 2, scale_x_y=1.05).reshape(2, 7, 3, 3)
    np.testing.assert_allclose(scaled[:, 0], 1.05 * sig[:, 0] - 0.025, rtol=1e-5)


def test_region_softmax_over_classes():
    x = np.random.default_rng(0).normal(size=(2 * 8, 2, 2)).astype(np.float32)
    y = region_activate(x, 2, 4, 3, softmax=1).reshape(2, 8, 2, 2)
    np.testing.assert_allclose(y[:, 5:].sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(y[:, 2:4], x.reshape(2, 8, 2, 2)[:, 2:4])


@pytest.mark.parametrize("name", ["leaky", "relu", "logistic", "mish", "swish", "linear"])
def test_activations_match_formulas(name):
    from engine.layers.activations import activate
    x = np.linspace(-30, 30, 601, dtype=np.float32)
    ref = {"leaky": np.where(x > 0, x, 0.1 * x), "relu": np.maximum(x, 0), "logistic": 1 / (1 + np.exp(-x.astype(np.float64))),
           "mish": x * np.tanh(np.log1p(np.exp(x.astype(np.float64)))), "swish": x / (1 + np.exp(-x.astype(np.float64))),
           "linear": x}[name]
    np.testing.assert_allclose(activate(x.copy(), name), ref, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("threads_", [1, 2])
def test_head_route_and_upsample_on_kernel_threads_match_loops(threads_):
    """yolov3-tiny's 26 px head, its 384-channel route and 13 -> 26 upsample run by channel ranges on
    the kernel threads: against per-element loops (the sigmoid in float64) and NumPy's concatenate /
    repeat, on 1 and 2 threads; ranges that cut an anchor's planes in the middle included."""
    from engine.kernels.threads import blas_limit
    from engine.layers.route import concat_channels
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((3 * 85, 26, 26)) * 6).astype(np.float32)
    with blas_limit(threads_):
        y = yolo_activate(x, 3, 80, scale_x_y=1.05)
        parts = [rng.standard_normal((c, 26, 26)).astype(np.float32) for c in (128, 256)]
        cat = concat_channels(parts)
        up = upsample_nearest(parts[0][:, :13, :13], 2)
    ref = x.astype(np.float64).reshape(3, 85, 26, 26)
    sig = 1 / (1 + np.exp(-ref))
    ref = np.concatenate([sig[:, :2] * 1.05 - 0.025, ref[:, 2:4], sig[:, 4:]], axis=1).reshape(x.shape)
    assert np.abs(y - ref).max() < 1e-6
    np.testing.assert_array_equal(cat, np.concatenate(parts))
    np.testing.assert_array_equal(up, parts[0][:, :13, :13].repeat(2, 1).repeat(2, 2))


@pytest.mark.parametrize("threads_", [1, 2])
def test_shortcut_of_equal_shapes_is_the_rounded_sum_on_any_thread_count(threads_):
    """yolov3's shortcuts (equal shapes, alpha = beta = 1) add by channel ranges on the kernel threads:
    each value is the float32 rounding of the exact sum (float64 holds it exactly), as the serial
    copy-then-add gave; int8 inputs still take the general path (summed in float32, no wrap-around)."""
    from engine.kernels.threads import blas_limit
    rng = np.random.default_rng(9)
    prev, add = (rng.standard_normal((64, 52, 52)).astype(np.float32) for _ in range(2))
    with blas_limit(threads_):
        y = shortcut_add(prev, add)
    assert y.dtype == np.float32 and y is not prev
    np.testing.assert_array_equal(y, (prev.astype(np.float64) + add).astype(np.float32))
    big = np.full((2, 3, 3), 100, np.int8)
    assert (shortcut_add(big, big) == 200).all()


def test_join_inputs_concatenates_what_a_route_joins_and_else_shows_the_first():
    from engine.layers.route import join_inputs, joined_count, joined_shape
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(3, 5, 6)).astype(np.float32), rng.normal(size=(2, 5, 6)).astype(np.float32)
    c = rng.normal(size=(3, 4, 6)).astype(np.float32)             # another spatial size
    np.testing.assert_array_equal(join_inputs([a, b]), np.concatenate([a, b], axis=0))
    assert joined_count([a.shape, b.shape]) == 2 and joined_shape([a.shape, b.shape]) == (5, 5, 6)
    assert join_inputs([a]) is a and joined_shape([a.shape]) == (3, 5, 6)
    assert join_inputs([a, c]) is a and joined_count([a.shape, c.shape]) == 1 and joined_shape([a.shape, c.shape]) == a.shape
    # the join the route's forward does
    from engine.darknet.build import build_layers
    from engine.darknet.cfg import parse_cfg
    layers = build_layers(parse_cfg("[net]\nwidth=6\nheight=5\nchannels=3\n[convolutional]\nfilters=3\n"
                                    "[convolutional]\nfilters=2\n[route]\nlayers=-2,-1\n", "r.cfg"))
    assert isinstance(layers[2], Route)
    np.testing.assert_array_equal(join_inputs([a, b]), layers[2].forward_float([a, b], None, None))
