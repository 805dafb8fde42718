"""A whole model of odd shapes, fast kernels against naive references layer by layer: a non-square input
that is no multiple of 32, channel counts that are no multiple of 8 (13, 67, 65, 21), stride-2 3x3 and
1x1 convs, padding 0 and 2 on 3x3 convs, a 5x5 conv, maxpool size 2 stride 1 (yolov3-tiny's layer 11) and
size 3 stride 2 on odd maps, a shortcut of unequal shapes, and 64+ channel layers that take the float and
integer Winograd kernels. FLOAT against float64 loops; INT and HYBRID of every device profile against the
same runs with every exact integer kernel replaced by int64 sums (np.einsum over an im2col), bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.calib.collect import collect
from engine.kernels.gemm import conv2d_naive, conv_out_size
from engine.layers.activations import activate
from engine.layers.maxpool import maxpool_naive
from engine.quant.executor import Executor
from engine.quant.profiles import PROFILES
from engine.quant.qmodel import quantize_model
from helpers import IMAGES

LAYERS = [
    ("convolutional", "batch_normalize=1\nfilters=13\nsize=3\nstride=1\npad=1\nactivation=leaky"),
    ("convolutional", "batch_normalize=1\nfilters=70\nsize=3\nstride=2\npad=1\nactivation=leaky"),
    ("convolutional", "batch_normalize=1\nfilters=67\nsize=3\nstride=1\npad=1\nactivation=leaky"),
    ("maxpool", "size=2\nstride=1"),
    ("convolutional", "batch_normalize=1\nfilters=66\nsize=1\nstride=2\npad=0\nactivation=relu"),
    ("convolutional", "batch_normalize=1\nfilters=65\nsize=3\nstride=1\npadding=0\nactivation=leaky"),
    ("convolutional", "batch_normalize=1\nfilters=64\nsize=3\nstride=1\npadding=2\nactivation=linear"),
    ("convolutional", "filters=21\nsize=5\nstride=1\npad=1\nactivation=leaky"),
    ("maxpool", "size=3\nstride=2"),
    ("shortcut", "from=-2\nactivation=linear"),
    ("convolutional", "filters=18\nsize=1\nstride=1\nactivation=linear"),
    ("yolo", "mask=0,1,2\nanchors=10,14,23,27,37,58\nclasses=1\nnum=3"),
]


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    path = tmp_path_factory.mktemp("odd") / "odd.cfg"
    path.write_text("[net]\nwidth=45\nheight=33\nchannels=3\n\n" + "\n\n".join(f"[{k}]\n{v}" for k, v in LAYERS) + "\n")
    model = engine.load(path, random_weights=2)
    return model, collect(model, sorted(IMAGES.glob("*.jpg"))[:2], progress=False)


def test_the_model_has_the_odd_shapes_and_kernels_it_is_meant_to(odd):
    model, _ = odd
    assert model.input_shape == (3, 33, 45)
    assert [layer.out_shape for layer in model.layers[:9]] == [
        (13, 33, 45), (70, 17, 23), (67, 17, 23), (67, 17, 23), (66, 9, 12), (65, 7, 10), (64, 9, 12),
        (21, 9, 12), (21, 5, 6)]
    kernels = {model.prepared(i).wino is not None for i in (2, 5, 6)}
    assert kernels == {True}                                   # 64+ channels 3x3 stride 1: float Winograd


def test_float_layers_equal_float64_loops(odd):
    model, _ = odd
    x = np.random.default_rng(1).random(model.input_shape, dtype=np.float32)
    outs = model.forward(x)
    for i, layer in enumerate(model.layers):
        xin = x if layer.inputs[0] < 0 else outs[layer.inputs[0]]
        if layer.kind == "convolutional":
            w, b = layer.fused(model.params[i])
            ref = activate(conv2d_naive(xin, w, b, layer.stride, layer.padding).astype(np.float32), layer.activation)
            tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
            assert np.abs(outs[i] - ref).max() <= tol, f"layer {i}"
        elif layer.kind == "maxpool":
            np.testing.assert_array_equal(outs[i], maxpool_naive(xin, layer.size, layer.stride, layer.padding))


def _int64_sums(x_q, w_q, k, s, p):
    c, h, w = x_q.shape
    ho, wo = conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)
    xp = np.zeros((c, h + 2 * p, w + 2 * p), np.int64)
    xp[:, p:p + h, p:p + w] = x_q
    cols = np.empty((c, k, k, ho, wo), np.int64)
    for ky in range(k):
        for kx in range(k):
            cols[:, ky, kx] = xp[:, ky:ky + s * (ho - 1) + 1:s, kx:kx + s * (wo - 1) + 1:s]
    return np.einsum("nk,kp->np", w_q.reshape(len(w_q), -1).astype(np.int64),
                     cols.reshape(c * k * k, -1)).reshape(-1, ho, wo)


def naive_kernels(monkeypatch) -> list[int]:
    """Every exact integer conv kernel replaced by int64 sums handed over whole (one band, no bias folded)."""
    from engine.quant import int_layers, intops, zeropoint
    from engine.quant.profiles import onnxruntime, yolo2_light
    calls = [0]

    def unshared(x_q, w_q, w_f, k, s, p, epilogue, bias=None, on_fold=None):
        calls[0] += 1
        acc = _int64_sums(x_q, w_q, k, s, p).astype(np.float64)
        epilogue(0, 0, acc.shape[1], acc, slice(0, acc.shape[0]))
        return "naive"

    def conv_int(x_q, w_f, b_q, k, s, p, groups=1):
        calls[0] += 1
        assert groups == 1
        w_q = w_f.reshape(w_f.shape[0], x_q.shape[0], k, k)
        return _int64_sums(x_q, w_q, k, s, p) + np.asarray(b_q, np.int64)[:, None, None]

    monkeypatch.setattr(intops, "conv_int_unshared", unshared)
    monkeypatch.setattr(zeropoint, "conv_int_unshared", unshared)
    for module in (int_layers, onnxruntime, yolo2_light):
        monkeypatch.setattr(module, "conv_int", conv_int)
    return calls


@pytest.mark.parametrize("profile", PROFILES.names())
def test_int_and_hybrid_equal_runs_on_naive_integer_sums(odd, monkeypatch, profile):
    model, stats = odd
    qm = quantize_model(model, stats, "minmax", per_channel=profile != "yolo2_light", profile=profile)
    x = np.random.default_rng(2).random(model.input_shape, dtype=np.float32)
    fast = {mode: Executor(model, qm, mode).forward(x) for mode in ("int", "hybrid")}
    calls = naive_kernels(monkeypatch)
    for mode in ("int", "hybrid"):
        slow = Executor(model, qm, mode).forward(x)
        for i, (a, b) in enumerate(zip(fast[mode], slow)):
            assert np.array_equal(a, b), f"{profile} {mode} layer {i} [{model.layers[i].kind}]"
    assert calls[0] >= 8                                      # the naive sums really ran
