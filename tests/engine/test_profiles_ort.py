"""Each integer op of the `onnxruntime` profile alone against a live onnxruntime (random scales and inputs):
QuantizeLinear, QLinearConv (uint8 x, uint8 w with zero point 128, int32 bias), QLinearLeakyRelu,
QLinearConcat, DequantizeLinear; and the int16 pair saturation of the u8 x s8 kernel (avx2_u8s8)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from engine.quant import asym  # noqa: E402
from engine.quant.intops import conv_int_naive  # noqa: E402

SEEDS = range(12)


def _session(nodes, inputs, outputs, inits):
    from onnx import helper as h, numpy_helper as nh
    g = h.make_graph(nodes, "op", inputs, outputs, [nh.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def _vi(name, elem):
    from onnx import helper as h
    return h.make_tensor_value_info(name, elem, None)


def _scale(rng) -> float:
    return float(np.float32(10.0 ** rng.uniform(-3, 0)))


@pytest.mark.parametrize("seed", SEEDS)
def test_quantize_and_dequantize_linear_equal_ort(seed):
    from onnx import TensorProto as T, helper as h
    rng = np.random.default_rng(seed)
    s, zp = _scale(rng), int(rng.integers(0, 256))
    x = (rng.standard_normal((3, 17, 19)) * s * 100).astype(np.float32)
    # ties: values exactly on half steps must round half to even, as ORT does
    x[0, 0, :8] = ((np.arange(8) - 4 + 0.5) * np.float32(s)).astype(np.float32)
    sess = _session([h.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                     h.make_node("DequantizeLinear", ["q", "s", "z"], ["d"])],
                    [_vi("x", T.FLOAT)], [_vi("q", T.UINT8), _vi("d", T.FLOAT)],
                    {"s": np.float32(s), "z": np.uint8(zp)})
    q_ort, d_ort = sess.run(None, {"x": x})
    q, _ = asym.quantize_linear(x, s, zp)
    assert np.array_equal(q, q_ort)
    assert np.array_equal(asym.dequantize_linear(q, s, zp), d_ort)


def _qlinearconv(x_u8, xs, xz, w_int8, ws, ys, yz, b, k, st, p, signed_w=False):
    from onnx import TensorProto as T, helper as h
    w = w_int8 if signed_w else (w_int8.astype(np.int16) + 128).astype(np.uint8)
    wz = np.zeros(w.shape[0], np.int8) if signed_w else np.full(w.shape[0], 128, np.uint8)
    sess = _session([h.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"],
                                 kernel_shape=[k, k], strides=[st, st], pads=[p] * 4)],
                    [_vi("x", T.UINT8)], [_vi("y", T.UINT8)],
                    {"xs": np.float32(xs), "xz": np.uint8(xz), "w": w, "ws": np.asarray(ws, np.float32),
                     "wz": wz, "ys": np.float32(ys), "yz": np.uint8(yz), "b": b.astype(np.int32)})
    return sess.run(None, {"x": x_u8[None]})[0][0]


@pytest.mark.parametrize("seed", SEEDS)
def test_qlinearconv_requantization_equals_ort(seed):
    """Naive integer loops for the accumulator, then MlasRequantizeOutput's float32 rule."""
    rng = np.random.default_rng(seed)
    c, n, k = int(rng.integers(1, 9)), int(rng.integers(1, 7)), int(rng.choice([1, 3]))
    st, p = int(rng.choice([1, 2])), k // 2
    x = rng.integers(0, 256, (c, 9, 11)).astype(np.uint8)
    w = rng.integers(-127, 128, (n, c, k, k)).astype(np.int8)
    xs, ws = _scale(rng), np.array([_scale(rng) for _ in range(n)], np.float32)
    xz, yz = int(rng.integers(0, 256)), int(rng.integers(0, 256))
    b = rng.integers(-50000, 50000, n).astype(np.int32)
    acc = conv_int_naive(x.astype(np.int64) - xz, w, b, st, p)
    ys = float(np.float32(np.abs(acc).max() * xs * float(ws.max()) / rng.uniform(60, 400)))
    ref, _ = asym.requantize_output(acc, asym.conv_output_scales(xs, ws, ys), yz)
    assert np.array_equal(ref, _qlinearconv(x, xs, xz, w, ws, ys, yz, b, k, st, p))


@pytest.mark.parametrize("seed", SEEDS)
def test_leaky_and_concat_lookup_tables_equal_ort(seed):
    from onnx import TensorProto as T, helper as h
    rng = np.random.default_rng(seed)
    xs, ys, s2 = _scale(rng), _scale(rng), _scale(rng)
    xz, yz, z2 = (int(v) for v in rng.integers(0, 256, 3))
    x = np.arange(256, dtype=np.uint8).reshape(1, 4, 64)
    x2 = rng.integers(0, 256, (1, 3, 64)).astype(np.uint8)
    sess = _session([h.make_node("QLinearLeakyRelu", ["x", "xs", "xz", "ys", "yz"], ["y"], domain="com.microsoft",
                                 alpha=0.1),
                     h.make_node("QLinearConcat", ["ys", "yz", "x", "xs", "xz", "x2", "s2", "z2"], ["c"],
                                 domain="com.microsoft", axis=1)],
                    [_vi("x", T.UINT8), _vi("x2", T.UINT8)], [_vi("y", T.UINT8), _vi("c", T.UINT8)],
                    {"xs": np.float32(xs), "xz": np.uint8(xz), "ys": np.float32(ys), "yz": np.uint8(yz),
                     "s2": np.float32(s2), "z2": np.uint8(z2)})
    y_ort, c_ort = sess.run(None, {"x": x, "x2": x2})
    leaky = asym.build_lut(xs, xz, ys, yz, asym.leaky_f32(0.1))
    assert np.array_equal(asym.apply_lut(x, leaky), y_ort)
    ref_c = np.concatenate([asym.apply_lut(x, asym.build_lut(xs, xz, ys, yz)),
                            asym.apply_lut(x2, asym.build_lut(s2, z2, ys, yz))], axis=1)
    assert np.array_equal(ref_c, c_ort)


@pytest.mark.parametrize("seed", SEEDS)
def test_qlinear_add_equals_ort_avx2_kernel(seed):
    from onnx import TensorProto as T, helper as h
    rng = np.random.default_rng(seed)
    sa, sb, sc = (_scale(rng) for _ in range(3))
    za, zb, zc = (int(v) for v in rng.integers(0, 256, 3))
    a, b = (rng.integers(0, 256, (1, 3, 17, 19)).astype(np.uint8) for _ in range(2))
    sess = _session([h.make_node("QLinearAdd", ["a", "sa", "za", "b", "sb", "zb", "sc", "zc"], ["c"],
                                 domain="com.microsoft")],
                    [_vi("a", T.UINT8), _vi("b", T.UINT8)], [_vi("c", T.UINT8)],
                    {"sa": np.float32(sa), "za": np.uint8(za), "sb": np.float32(sb), "zb": np.uint8(zb),
                     "sc": np.float32(sc), "zc": np.uint8(zc)})
    ours, _ = asym.qlinear_add(a, sa, za, b, sb, zb, sc, zc)
    assert np.array_equal(ours, sess.run(None, {"a": a, "b": b})[0])


@pytest.mark.parametrize("seed", range(4))
def test_u8s8_pair_saturation_equals_ort_on_this_cpu(seed):
    """avx2_u8s8's accumulator against QLinearConv with int8 weights where this host's ORT saturates
    (AVX2 without VNNI); on a VNNI CPU, ORT's exact sums (and the profile's host check says so)."""
    from engine.quant.profiles import get_profile
    from engine.quant.profiles.avx2_u8s8 import host_u8s8_kernel, pair_saturation_correction
    rng = np.random.default_rng(seed)
    c, n, k = int(rng.integers(2, 9)), 4, 3
    x = rng.integers(120, 256, (c, 8, 9)).astype(np.uint8)
    w = (rng.choice([-1, 1], (n, c, k, k)) * rng.integers(60, 128, (n, c, k, k))).astype(np.int8)
    xs, ws, xz, yz = 0.02, np.full(n, 0.01, np.float32), int(rng.integers(0, 40)), 128
    b = rng.integers(-5000, 5000, n).astype(np.int32)
    acc = conv_int_naive(x.astype(np.int64) - xz, w, b, 1, 1)
    ys = float(np.float32(np.abs(acc).max() * xs * 0.01 / 120))
    sat = acc + pair_saturation_correction(x, xz, w, 1, 1)
    got = _qlinearconv(x, xs, xz, w, ws, ys, yz, b, k, 1, 1, signed_w=True)
    ref, _ = asym.requantize_output(sat, asym.conv_output_scales(xs, ws, ys), yz)
    exact, _ = asym.requantize_output(acc, asym.conv_output_scales(xs, ws, ys), yz)
    if host_u8s8_kernel() == "avx2":
        assert np.array_equal(ref, got) and not np.array_equal(exact, got)
        assert get_profile("avx2_u8s8").host_mismatch() is None
    else:
        assert host_u8s8_kernel() == "vnni"
        assert np.array_equal(exact, got) and not np.array_equal(ref, got)
        assert "VNNI" in get_profile("avx2_u8s8").host_mismatch()


@pytest.mark.parametrize("seed", SEEDS)
def test_uint8_grid_equals_ort_quantizer(seed):
    """Scale and zero point of a calibrated range: ORT's own quantizer (quant_utils.compute_scale_zp)."""
    from onnxruntime.quantization.quant_utils import compute_scale_zp
    rng = np.random.default_rng(seed)
    lo, hi = -float(rng.exponential(2.0)) * (seed % 3 != 0), float(rng.exponential(10.0))
    zp, scale = compute_scale_zp(np.array(lo, np.float32), np.array(hi, np.float32), np.array(0, np.uint8),
                                 np.array(255, np.uint8))
    assert asym.asym_params(float(np.float32(lo)), float(np.float32(hi))) == (float(scale), int(zp))


def test_convinteger_with_int8_weights_does_not_saturate():
    """ConvInteger (the head convs) runs int8 weights as MLAS's A operand: exact int32, unlike QLinearConv
    on AVX2 without VNNI."""
    from engine.quant.profiles.avx2_u8s8 import host_u8s8_kernel
    from onnx import TensorProto as T, helper as h
    x = np.full((1, 8, 4, 4), 255, np.uint8)
    for wv in (127, -127):
        sess = _session([h.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["acc"])],
                        [_vi("x", T.UINT8)], [_vi("acc", T.INT32)],
                        {"w": np.full((2, 8, 1, 1), wv, np.int8), "xz": np.uint8(0), "wz": np.int8(0)})
        assert sess.run(None, {"x": x})[0][0, 0, 0, 0] == 255 * wv * 8
        w = np.full((2, 8, 1, 1), wv, np.int8)
        conv = _qlinearconv(x[0], 1.0, 0, w, np.ones(2, np.float32), 2 ** 12, 128, np.zeros(2, np.int32), 1, 1, 0,
                            signed_w=True)
        if host_u8s8_kernel() == "avx2":
            assert conv[0, 0, 0] == 128 + np.sign(wv) * 32                # QLinearConv: saturated pairs
        else:
            assert host_u8s8_kernel() == "vnni"
            assert conv[0, 0, 0] == 128 + np.sign(wv) * 63                # VNNI: exact 259080 / 4096, rounded
