"""A conv and the layer after it in one pass (`engine.kernels.tails`, Model.forward): a [shortcut]
equals the shortcut layer, for every kernel kind, on 1 and 2 threads; a tail run band by band (the
kernels' band path) sees every output row once, final; the conv's own output is unchanged."""
from __future__ import annotations

import numpy as np
import pytest

from engine.kernels import gemm, threads
from engine.kernels.conv import choice, conv2d
from engine.kernels.gemm import conv2d_naive
from engine.kernels.scratch import Scratch
from engine.kernels.tails import AddInto, Tail
from engine.layers.shortcut import shortcut_add

class Copy(Tail):
    """A tail that copies the conv's output band by band (or block by block): each row or filter must
    arrive once, with its final values."""

    def check(self, n, ho, wo):
        assert self.out.shape == (n, ho, wo)

    def on_bands(self, rows):
        return rows % 2 == 0

    def rows(self, y, r0, r1, scratch, part):
        assert np.isnan(self.out[:, r0:r1]).all(), f"rows {r0}:{r1} twice"
        self.out[:, r0:r1] = y[:, r0:r1]

    def chans(self, y, c0, c1, scratch, part):
        assert np.isnan(self.out[c0:c1]).all(), f"filters {c0}:{c1} twice"
        self.out[c0:c1] = y[c0:c1]


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
    copied = np.full(plain.shape, np.nan, np.float32)
    y = conv2d(x, w.reshape(n, -1), b, k, 1, p, 1, Scratch(), act="leaky", tail=Copy(copied))
    assert np.array_equal(y, plain) and np.array_equal(copied, plain), f"{kind}: the band tail"
    other = rng.standard_normal(y.shape).astype(np.float32)
    summed = np.full(y.shape, np.nan, np.float32)
    y2 = conv2d(x, w.reshape(n, -1), b, k, 1, p, 1, Scratch(), act="leaky", tail=AddInto(summed, other))
    assert np.array_equal(y2, plain) and np.array_equal(summed, shortcut_add(plain, other)), kind
    f = [0, n - 1]                                  # two filters against the direct loops (time)
    ref = conv2d_naive(x, w[f], b[f], 1, p)
    ref = np.maximum(ref, 0.1 * ref)
    assert np.abs(y[f] - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()), f"{kind}, {count} threads"


def test_odd_im2col_bands_and_groups_run_the_tail_after_the_bands(monkeypatch):
    """Bands of 5 rows are odd (Copy runs only on even bands): that kernel, and a grouped conv, run
    the tail in a pass after them."""
    monkeypatch.setattr(gemm, "even_bands", lambda total, rows: 5)
    monkeypatch.setattr(threads, "_threads", 2)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 30, 22)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    copied = np.full((6, 30, 22), np.nan, np.float32)
    y = conv2d(x, w.reshape(6, -1), b, 3, 1, 1, 2, Scratch(), act="relu", tail=Copy(copied))
    np.testing.assert_array_equal(copied, y)
    assert np.abs(y - np.maximum(conv2d_naive(x, w, b, 1, 1, groups=2), 0)).max() < 1e-4


@pytest.mark.parametrize("shape, dtype", [((4, 4, 4), np.float32), ((4, 8, 9), np.float32),
                                          ((4, 8, 8), np.float64)])
def test_a_residual_that_does_not_fit_is_refused(shape, dtype):
    x = np.zeros((2, 8, 8), np.float32)
    w, b = np.zeros((4, 18), np.float32), np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="residual"):
        conv2d(x, w, b, 3, 1, 1, 1, Scratch(), tail=AddInto(np.empty((4, 8, 8), np.float32), np.empty(shape, dtype)))


def test_tiny_has_no_tails(tiny):
    """Fused maxpools and heads measured slower on a quiet host (kernels/tails.py): none are fused."""
    assert tiny.tail_pairs() == frozenset()


def test_yolov3_forward_runs_its_shortcuts_as_tails_and_equals_the_layers_run_one_by_one(tmp_path):
    """Every yolov3 [shortcut] (23, after a 3x3 conv) adds into its own output inside the conv's items."""
    import engine
    from helpers import CFG_DIR, resized_cfg
    model = engine.load(resized_cfg(CFG_DIR / "yolov3.cfg", 128, tmp_path), random_weights=0)
    pairs = model.tail_pairs()
    kinds = sorted(model.layers[i + 1].kind for i in pairs)
    assert kinds == ["shortcut"] * 23
    x = np.random.default_rng(4).random(model.input_shape, dtype=np.float32)
    for n in (1, 2):
        with threads.blas_limit(n):
            fused = model.forward(x)
        xs, alone = model.check_input(x), []
        for i in range(len(model.layers)):
            alone.append(model.run_layer(i, model.inputs_of(i, xs, alone)))
        for i, (a, b) in enumerate(zip(fused, alone)):
            assert np.array_equal(a, b), f"layer {i} [{model.layers[i].kind}], {n} threads"
