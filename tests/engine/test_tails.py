"""A conv and the layer after it in one pass (`engine.kernels.tails`, Model.forward): a 2x2 stride-2
[maxpool] equals Darknet's maxpool loop on the conv's output bit for bit, a [shortcut] equals the
shortcut layer, for every kernel kind, on 1 and 2 threads; the conv's own output is unchanged."""
from __future__ import annotations

import numpy as np
import pytest

from engine.kernels import gemm, threads
from engine.kernels.conv import choice, conv2d
from engine.kernels.gemm import conv2d_naive
from engine.kernels.scratch import Scratch
from engine.kernels.tails import AddInto, Pool2x2
from engine.layers.maxpool import maxpool_naive
from engine.layers.shortcut import shortcut_add

CASES = [  # (c, side, n, k, p, kind): the kernel `choice` gives them is checked below
    (3, 64, 8, 3, 1, "im2col-3x3/1"), (16, 96, 16, 3, 1, "winograd-rows"), (32, 104, 64, 3, 1, "winograd-rows"),
    (64, 52, 64, 3, 1, "winograd-4x4"), (32, 42, 64, 3, 1, "winograd-4x4"), (64, 14, 64, 3, 1, "winograd"),
    (8, 20, 12, 1, 0, "gemm-1x1"), (5, 18, 6, 5, 2, "im2col-5x5/1"),
]


@pytest.mark.parametrize("count", [1, 2])
@pytest.mark.parametrize("c,side,n,k,p,kind", CASES)
def test_fused_tails_equal_the_layers_after_the_conv(monkeypatch, count, c, side, n, k, p, kind):
    assert choice(c, side, side, n, k, 1, p) == kind
    monkeypatch.setattr(threads, "_threads", count)
    rng = np.random.default_rng(c * side + n)
    x = rng.standard_normal((c, side, side)).astype(np.float32)
    w = (rng.standard_normal((n, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    plain = conv2d(x, w.reshape(n, -1), b, k, 1, p, 1, Scratch(), act="leaky")
    pooled = np.full((n, side // 2, side // 2), np.nan, np.float32)
    y = conv2d(x, w.reshape(n, -1), b, k, 1, p, 1, Scratch(), act="leaky", tail=Pool2x2(pooled))
    assert np.array_equal(y, plain), f"{kind}: the fused pool changed the conv output"
    other = rng.standard_normal(y.shape).astype(np.float32)
    summed = np.full(y.shape, np.nan, np.float32)
    y2 = conv2d(x, w.reshape(n, -1), b, k, 1, p, 1, Scratch(), act="leaky", tail=AddInto(summed, other))
    assert np.array_equal(y2, plain) and np.array_equal(summed, shortcut_add(plain, other)), kind
    f = [0, n - 1]                                  # two filters against the direct loops (time)
    ref = conv2d_naive(x, w[f], b[f], 1, p)
    ref = np.maximum(ref, 0.1 * ref)
    assert np.abs(y[f] - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    np.testing.assert_array_equal(pooled, maxpool_naive(y, 2, 2, 1), err_msg=f"{kind}, {count} threads")


def test_odd_im2col_bands_and_groups_pool_after_the_bands(monkeypatch):
    """Bands of 5 rows would split row pairs between items: that kernel pools in a pass after them."""
    monkeypatch.setattr(gemm, "even_bands", lambda total, rows: 5)
    monkeypatch.setattr(threads, "_threads", 2)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 30, 22)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    pooled = np.empty((6, 15, 11), np.float32)
    y = conv2d(x, w.reshape(6, -1), b, 3, 1, 1, 2, Scratch(), act="relu", tail=Pool2x2(pooled))
    np.testing.assert_array_equal(pooled, maxpool_naive(y, 2, 2, 0))
    assert np.abs(y - np.maximum(conv2d_naive(x, w, b, 1, 1, groups=2), 0)).max() < 1e-4


@pytest.mark.parametrize("side, shape, dtype", [(9, (4, 4, 4), np.float32), (8, (4, 4, 5), np.float32),
                                                (8, (4, 4, 4), np.float64)])
def test_a_pooled_output_that_does_not_fit_is_refused(side, shape, dtype):
    """A 9-row output has no disjoint 2x2 blocks; (4, 4, 5) is not an 8x8 map pooled; nor is float64."""
    x = np.zeros((2, side, 8), np.float32)
    w, b = np.zeros((4, 18), np.float32), np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="pooled"):
        conv2d(x, w, b, 3, 1, 1, 1, Scratch(), tail=Pool2x2(np.empty(shape, dtype)))
    with pytest.raises(ValueError, match="residual"):
        conv2d(x, w, b, 3, 1, 1, 1, Scratch(), tail=AddInto(np.empty((4, side, 8), np.float32), np.empty(shape, dtype)))


def test_tiny_forward_fuses_its_tails_and_equals_the_layers_run_one_by_one(tiny):
    """yolov3-tiny: layers 0, 2, 4, 6, 8 (im2col, rows F(6,3) twice, F(4x4), F(2x2)) pool the maxpool
    after them band by band or block by block, layer 10 its size-2 stride-1 maxpool (11) by channel
    ranges, the 1x1 layers 15, 18, 22 the yolo heads and the upsample on their filter blocks."""
    assert sorted(tiny.tail_pairs()) == [0, 2, 4, 6, 8, 10, 15, 18, 22]
    assert isinstance(tiny.layers[1].tail([]), Pool2x2) and not isinstance(tiny.layers[11].tail([]), Pool2x2)
    x = np.random.default_rng(9).random(tiny.input_shape, dtype=np.float32)
    for n in (1, 2):
        with threads.blas_limit(n):
            fused = tiny.forward(x)
        xs, alone = tiny.check_input(x), []
        for i in range(len(tiny.layers)):
            alone.append(tiny.run_layer(i, tiny.inputs_of(i, xs, alone)))
        for i, (a, b) in enumerate(zip(fused, alone)):
            assert np.array_equal(a, b) and not a.flags.writeable, f"layer {i}, {n} threads"
    part = tiny.forward(x, stop=2)               # the pair cut at its conv: the conv runs alone
    assert len(part) == 3 and np.array_equal(part[2], fused[2])
    np.testing.assert_array_equal(tiny.forward(x, stop=3)[3], maxpool_naive(fused[2], 2, 2, 1))


def test_yolov3_forward_runs_its_shortcuts_as_tails_and_equals_the_layers_run_one_by_one(tmp_path):
    """Every yolov3 [shortcut] (23, after a 3x3 conv) adds into its own output inside the conv's items;
    the 3 [yolo] heads and 2 [upsample] run on the filter blocks of the 1x1 conv before them."""
    import engine
    from helpers import CFG_DIR, resized_cfg
    model = engine.load(resized_cfg(CFG_DIR / "yolov3.cfg", 128, tmp_path), random_weights=0)
    pairs = model.tail_pairs()
    kinds = sorted(model.layers[i + 1].kind for i in pairs)
    assert kinds == ["shortcut"] * 23 + ["upsample"] * 2 + ["yolo"] * 3
    x = np.random.default_rng(4).random(model.input_shape, dtype=np.float32)
    for n in (1, 2):
        with threads.blas_limit(n):
            fused = model.forward(x)
        xs, alone = model.check_input(x), []
        for i in range(len(model.layers)):
            alone.append(model.run_layer(i, model.inputs_of(i, xs, alone)))
        for i, (a, b) in enumerate(zip(fused, alone)):
            assert np.array_equal(a, b), f"layer {i} [{model.layers[i].kind}], {n} threads"


def test_channelwise_tails_cut_anywhere_equal_the_layers(monkeypatch):
    """A yolo head whose anchors straddle the filter blocks (255 = 3 x 85 filters, blocks of 32), with
    scale_x_y, and a x2 upsample, after a 1x1 conv and after a band kernel (3x3: a pass after it)."""
    from engine.kernels.tails import Channelwise
    from engine.layers.upsample import upsample_nearest
    from engine.layers.yolo import yolo_activate, yolo_channels
    monkeypatch.setattr(threads, "_threads", 2)
    rng = np.random.default_rng(8)
    for k, p in ((1, 0), (3, 1)):
        x = rng.standard_normal((16, 13, 13)).astype(np.float32)
        w = rng.standard_normal((255, 16 * k * k)).astype(np.float32)
        b = rng.standard_normal(255).astype(np.float32)
        plain = conv2d(x, w, b, k, 1, p, 1, Scratch(), act="linear")
        out = np.full(plain.shape, np.nan, np.float32)
        y = conv2d(x, w, b, k, 1, p, 1, Scratch(), act="linear",
                   tail=Channelwise(out, lambda v, lo, hi: yolo_channels(v, out, lo, hi, 80, 1.05)))
        assert np.array_equal(y, plain) and np.array_equal(out, yolo_activate(plain, 3, 80, 1.05))
        up = np.full((255, 13, 2, 13, 2), np.nan, np.float32)

        def copy(v, lo, hi):
            up[lo:hi] = v[lo:hi, :, None, :, None]
        conv2d(x, w, b, k, 1, p, 1, Scratch(), act="linear", tail=Channelwise(up, copy))
        assert np.array_equal(up.reshape(255, 26, 26), upsample_nearest(plain, 2))
