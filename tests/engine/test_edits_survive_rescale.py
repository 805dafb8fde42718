"""An int8 edit, then a change of the layer's input scale (Session.set_scale), on the real yolov3-tiny under every
device profile: the edit is still there afterwards (in the quantized model, in an INT run against a naive integer
reference of the edited layer, after undo / redo and after save + reload), or the rescale is refused with one
error naming the layer and why. set_scale used to re-derive the readers' int32 biases from the float biases (an
int8 bias edit was silently replaced, on every profile) and, under ONNX Runtime's profiles, to requantize a filter
whose bias had to grow its weight scale from the float weights (an int8 weight edit silently gone)."""
from __future__ import annotations

import numpy as np
import pytest

import engine
from engine import Session
from engine.calib.collect import collect
from engine.errors import EditError
from engine.quant.profiles import PROFILES
from engine.quant.qmodel import QuantizedModel, quantize_model
from engine.quant.weights import fused_params, quantize_bias
from helpers import IMAGES, TINY_CFG, TINY_WEIGHTS

HEAD = 15               # yolov3-tiny's 1x1 linear conv feeding [yolo] 16; it reads conv 14 alone
ORT_FAMILY = ("onnxruntime", "avx2_u8s8", "ort_reduce_range")      # their bias rule may grow a weight scale
PHOTO = IMAGES / "dog.jpg"


@pytest.fixture(scope="module")
def tiny1():
    """yolov3-tiny and its calibration on one photo (this module edits only Session copies)."""
    model = engine.load(TINY_CFG, weights=TINY_WEIGHTS)
    return model, collect(model, [PHOTO], progress=False)


def _layer_for(profile: str) -> int:
    # yolo2_light runs linear convs (the head convs) in float: its edits are tested on conv 13 (leaky, int8)
    return 13 if profile == "yolo2_light" else HEAD


def _head_reference(x, lq, profile: str) -> np.ndarray:
    """Layer 15 (1x1, linear, a head conv) from its int8/uint8 input codes, naively: int64 sums of
    (x - zero point) * w_q plus b_q, dequantized as the profile hands a head its int32 sums."""
    xc = x.q.astype(np.int64) - int(x.zero_point)
    u = np.einsum("nc,chw->nhw", lq.w_q.reshape(lq.w_q.shape[0], -1).astype(np.int64), xc)
    u = u + lq.b_q.astype(np.int64)[:, None, None]
    ws = np.broadcast_to(lq.w_scale, (lq.w_q.shape[0],)).astype(np.float64)
    if profile in ORT_FAMILY:      # ConvInteger + int32 Add (wraps) + Cast + Mul by float32 x_scale * w_scale
        u = (u + 2 ** 31) % 2 ** 32 - 2 ** 31
        scale = np.multiply(np.float32(x.scale), ws.astype(np.float32), dtype=np.float32)
        return u.astype(np.float32) * scale[:, None, None]
    return (u.astype(np.float64) * (x.scale * ws)[:, None, None]).astype(np.float32)


def _yolo2_light_reference(x, lq, out_scale: float) -> np.ndarray:
    """Layer 13 (1x1, leaky) under yolo2_light's rules (darknet-semantics.md C.4), naively: int64 sums, trunc(/32)
    to int16, float32 multiplier and float bias in output units with truncation, integer leaky q / 10, +-127."""
    acc = np.einsum("nc,chw->nhw", lq.w_q.reshape(lq.w_q.shape[0], -1).astype(np.int64), x.q.astype(np.int64))
    acc16 = np.clip(np.trunc(acc / 32), -32767, 32767).astype(np.float32)
    s_w = float(np.asarray(lq.w_scale).ravel()[0])
    mult = np.float32(32 * x.scale * s_w / out_scale)
    bias = (lq.b_q.astype(np.float64) * lq.in_scale * s_w / out_scale).astype(np.float32)[:, None, None]
    q = np.trunc(np.trunc(acc16 * mult).astype(np.float32) + bias).astype(np.int64)
    q = np.where(q > 0, q, -((-q) // 10))
    return np.clip(q, -127, 127).astype(np.int8)


@pytest.mark.parametrize("profile", sorted(PROFILES.names()))
def test_int8_weight_and_bias_edits_survive_a_rescale_a_run_undo_redo_and_a_reload(profile, tiny1, tmp_path):
    model, stats = tiny1
    qm = quantize_model(model, stats, "minmax", per_channel=profile != "yolo2_light", profile=profile)
    s = Session(model, qm, "int", PHOTO)
    i = _layer_for(profile)
    src = str(i - 1)
    before, old = s.qmodel.layers[i], s.qmodel.scales[src]
    f = 3
    w_new = 40 if int(before.w_q[f, 0, 0, 0]) != 40 else -40
    b_new = int(before.b_q[f]) + 977 * 2            # an even number: its real value is exact at half the scale
    s.edit_weights(i, (f, 0, 0, 0), w_new, target="int8")
    s.edit_weights(i, (f,), b_new, param="biases", target="int8")
    s.set_scale(src, old / 2)
    lq = s.qmodel.layers[i]
    assert lq.in_scale == old / 2
    np.testing.assert_array_equal(lq.w_scale, before.w_scale)                 # no weight scale had to grow
    assert int(lq.w_q[f, 0, 0, 0]) == w_new                                    # the weight edit kept
    assert int(lq.b_q[f]) == b_new * 2                                         # the bias edit: its real value kept
    others = np.arange(lq.b_q.size) != f                                       # the others: from the float biases
    np.testing.assert_array_equal(lq.b_q[others],
                                  quantize_bias(fused_params(model, i)[1], old / 2, lq.w_scale)[others])
    s.run()
    out = s.output(i).copy()
    if i == HEAD:
        np.testing.assert_array_equal(out, _head_reference(s.output_q(14), lq, profile))
    else:
        ref = _yolo2_light_reference(s.output_q(12), lq, s.qmodel.scales["13"])
        np.testing.assert_array_equal(s.output_q(i).q, ref)
    cross = s.cross(i)                                      # CROSS's int8 side is the edited, rescaled layer's
    assert cross.precision == "int8" and cross.other == "float"
    np.testing.assert_array_equal(cross.y, out)
    path = s.save_quantized(tmp_path / "edited.npz")
    again = Session(model, QuantizedModel.load(path), "int", PHOTO)
    again.run()
    np.testing.assert_array_equal(again.output(i), out)
    s.undo()                                                                   # the rescale
    assert s.qmodel.layers[i].b_q[f] == b_new and s.qmodel.scales[src] == old
    s.redo()
    assert int(s.qmodel.layers[i].b_q[f]) == b_new * 2
    for _ in range(3):
        s.undo()
    assert s.qmodel.layers[i] is before and s.qmodel.scales[src] == old


@pytest.mark.parametrize("profile", ORT_FAMILY)
def test_a_rescale_that_would_requantize_an_int8_edited_filter_from_the_float_weights_is_refused(profile, tiny1):
    # ORT's quantizer rule (fit_bias): at an input scale where a filter's int32 bias cannot hold its real bias, that
    # filter's weight scale grows and its weights are requantized from the float weights. An int8 edit in such a
    # filter cannot keep its value on the coarser grid, and was silently replaced by the float weights' codes
    model, stats = tiny1
    qm = quantize_model(model, stats, "minmax", per_channel=True, profile=profile)
    s = Session(model, qm, "int", PHOTO)
    lq0, old = s.qmodel.layers[HEAD], s.qmodel.scales["14"]
    b = fused_params(model, HEAD)[1]
    lowest = 1.0001 * 2 * np.abs(b.astype(np.float64)) / (2 ** 32 - 2) / lq0.w_scale   # below it, a filter grows
    f = int(np.argmax(lowest))
    tiny_scale = float(lowest[f]) / 2
    s.edit_weights(HEAD, (f, 0, 0, 0), 30 if int(lq0.w_q[f, 0, 0, 0]) != 30 else -30, target="int8")
    edited = s.qmodel.layers[HEAD]
    with pytest.raises(EditError, match=rf"\(layer {HEAD}\).* int8 weights of filter {f} differ from its float "
                                        r"weights"):
        s.set_scale("14", tiny_scale)
    assert s.qmodel.layers[HEAD] is edited and s.qmodel.scales["14"] == old and len(s.edits()) == 1
    # the scale the message gives keeps the edit
    with pytest.raises(EditError) as err:
        s.set_scale("14", tiny_scale)
    at_least = float(str(err.value).rsplit("at least ", 1)[1].split()[0].rstrip(".,)"))
    s.set_scale("14", at_least)
    assert int(s.qmodel.layers[HEAD].w_q[f, 0, 0, 0]) == int(edited.w_q[f, 0, 0, 0])
    s.undo()
    # without the int8 edit, the rescale follows the profile's rule: filter f requantized from the float weights
    s.undo()
    s.set_scale("14", tiny_scale)
    lq = s.qmodel.layers[HEAD]
    assert lq.w_scale[f] > lq0.w_scale[f]
    assert float(lq.b_q[f]) * lq.in_scale * lq.w_scale[f] == pytest.approx(float(b[f]), rel=1e-6)


def test_a_rescale_of_log2s_zero_sum_first_layer_is_not_taken_for_an_int8_edit(tiny1):
    # log2 rounds conv 0's weights so each filter's errors sum to about zero (round 13): its codes are not the
    # nearest ones, and the check for int8 edits read them as edits, refusing any rescale of the image where ORT's
    # rule grows conv 0's weight scale (per tensor: every filter) with "an int8 edit or a refinement" none made
    model, stats = tiny1
    qm = quantize_model(model, stats, "log2", per_channel=False, profile="onnxruntime")
    s = Session(model, qm, "int", PHOTO)
    lq0 = s.qmodel.layers[0]
    w, b = fused_params(model, 0)
    nearest = np.clip(np.rint(w.astype(np.float64) / lq0.w_scale), -127, 127)
    assert (lq0.w_q != nearest).any()               # zero_sum codes: else this test could not fail
    lowest = float((1.0001 * 2 * np.abs(b.astype(np.float64)) / (2 ** 32 - 2)).max() / lq0.w_scale[0])
    s.set_scale("input", lowest / 2)
    lq = s.qmodel.layers[0]
    assert lq.in_scale == lowest / 2 and lq.w_scale[0] > lq0.w_scale[0]
    assert float(np.abs(b).max()) == pytest.approx(float(np.abs(lq.b_q).max()) * lq.in_scale * lq.w_scale[0], rel=1e-6)
    s.undo()
    # an int8 edit of conv 0 is still protected
    f = 2
    s.edit_weights(0, (f, 0, 0, 0), 30 if int(lq0.w_q[f, 0, 0, 0]) != 30 else -30, target="int8")
    with pytest.raises(EditError, match=r"\(layer 0\).* int8 weights of filter 2 differ from its float weights"):
        s.set_scale("input", lowest / 2)


@pytest.mark.parametrize("profile", ["qwidgets", "onnxruntime"])
def test_a_float_edit_of_a_layer_with_int8_edits_is_refused_instead_of_replacing_them(profile, tiny1):
    # a float edit re-derives the layer's whole int8 weights and int32 biases from the float parameters: an int8
    # weight and bias edit made before (HYBRID/INT's default target) vanished while the journal still listed them
    model, stats = tiny1
    s = Session(model, quantize_model(model, stats, "minmax", per_channel=True, profile=profile), "int")
    s.edit_weights(2, (3, 0, 0, 0), 99, target="int8")
    s.edit_weights(2, (7,), 555, param="biases", target="int8")
    edited, params = s.qmodel.layers[2], s.model.params[2]
    with pytest.raises(EditError, match=r"layer 2 .*float weights: a float edit re-derives .* discard its 2 applied "
                                        r"int8 edits \(set weights\[\(3, 0, 0, 0\)\]; set biases\[\(7,\)\]\)"):
        s.edit_weights(2, (10, 0, 0, 0), 0.01, target="float")
    assert s.qmodel.layers[2] is edited and s.model.params[2] is params and len(s.edits()) == 2
    assert (int(edited.w_q[3, 0, 0, 0]), int(edited.b_q[7])) == (99, 555)
    s.undo()
    s.undo()
    s.edit_weights(2, (10, 0, 0, 0), 0.01, target="float")                 # no int8 edit left: the float edit goes in
    lq = s.qmodel.layers[2]
    w = fused_params(s.model, 2)[0][10, 0, 0, 0]                          # 0.01 times the BN fold
    assert int(lq.w_q[10, 0, 0, 0]) == int(np.clip(np.rint(w / lq.w_scale[10]), -127, 127))


def test_yolo2_light_edits_its_float_run_layers_on_the_float_weights(tiny1):
    # yolo2_light runs layer 0 and the linear convs in float, yet their int8 weights were the HYBRID/INT default
    # target: zero_filter(15, 0) changed an int8 array no run reads, and the head's output stayed the same
    model, stats = tiny1
    s = Session(model, quantize_model(model, stats, "minmax", profile="yolo2_light"), "int", PHOTO)
    assert (s.edit_target(15), s.edit_target(0), s.edit_target(13)) == ("float", "float", "int8")
    with pytest.raises(EditError, match=r"layer 15 \[convolutional\] int8 weights: the yolo2_light profile runs "
                                        r"this layer in float"):
        s.zero_filter(15, 0, target="int8")
    s.run()
    before = s.output(15).copy()
    e = s.zero_filter(15, 0)
    assert e.target == "float"
    s.run()
    after = s.output(15)
    bias = fused_params(s.model, 15)[1][0]                   # a zero filter leaves its bias (linear activation)
    np.testing.assert_array_equal(after[0], np.full_like(after[0], bias))
    np.testing.assert_array_equal(after[1:], before[1:])


def test_int8_weight_edits_stay_in_the_profiles_weight_range(tiny1):
    # ort_reduce_range's weights are 7-bit ([-63, 63]: no uint8 x int8 pair can saturate int16); an int8 edit
    # accepted any value in [-127, 127], so the edited model was no longer what the profile (and its export) claims
    model, stats = tiny1
    s = Session(model, quantize_model(model, stats, "minmax", per_channel=True, profile="ort_reduce_range"), "int")
    with pytest.raises(EditError, match=r"int8 values must be in \[-63, 63\] \(the ort_reduce_range profile's "
                                        r"7-bit weights\), got 0..100"):
        s.edit_weights(2, (3, 0, 0, 0), 100, target="int8")
    with pytest.raises(EditError, match=r"\[-63, 63\]"):
        s.scale_filter(2, 3, 10.0)
    assert len(s.edits()) == 0
    s.edit_weights(2, (3, 0, 0, 0), -63, target="int8")
    assert int(s.qmodel.layers[2].w_q[3, 0, 0, 0]) == -63
    plain = Session(model, quantize_model(model, stats, "minmax", per_channel=True), "int")
    plain.edit_weights(2, (3, 0, 0, 0), 100, target="int8")                  # 8-bit profiles: [-127, 127]
    assert int(plain.qmodel.layers[2].w_q[3, 0, 0, 0]) == 100


@pytest.fixture(scope="module")
def cle_q(tiny1):
    """yolov3-tiny quantized after cross-layer equalization (quantize --refine cle), calibrated on one photo."""
    from engine.quant.refine import attach_equalization, derived_forward, equalize
    model, _ = tiny1
    twin, spec = equalize(model, "weights")
    stats = collect(twin, [PHOTO], progress=False, forward=derived_forward(model, spec))
    return attach_equalization(quantize_model(twin, stats, "minmax", per_channel=True), spec, "weights"), twin


def test_a_rescale_of_a_cross_layer_equalized_model_rederives_the_equalized_biases(tiny1, cle_q):
    # set_scale re-derived the readers' int32 biases from the session's float model, not from the equalized twin
    # the quantized model was made from: conv 4's biases were off by up to 190531 steps after halving its input scale
    model, _ = tiny1
    qm, twin = cle_q
    s = Session(model, qm, "int", PHOTO)
    old = s.qmodel.scales["3"]
    s.set_scale("3", old / 2)
    lq = s.qmodel.layers[4]
    np.testing.assert_array_equal(lq.b_q, quantize_bias(fused_params(twin, 4)[1], old / 2, lq.w_scale))
    np.testing.assert_array_equal(lq.w_q, qm.layers[4].w_q)


def test_float_edits_are_refused_with_a_cross_layer_equalized_model(tiny1, cle_q):
    # its runs (FLOAT too) use the equalized twin the executor derived once: a float edit changed nothing in FLOAT
    # and requantized the layer from the unequalized weights in INT (every filter's scale wrong by its CLE factor)
    model, stats = tiny1
    qm, _ = cle_q
    for mode in ("float", "int"):
        s = Session(model, qm, mode, PHOTO)
        params = s.model.params[2]
        with pytest.raises(EditError, match=r"layer 2 \[convolutional\] float weights: the quantized model is "
                                            r"cross-layer equalized"):
            s.zero_filter(2, 0, target="float")
        assert s.model.params[2] is params and s.qmodel.layers[2] is not None and not s.edits()
    s = Session(model, quantize_model(model, stats, "minmax", per_channel=True), "int", PHOTO)
    s.zero_filter(2, 0, target="float")
    with pytest.raises(EditError, match=r"set_quantized: this session's float edits cannot carry over: the "
                                        r"quantized model is cross-layer equalized"):
        s.set_quantized(qm)
    assert s.qmodel.meta.get("equalization") is None and len(s.edits()) == 1


@pytest.mark.parametrize("profile", ["qwidgets", "qwidgets_asym"])
def test_a_rescale_that_would_saturate_an_edited_int32_bias_is_refused(profile, tiny1):
    # keeping an edited bias's real value at a smaller input scale needs a larger int32; where that leaves int32 the
    # profile saturates it (these profiles grow no weight scale), which would change the edit silently
    model, stats = tiny1
    s = Session(model, quantize_model(model, stats, "minmax", per_channel=True, profile=profile), "int")
    old = s.qmodel.scales["14"]
    s.edit_weights(HEAD, (5,), 2 ** 30, param="biases", target="int8")
    edited = s.qmodel.layers[HEAD]
    with pytest.raises(EditError, match=rf"\(layer {HEAD}\): at input scale {old / 4:g}, the int32 bias of filter 5, "
                                        r"set by an int8 edit .* would saturate it\. .* at least ") as err:
        s.set_scale("14", old / 4)                          # 2**30 * 4 steps: beyond int32
    assert s.qmodel.layers[HEAD] is edited and s.qmodel.scales["14"] == old and len(s.edits()) == 1
    at_least = float(str(err.value).rsplit("at least ", 1)[1])
    assert old / 2 < at_least < old / 1.9                   # 2**30 * 2 steps still fit (just)
    s.set_scale("14", at_least)
    lq = s.qmodel.layers[HEAD]
    assert float(lq.b_q[5]) * lq.acc_scale[5] == pytest.approx(2 ** 30 * float(edited.acc_scale[5]), rel=1e-9)
