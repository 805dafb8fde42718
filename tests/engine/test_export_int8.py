"""`export --format onnx-int8`: ONNX Runtime's integer kernels give, layer by layer, exactly our INT executor's
numbers under the `onnxruntime` profile (and `avx2_u8s8` on an AVX2 host without VNNI; on a VNNI host, as this
one, the AVX2 device is emulated in test_profiles_avx2_device.py): 0 mismatched elements."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import engine  # noqa: E402
from helpers import CFG_DIR, IMAGES, resized_cfg  # noqa: E402

from engine.calib.collect import collect  # noqa: E402
from engine.errors import EngineError, UnsupportedError  # noqa: E402
from engine.export.onnx_int8 import build_int8, export_int8, run_ort  # noqa: E402
from engine.quant.executor import Executor  # noqa: E402
from engine.quant.profiles.avx2_u8s8 import host_u8s8_kernel
from engine.quant.qmodel import quantize_model  # noqa: E402

PHOTOS = sorted(IMAGES.glob("*.jpg"))


@pytest.fixture(scope="module")
def tiny_ort(tiny, tiny_stats):
    return quantize_model(tiny, tiny_stats, "minmax", per_channel=True, profile="onnxruntime")


def _mismatches(model, qm, proto, x, optimize=True) -> dict[str, int]:
    ours = Executor(model, qm, "int").forward(x)
    got = run_ort(proto, np.ascontiguousarray(x), optimize=optimize)
    assert got, "no outputs"
    return {n: int(np.count_nonzero(ours[int(n[5:])] != y)) + (ours[int(n[5:])].shape != y.shape) * 10 ** 9
            for n, y in got.items()}


def test_yolov3_tiny_every_layer_equals_ort_bit_for_bit(tiny, tiny_ort, tmp_path):
    import onnx
    path = export_int8(tiny, tiny_ort, tmp_path / "tiny-int8.onnx", all_outputs=True)
    proto = onnx.load(str(path))
    convs = [n for n in proto.graph.node if n.op_type == "QLinearConv"]
    heads = [n for n in proto.graph.node if n.op_type == "ConvInteger"]     # the two convs feeding [yolo]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert len(convs) == 11 and all(inits[n.input[3]].dtype == np.uint8 for n in convs)
    assert len(heads) == 2 and all(inits[n.input[1]].dtype == np.uint8 for n in heads)
    assert not [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert sum(n.op_type == "QLinearLeakyRelu" for n in proto.graph.node) == 11
    assert sum(n.op_type == "QLinearConcat" for n in proto.graph.node) == 1
    expected = [f"layer{i}" for i, l in enumerate(tiny.layers) if l.kind != "yolo"]
    assert [o.name for o in proto.graph.output] == expected
    for k, x in enumerate([tiny.preprocess(p).x for p in PHOTOS] + [tiny.preprocess(PHOTOS[1]).x[:, :, ::-1]]):
        bad = _mismatches(tiny, tiny_ort, str(path), x, optimize=k % 2 == 0)
        assert set(bad) == set(expected) and not any(bad.values()), bad


def test_avx2_u8s8_profile_models_int16_saturation_bit_for_bit(tiny, tiny_stats):
    qm = quantize_model(tiny, tiny_stats, "minmax", per_channel=True, profile="avx2_u8s8")
    proto = build_int8(tiny, qm, all_outputs=True)
    weights = {t.name: t.data_type for t in proto.graph.initializer}
    assert {weights[n.input[3]] for n in proto.graph.node if n.op_type == "QLinearConv"} == {3}   # INT8
    assert {weights[n.input[1]] for n in proto.graph.node if n.op_type == "ConvInteger"} == {3}
    x = tiny.preprocess(PHOTOS[0]).x
    exact_qm = quantize_model(tiny, tiny_stats, "minmax", per_channel=True, profile="onnxruntime")
    # the saturation is real: the same weights without it (the onnxruntime profile's exact sums) differ
    exact, sat = Executor(tiny, exact_qm, "int").forward(x), Executor(tiny, qm, "int").forward(x)
    assert np.count_nonzero(exact[2] != sat[2]) > 100
    # which of the two this host's ORT computes depends on its CPU: each branch checks ORT bit for bit
    if host_u8s8_kernel() == "avx2":
        assert not any(_mismatches(tiny, qm, proto, x).values())
    else:        # VNNI (vpdpbusd): exact int32 dot products, as the onnxruntime profile's
        assert host_u8s8_kernel() == "vnni"
        assert not any(_mismatches(tiny, exact_qm, proto, x).values())
        assert all(_mismatches(tiny, qm, proto, x).values())


def test_reduce_range_profile_has_7bit_weights_and_no_saturation(tiny, tiny_stats):
    qm = quantize_model(tiny, tiny_stats, "minmax", per_channel=True, profile="ort_reduce_range")
    assert all(int(np.abs(lq.w_q).max()) == 63 for lq in qm.layers.values())
    from engine.quant.profiles.avx2_u8s8 import pair_saturation_correction
    assert all(pair_saturation_correction(np.full((lq.w_q.shape[1], 4, 4), 255, np.uint8), 0, lq.w_q, 1, 0)
               is None for lq in qm.layers.values() if lq.w_q.shape[2] == 1)
    proto = build_int8(tiny, qm, all_outputs=True)
    assert not any(_mismatches(tiny, qm, proto, tiny.preprocess(PHOTOS[3]).x).values())


@pytest.mark.parametrize("name, size, per_channel", [
    ("yolov4-tiny", 320, True), ("yolov2-tiny", 320, True), ("yolov3", 256, True),
    ("yolov3-spp", 96, False), ("yolov2", 96, False), ("yolov4-tiny-3l", 128, False)])
def test_random_weight_models_equal_ort_layer_by_layer(name, size, per_channel, tmp_path):
    """yolov4-tiny: route groups; yolov2-tiny: stride-1 maxpool, [region]; yolov3: 23 QLinearAdd shortcuts;
    yolov3-spp: maxpools 5/9/13 at stride 1 (pads 2/4/6) and their 4-input Concat; yolov2: [reorg] and a route of two
    grids; yolov4-tiny-3l: three heads; the last three per tensor."""
    model = engine.load(resized_cfg(CFG_DIR / f"{name}.cfg", size, tmp_path), random_weights=7)
    qm = quantize_model(model, collect(model, PHOTOS[:2], progress=False), "minmax", per_channel=per_channel,
                        profile="onnxruntime")
    proto = build_int8(model, qm, all_outputs=True)
    bad = _mismatches(model, qm, proto, model.preprocess(PHOTOS[2]).x)
    assert len(bad) == sum(l.kind not in ("yolo", "region") for l in model.layers) and not any(bad.values()), bad


def test_export_refuses_other_profiles_and_float_islands(tiny, tiny_q, tmp_path):
    with pytest.raises(EngineError, match="profile 'qwidgets': quantize with --profile onnxruntime"):
        build_int8(tiny, tiny_q)
    model = engine.load(resized_cfg(CFG_DIR / "yolov3-tiny-prn.cfg", 160, tmp_path), random_weights=1)
    qm = quantize_model(model, collect(model, PHOTOS[:1], progress=False), "minmax", profile="onnxruntime")
    with pytest.raises(UnsupportedError, match=r"yolov3-tiny-prn.cfg:\d+ \[shortcut\] \(layer 13\): only a linear shortcut"
                       r".*this one has activation 'leaky', inputs \(512, 5, 5\) and \(512, 5, 5\), weights 1 and 1$"):
        build_int8(model, qm)


def test_a_float_layer_of_mixed_precision_is_refused_as_such(tmp_path):
    # a conv kept float by float_layers was refused with "runs in float under profile 'onnxruntime'; the integer
    # export supports convolutional, ...": a [convolutional] refused as if the export could not hold convolutions
    model = engine.load(resized_cfg(CFG_DIR / "yolov3-tiny.cfg", 96, tmp_path), random_weights=2)
    qm = quantize_model(model, collect(model, PHOTOS[:1], progress=False), "minmax", profile="onnxruntime",
                        float_layers=[4, 2])
    with pytest.raises(UnsupportedError, match=r"yolov3-tiny.cfg:\d+ \[convolutional\] \(layer 2\): kept in float by "
                                               r"the quantized model's float layers \[2, 4\] \(mixed precision\)"):
        build_int8(model, qm)


def test_a_float_avgpool_or_softmax_is_refused_not_exported_inexact(tmp_path):
    # darknet19 (avgpool + softmax, float under the onnxruntime profile) used to be exported with float ops that
    # ONNX Runtime rounds otherwise than the executor (~370 avgpool values off by 2.4e-7): not the bit-exact file
    model = engine.load(resized_cfg(CFG_DIR / "darknet19.cfg", 96, tmp_path), random_weights=2)
    qm = quantize_model(model, collect(model, PHOTOS[:1], progress=False), "minmax", profile="onnxruntime")
    with pytest.raises(UnsupportedError, match=r"darknet19.cfg:\d+ \[avgpool\] \(layer \d+\): runs in float"):
        build_int8(model, qm)


SMALL_CFG = """[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
filters=18
size=1
stride=1
pad=1
activation=linear

[yolo]
mask=0,1,2
anchors=10,14,  23,27,  37,58
classes=1
num=3
"""


def _tiny_filter(index: int, tmp_path):
    """SMALL_CFG with filter 0 of layer `index` given tiny weights and a bias of 1.0: at its calibrated input
    scale, per channel, the bias is 1.1 * 2**31 accumulator steps (a BN channel with gamma ~ 0 looks so)."""
    cfg = tmp_path / "small.cfg"
    cfg.write_text(SMALL_CFG)
    model = engine.load(cfg, random_weights=3)
    stats = collect(model, PHOTOS[:2], progress=False)
    in_scale = quantize_model(model, stats, "minmax", per_channel=True, profile="onnxruntime").layers[index].in_scale
    w = model.params[index]["weights"].copy()
    w[0] *= 127 / (1.1 * 2 ** 31 * in_scale) / np.abs(w[0]).max()
    b = model.params[index]["biases"].copy()
    b[0] = 1.0
    model.set_param(index, "weights", w)
    model.set_param(index, "biases", b)
    return model, quantize_model(model, collect(model, PHOTOS[:2], progress=False), "minmax", per_channel=True,
                                 profile="onnxruntime")


@pytest.mark.parametrize("index", [1, 2], ids=["qlinearconv", "convinteger_head"])
def test_an_int32_bias_at_its_limit_wraps_as_in_ort(index, tmp_path):
    """ORT adds acc + bias in int32 (MLAS's vpaddd, ConvInteger's int32 Add), which wraps; a bias at the
    int32 limit (saturated, or set by an int8 edit: check_int32 takes up to 2**31 - 1) wraps wherever
    acc > 0. The engine used to add them exactly: 56 values of layer 1 differed and 1008 of the head's
    (740 when the head conv has the bias); it now wraps as the device does."""
    from dataclasses import replace
    cfg = tmp_path / "small.cfg"
    cfg.write_text(SMALL_CFG)
    model = engine.load(cfg, random_weights=3)
    qm = quantize_model(model, collect(model, PHOTOS[:2], progress=False), "minmax", per_channel=True,
                        profile="onnxruntime")
    b_q = qm.layers[index].b_q.copy()
    b_q[0] = 2 ** 31 - 1
    qm.layers[index] = replace(qm.layers[index], b_q=b_q)
    bad = _mismatches(model, qm, build_int8(model, qm, all_outputs=True), model.preprocess(PHOTOS[2]).x)
    assert not any(bad.values()), bad


@pytest.mark.parametrize("index", [1, 2], ids=["qlinearconv", "convinteger_head"])
def test_a_bias_beyond_int32_grows_its_weight_scale_as_orts_quantizer_does(index, tmp_path):
    # per channel, filter 0's bias of 1.0 was 1.1 * 2**31 steps: saturated to 2**31 - 1, the channel lost its
    # bias (0.86 instead of 1.0 on average, and acc + bias wrapped on the device). ORT's quantizer grows that
    # weight scale until the bias fits (1.0001 * 2|b| / (2**32 - 2)); the profile now does the same
    model, qm = _tiny_filter(index, tmp_path)
    lq = qm.layers[index]
    assert 2 ** 31 / 1.0002 < abs(int(lq.b_q[0])) < 2 ** 31 / 1.00009      # saturated: 2**31 - 1
    assert lq.in_scale * lq.w_scale[0] == pytest.approx(1.0001 * 2 / (2 ** 32 - 2), rel=1e-9)
    assert int(np.abs(lq.w_q[0]).max()) < 127 and int(np.abs(lq.w_q[1]).max()) == 127   # only filter 0 moved
    x = model.preprocess(PHOTOS[2]).x
    ours, ref = Executor(model, qm, "int").forward(x)[index][0], model.forward(x)[index][0]
    steps = qm.scales[str(index)] if index == 1 else 1e-3
    assert np.abs(ours - ref).max() <= 2 * steps
    bad = _mismatches(model, qm, build_int8(model, qm, all_outputs=True), x)
    assert not any(bad.values()), bad


@pytest.mark.parametrize("old, new, message", [
    ("stride=2\npad=1\nactivation=leaky", "stride=2\npad=1\nactivation=mish",
     r"small.cfg:\d+ \[convolutional\] \(layer 1\): activation 'mish' has no integer ONNX kernel"),
    ("activation=linear", "activation=leaky",
     r"small.cfg:\d+ \[convolutional\] \(layer 2\): a head conv with activation 'leaky' is not exported")])
def test_a_conv_activation_without_integer_kernel_is_refused_naming_the_layer(old, new, message, tmp_path):
    cfg = tmp_path / "small.cfg"
    cfg.write_text(SMALL_CFG.replace(old, new))
    model = engine.load(cfg, random_weights=1)
    qm = quantize_model(model, collect(model, PHOTOS[:1], progress=False), "minmax", profile="onnxruntime")
    with pytest.raises(UnsupportedError, match=message):
        build_int8(model, qm)


def test_a_float_edit_keeps_the_profiles_weight_range_and_ort_exactness(tmp_path):
    # a float weight edit in a Session requantized the layer to [-127, 127] whatever the profile: under
    # `ort_reduce_range` (7-bit weights, "no pair can saturate", no host mismatch) the edited layer had 8-bit
    # weights, whose pairs the INT run saturates at int16 as on AVX2 while a VNNI host's ORT sums them exactly
    from engine import Session
    model = engine.load(resized_cfg(CFG_DIR / "yolov3-tiny.cfg", 96, tmp_path), random_weights=1)
    qm = quantize_model(model, collect(model, PHOTOS[:1], progress=False), "minmax", per_channel=True,
                        profile="ort_reduce_range")
    session = Session(model, qm, mode="int")
    session.scale_filter(2, 0, 1.5, target="float")
    edited = session.qmodel.layers[2]
    assert int(np.abs(edited.w_q).max()) == 63
    proto = build_int8(session.model, session.qmodel, all_outputs=True)
    bad = _mismatches(session.model, session.qmodel, proto, model.preprocess(PHOTOS[2]).x)
    if host_u8s8_kernel() in ("vnni", "avx2"):       # 7-bit weights: exact on both kinds of x86 kernel
        assert not any(bad.values()), bad


@pytest.mark.parametrize("how", ["rescaled", "session"])
@pytest.mark.parametrize("index", [1, 2], ids=["qlinearconv", "convinteger_head"])
def test_a_changed_input_scale_grows_weight_scales_for_the_biases_as_quantize_does(index, how, tmp_path):
    # rescaled() (a quantized model with some scales replaced) and a Session's set_scale re-derived the int32
    # biases of the layers reading the changed tensor without the profile's bias rule: at half the input scale,
    # filter 0's bias of 1.0 needed 2 * 2**31 / 1.0001 steps, was saturated to 2**31 - 1 and carried 0.50 instead
    # of 1.0 (on ORT as in our INT run: both add the stored bias). quantize_model grows that weight scale until
    # the bias fits, as ORT's quantizer does; so do they now
    from engine import Session
    from engine.quant.qmodel import rescaled
    model, qm = _tiny_filter(index, tmp_path)
    src, before = str(index - 1), qm.layers[index]
    half = qm.scales[src] / 2
    if how == "rescaled":
        twin = rescaled(model, qm, {src: half})
    else:
        session = Session(model, qm, mode="int")
        session.set_scale(src, half)
        twin = session.qmodel
    lq = twin.layers[index]
    assert lq.in_scale == half
    assert lq.in_scale * lq.w_scale[0] == pytest.approx(1.0001 * 2 / (2 ** 32 - 2), rel=1e-9)
    assert float(lq.b_q[0]) * lq.in_scale * lq.w_scale[0] == pytest.approx(1.0, rel=1e-6)    # the bias kept
    assert int(np.abs(lq.w_q[0]).max()) < int(np.abs(before.w_q[0]).max())    # filter 0 requantized coarser
    np.testing.assert_array_equal(lq.w_q[1:], before.w_q[1:])                  # the others untouched
    np.testing.assert_array_equal(lq.w_scale[1:], before.w_scale[1:])
    bad = _mismatches(model, twin, build_int8(model, twin, all_outputs=True), model.preprocess(PHOTOS[2]).x)
    assert not any(bad.values()), bad
