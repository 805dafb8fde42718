"""Device profiles: registry, QuantizedModel.profile files, and each profile's integer layers against naive
scalar references written from the rules (asymmetric uint8 with ORT's float32 requantization and lookup
tables; yolo2_light's int16 / truncation path; the avx2_u8s8 int16 pair saturation)."""
from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.calib.collect import CalibrationStats, observe
from engine.errors import EngineError, WeightsError
from engine.quant.executor import Executor
from engine.quant.intops import conv_int_naive
from engine.quant.profiles import PROFILES, get_profile
from engine.quant.qmodel import QuantizedModel, quantize_model

F = np.float32

CFG = """[net]
width=20
height=20
channels=3

[convolutional]
filters=8
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=6
size=3
stride=2
pad=1
activation=relu

[maxpool]
size=2
stride=2

[convolutional]
filters=10
size=1
stride=1
pad=0
activation=linear

[upsample]
stride=2

[route]
layers=-1,-4

[route]
layers=-1
groups=2
group_id=1

[convolutional]
filters=7
size=3
stride=1
pad=1
activation=leaky
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "small.cfg"
    path.write_text(CFG)
    model = engine.load(path, random_weights=3)
    stats = CalibrationStats()
    rng = np.random.default_rng(0)
    for _ in range(3):
        observe(model, rng.random((3, 20, 20), dtype=np.float32), stats)
    return model, stats


def _run(model, qm, seed=1):
    x = np.random.default_rng(seed).random((3, 20, 20), dtype=np.float32)
    values, _ = Executor(model, qm, "int").run(x)
    return values


def test_registry_names_and_errors(small):
    assert {"qwidgets", "onnxruntime", "avx2_u8s8", "yolo2_light"} <= set(PROFILES.names())
    for name in PROFILES.names():
        rules = get_profile(name).rules
        assert set(rules) >= {"activations", "weights", "accumulator", "requantization", "rounding", "leaky",
                              "route/concat", "shortcut", "upsample", "maxpool", "heads", "source"}, name
    with pytest.raises(EngineError, match="profile 'npu9'.*known: .*onnxruntime"):
        get_profile("npu9")
    model, stats = small
    with pytest.raises(EngineError, match="npu9"):
        quantize_model(model, stats, "minmax", profile="npu9")


def test_profile_is_saved_loaded_and_validated(small, tmp_path):
    import json
    model, stats = small
    qm = quantize_model(model, stats, "minmax", per_channel=True, profile="onnxruntime")
    assert qm.profile == "onnxruntime" and qm.zero_points["input"] == 0 and set(qm.pre_scales) == {"0", "7"}
    back = QuantizedModel.load(qm.save(tmp_path / "q.npz"))
    assert (back.profile, back.zero_points, back.pre_scales, back.pre_zero_points) == \
        (qm.profile, qm.zero_points, qm.pre_scales, qm.pre_zero_points)
    arrays = qm.to_arrays()

    def with_meta(**changes):
        meta = json.loads(bytes(arrays["meta"]).decode())
        for k, v in changes.items():
            if v is None:
                meta.pop(k)
            else:
                meta[k] = v
        z = dict(arrays)
        z["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        return z

    z = with_meta(profile=None, zero_points=None, pre_scales=None, pre_zero_points=None)
    assert QuantizedModel.from_arrays(z).profile == "qwidgets"                  # files from before profiles
    for change, message in [({"profile": "npu9"}, "'profile' is 'npu9'; known profiles"),
                            ({"zero_points": {"input": 300}}, r"zero_points of input must be integers in \[0, 255\]"),
                            ({"zero_points": {"99": 0}}, "zero_points name tensors the cfg does not have: 99"),
                            ({"pre_scales": {"0": -1.0}}, "pre_scales"),
                            ({"pre_scales": {}}, "pre-activation grid .* leaky conv layers 0, 7")]:
        with pytest.raises(WeightsError, match=message):
            QuantizedModel.from_arrays(with_meta(**change), "bad.npz")
    qw = quantize_model(model, stats, "minmax", profile="qwidgets").to_arrays()
    meta = json.loads(bytes(qw["meta"]).decode())
    meta["zero_points"] = {"input": 3}
    qw["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with pytest.raises(WeightsError, match=r"in \[0, 0\] for profile 'qwidgets'"):
        QuantizedModel.from_arrays(qw, "bad.npz")


def _ort_conv_naive(x, lq, layer, ys, yz):
    """Scalar loops: exact integer sum of (x - zp) * w + bias, then float32 (x_s * w_s) / y_s, clamp, half-even."""
    acc = conv_int_naive(x.q.astype(np.int64) - x.zero_point, lq.w_q, lq.b_q, layer.stride, layer.padding)
    out = np.empty(acc.shape, np.uint8)
    ws = np.broadcast_to(lq.w_scale, (acc.shape[0],))
    for c in range(acc.shape[0]):
        scale = F(F(x.scale) * F(ws[c])) / F(ys)
        for idx, a in np.ndenumerate(acc[c]):
            v = min(max(F(a) * scale, F(0 - yz)), F(255 - yz))
            out[(c,) + idx] = round(float(v)) + yz
    return out


def _lut_naive(q, xs, xz, ys, yz, alpha=None):
    out = np.empty(q.shape, np.uint8)
    for idx, v in np.ndenumerate(q):
        x = F(xs) * F(int(v) - xz)
        if alpha is not None and not x >= 0:
            x = F(alpha) * x
        y = min(max(x / F(ys), F(0 - yz)), F(255 - yz))
        out[idx] = round(float(y)) + yz
    return out


def test_onnxruntime_profile_layers_equal_naive_loops(small):
    model, stats = small
    qm = quantize_model(model, stats, "minmax", per_channel=True, profile="onnxruntime")
    values = _run(model, qm)
    x_in = np.random.default_rng(1).random((3, 20, 20), dtype=np.float32)
    s, z = qm.scales["input"], qm.zero_points["input"]
    q_in = np.array([min(255, max(0, round(float(v / F(s))) + z)) for v in x_in.ravel()], np.uint8).reshape(x_in.shape)
    inputs = {-1: type(values[0].q)(q_in, s, z)}
    inputs.update({i: v.q for i, v in enumerate(values)})
    for layer in model.layers:
        i, got = layer.index, values[layer.index].q
        assert got.q.dtype == np.uint8
        if layer.kind == "convolutional":
            assert (got.scale, got.zero_point) == (qm.scales[str(i)], qm.zero_points[str(i)])
            lq = qm.layers[i]
            x = inputs[layer.inputs[0]]
            if layer.activation == "leaky":
                pre = _ort_conv_naive(x, lq, layer, qm.pre_scales[str(i)], qm.pre_zero_points[str(i)])
                ref = _lut_naive(pre, qm.pre_scales[str(i)], qm.pre_zero_points[str(i)], qm.scales[str(i)],
                                 qm.zero_points[str(i)], alpha=0.1)
            else:
                assert layer.activation == "linear" or qm.zero_points[str(i)] == 0   # relu: the clamp at zp 0
                ref = _ort_conv_naive(x, lq, layer, qm.scales[str(i)], qm.zero_points[str(i)])
            assert np.array_equal(got.q, ref), f"layer {i}"
        elif layer.kind == "route" and len(layer.inputs) == 2:
            parts = [_lut_naive(inputs[j].q, inputs[j].scale, inputs[j].zero_point, got.scale, got.zero_point)
                     for j in layer.inputs]
            assert np.array_equal(got.q, np.concatenate(parts))
            assert inputs[layer.inputs[0]].scale != got.scale                    # a real requantization
        elif layer.kind == "route":
            src = inputs[layer.inputs[0]]
            assert np.array_equal(got.q, src.q[src.q.shape[0] // 2:]) and got.scale == src.scale
        elif layer.kind == "maxpool":
            src = inputs[layer.inputs[0]].q
            assert np.array_equal(got.q, src.reshape(src.shape[0], src.shape[1] // 2, 2, -1, 2).max(axis=(2, 4)))
        elif layer.kind == "upsample":
            assert np.array_equal(got.q, inputs[layer.inputs[0]].q.repeat(2, 1).repeat(2, 2))


def test_yolo2_light_profile_conv_equals_c_semantics(small):
    model, stats = small
    qm = quantize_model(model, stats, "minmax", per_channel=True, profile="yolo2_light")
    assert not qm.per_channel and all(lq.scheme == "yolo2_light" for lq in qm.layers.values())
    values = _run(model, qm)
    ex = Executor(model, qm, "int")
    assert ex.precision(0) == "float" and ex.precision(3) == "float" and ex.precision(7) == "int8"
    x = values[6].q                                      # int8 input of the leaky conv 7
    lq = qm.layers[7]
    acc = conv_int_naive(x.q, lq.w_q, np.zeros(7, np.int32), 1, 1)
    out_mult = F(32 * x.scale * float(lq.w_scale[0]) / qm.scales["7"])
    ref = np.empty(acc.shape, np.int8)
    for idx, a in np.ndenumerate(acc):
        a16 = max(-32767, min(32767, int(a / 32)))                     # C int division: toward zero
        q = int(F(a16) * out_mult)                                       # float -> int16: truncation
        q = int(F(q) + F(float(lq.b_q[idx[0]]) * float(lq.acc_scale[idx[0]]) / qm.scales["7"]))
        q = q if q > 0 else int(q / 10)
        ref[idx] = max(-127, min(127, q))
    assert np.array_equal(values[7].q.q, ref)
    # route without rescaling: the second input's codes (relu conv 1 runs float in yolo2_light, then is
    # quantized by truncation on its own scale) are copied as they are, under the first input's scale
    second, _ = get_profile("yolo2_light").quantize(values[1].f, qm.scales["1"])
    assert np.array_equal(values[5].q.q[10:], second.q) and values[5].q.scale == values[4].q.scale
    assert np.array_equal(second.q, np.clip(np.trunc(values[1].f * F(1 / qm.scales["1"])), -127, 127))


def test_avx2_pair_saturation_equals_naive_pairs():
    from engine.quant.profiles.avx2_u8s8 import pair_saturation_correction
    rng = np.random.default_rng(5)
    for c, k, s in [(3, 3, 1), (4, 3, 2), (5, 1, 1), (8, 3, 1)]:
        x = rng.integers(100, 256, (c, 7, 6)).astype(np.uint8)
        w = (rng.choice([-1, 1], (4, c, k, k)) * rng.integers(40, 128, (4, c, k, k))).astype(np.int8)
        zp, p = int(rng.integers(0, 256)), k // 2
        exact = conv_int_naive(x.astype(np.int64) - zp, w, np.zeros(4, np.int32), s, p)
        corr = pair_saturation_correction(x, zp, w, s, p)
        xp = np.full((c, 7 + 2 * p, 6 + 2 * p), zp, np.int64)
        xp[:, p:p + 7, p:p + 6] = x
        ref = np.zeros_like(exact)
        for f in range(4):
            for oy in range(exact.shape[1]):
                for ox in range(exact.shape[2]):
                    # channels-last reduction order, raw codes, adjacent pairs clamped to int16
                    terms = [int(w[f, ci, ky, kx]) * int(xp[ci, oy * s + ky, ox * s + kx])
                             for ky in range(k) for kx in range(k) for ci in range(c)] + [0]
                    pairs = sum(max(-32768, min(32767, terms[j] + terms[j + 1])) for j in range(0, len(terms) - 1, 2))
                    ref[f, oy, ox] = pairs - zp * int(w[f].astype(np.int64).sum())
        assert corr is not None and np.array_equal(exact + corr, ref)


def test_qwidgets_profile_is_the_default_and_unchanged(small):
    model, stats = small
    a = quantize_model(model, stats, "minmax", per_channel=True)
    b = quantize_model(model, stats, "minmax", per_channel=True, profile="qwidgets")
    assert a.profile == "qwidgets" and not a.zero_points and not a.pre_scales
    va, vb = _run(model, a), _run(model, b)
    for x, y in zip(va, vb):
        assert x.q.q.dtype == np.int8 and np.array_equal(x.q.q, y.q.q)


def test_yolo2_light_hybrid_conv_equals_c_semantics(small):
    """C.3: x truncated to int8, int32 sums, trunc(/32) to int16, times float 32*s_in*s_w, + float bias, leaky."""
    model, stats = small
    qm = quantize_model(model, stats, "minmax", profile="yolo2_light")
    x = np.random.default_rng(2).random((3, 20, 20), dtype=np.float32)
    values, _ = Executor(model, qm, "hybrid").run(x)
    lq, inp = qm.layers[7], values[6].f
    xq = np.clip(np.trunc(inp * F(1 / lq.in_scale)), -127, 127).astype(np.int8)
    acc = conv_int_naive(xq, lq.w_q, np.zeros(7, np.int32), 1, 1)
    mult = F(32 * lq.in_scale * float(lq.w_scale[0]))
    ref = np.empty(acc.shape, np.float32)
    for idx, a in np.ndenumerate(acc):
        y = F(max(-32767, min(32767, int(a / 32)))) * mult + F(float(lq.b_q[idx[0]]) * float(lq.acc_scale[idx[0]]))
        ref[idx] = y if y > 0 else F(0.1) * y
    np.testing.assert_allclose(values[7].f, ref, rtol=1e-6, atol=1e-6)
    assert Executor(model, qm, "hybrid").precision(0) == "float"


def test_connected_layers_run_float_under_onnxruntime(tmp_path):
    cfg = CFG.split("[maxpool]")[0] + "[connected]\noutput=5\nactivation=leaky\n"
    path = tmp_path / "fc.cfg"
    path.write_text(cfg)
    model = engine.load(path, random_weights=1)
    stats = CalibrationStats()
    observe(model, np.random.default_rng(0).random((3, 20, 20), dtype=np.float32), stats)
    qm = quantize_model(model, stats, "minmax", profile="onnxruntime")
    x = np.random.default_rng(1).random((3, 20, 20), dtype=np.float32)
    for mode in ("hybrid", "int"):
        ex = Executor(model, qm, mode)
        assert ex.precision(2) == "float" and ex.precision(0) == "int8"
        np.testing.assert_allclose(ex.forward(x)[2], model.run_layer(2, [ex.forward(x)[1]]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("profile", ["onnxruntime", "qwidgets_asym"])
def test_saturation_counts_of_two_kernel_threads_are_the_single_thread_counts(tiny, tiny_stats, profile):
    # The asymmetric profiles' epilogues run on both kernel threads at once, each appending its band's
    # (min, max, saturated) entry; the count used to be written into stats[-1] after the append, which could
    # be the other thread's entry, so counts were lost. Scales at a third of the calibrated ones saturate
    # on every layer; every per-layer count must equal the count of the same run on one thread.
    from engine.kernels.threads import blas_limit
    from engine.quant.qmodel import rescaled
    from helpers import IMAGES
    qm = quantize_model(tiny, tiny_stats, "minmax", per_channel=True, profile=profile)
    tight = rescaled(tiny, qm, {k: v / 3 for k, v in qm.scales.items() if k not in ("input",)})
    tight.zero_points = dict(qm.zero_points)
    tight.pre_scales = {k: v / 3 for k, v in qm.pre_scales.items()}      # onnxruntime: leaky convs' own grids
    x = tiny.preprocess(sorted(IMAGES.glob("*.jpg"))[0]).x
    counts = {}
    for threads in (1, 2, 2, 2):
        with blas_limit(threads):
            _, records = Executor(tiny, tight, "int").run(x)
        counts.setdefault(threads, []).append([r.stats.get("saturated", 0) for r in records])
    one = counts[1][0]
    assert sum(one) > 1000 and sum(c > 0 for c in one) >= 8             # saturation on many layers
    for got in counts[2]:
        assert got == one


def test_int32_wrapping_wraps_only_where_the_device_adds_in_int32():
    from engine.quant.profiles.onnxruntime import int32_wrapping
    got = []

    def epilogue(part, r0, r1, u, ch):
        got.append(u.copy())
    w_q = np.full((2, 1, 1, 1), 127, np.int8)
    small = int32_wrapping(epilogue, w_q, np.array([1000, -1000]))
    assert small is epilogue                                  # no sum can leave int32: no pass added
    wrap = int32_wrapping(epilogue, w_q, np.array([2 ** 31 - 1, -(2 ** 31) + 1]))
    u = np.array([[[2.0 ** 31 - 1 + 5]], [[-(2.0 ** 31) + 1 - 7]]])
    wrap(0, 0, 1, u, slice(0, 2))
    assert got[-1].ravel().tolist() == [-(2 ** 31) + 4, 2 ** 31 - 6]      # int32 two's complement
    assert get_profile("onnxruntime").wraps_int32 and get_profile("avx2_u8s8").wraps_int32
    assert not get_profile("qwidgets_asym").wraps_int32       # our own rule keeps the exact sum
