"""Bias correction (NNCF FastBiasCorrection style): remove the per-channel mean shift that int8
weights and int8 inputs add to each convolution's output, folded into the int32 bias.

For a conv with weights W (int8: W'), input x (quantized with its scale: x'), the mean over
positions of output channel n is, away from the borders, sum_c S[n, c] * mean(x[c]) + b with
S = W summed over the kernel window. The shift E[n] = sum_c (S'[n, c] mean(x'[c]) - S[n, c]
mean(x[c])) is measured on the calibration images' FLOAT activations (the layer alone, as NNCF
does) and subtracted from the bias: b_q -= round(E / (s_in * s_w)). One FLOAT pass over the
images plus one quantize per conv input: well under the cost of a second FLOAT pass, and no FLOAT
pass at all when the calibration pass kept its outputs (engine/calib/floats.py).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from engine.calib.collect import image_list, network_input
from engine.calib.floats import FloatOutputs
from engine.errors import ArgumentError
from engine.quant.qmodel import LayerQuant, QuantizedModel, input_id
from engine.quant.profiles import get_profile
from engine.quant.qtensor import QMAX
from engine.quant.weights import fused_params


def _channel_means(x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0], -1).astype(np.float64).mean(axis=1) if x.ndim == 3 else x.astype(np.float64).ravel()


def fake_quantized(x: np.ndarray, scale: float) -> np.ndarray:
    """dequantize(quantize(x, scale)) bit for bit, in four in-place float32 passes: clipping before
    rounding gives the same integers, and float32(q) * float32(scale) is what dequantize computes."""
    v = np.divide(x, np.float32(scale), dtype=np.float32)
    np.clip(v, -QMAX, QMAX, out=v)
    np.rint(v, out=v)
    v *= np.float32(scale)
    return v


def tap_sums(w: np.ndarray, dtype) -> np.ndarray:
    """(n, C) sums over the kernel window of conv weights (n, C, k, k) (connected weights (n, C): themselves)
    in `dtype`, a running sum over the k*k taps: int8 weights summed exactly in int32 (times the weight
    scale: the sum of the dequantized weights the device multiplies with), float32 ones in float64."""
    if w.ndim != 4:
        return w.reshape(w.shape[0], -1).astype(dtype)
    v = w.reshape(w.shape[0] * w.shape[1], -1)
    acc = v[:, 0].astype(dtype)
    for j in range(1, v.shape[1]):
        acc += v[:, j]
    return acc.reshape(w.shape[0], w.shape[1])


def _float_pass(model, forward, items, resize):
    for item in items:
        x = network_input(model, item, resize)
        outs = forward(x)
        yield {**dict(enumerate(outs)), -1: x}


def bias_correction(model, qmodel: QuantizedModel, images: Sequence | None = None, resize: str = "letterbox",
                    floats: FloatOutputs | None = None) -> QuantizedModel:
    """A copy of `qmodel` with the int32 biases of every conv (groups 1) / connected layer corrected.
    The FLOAT inputs come from `floats` (kept by the calibration pass, if it kept every image) or a
    FLOAT pass over `images`. The per-layer shifts (in output units) are kept in meta["bias_correction"]."""
    from engine.quant.executor import equalized_for, float_forward
    forward = float_forward(model, qmodel)     # a cross-layer-equalized model's own float activations
    model = equalized_for(model, qmodel)
    targets = [i for i, lq in qmodel.layers.items()
               if model.layers[i].kind == "connected" or getattr(model.layers[i], "groups", 1) == 1]
    sums: dict[int, list[np.ndarray]] = {i: [0.0, 0.0] for i in targets}
    if floats is not None and floats.complete and len(floats):
        per_image = floats.images                       # {producer: FLOAT output}, -1 = the image
    elif images is not None:
        per_image = _float_pass(model, forward, image_list(images), resize)
    else:
        raise ArgumentError("bias_correction needs the calibration images (images=...) or the FLOAT inputs the "
                            "calibration pass kept (floats=...)")
    profile = get_profile(qmodel.profile)       # the input grid the int8 layer really reads (zero points too)
    from engine.kernels.threads import own_threads, parallel_items
    count = 0
    for outs in per_image:
        count += 1

        def one(_part: int, k: int, outs=outs) -> None:     # one target per work item: same sums in any order
            i = targets[k]
            xin = outs[model.layers[i].inputs[0]]
            nid = input_id(model.layers[i])
            if profile.name == "qwidgets":
                xq = fake_quantized(xin, qmodel.scales[nid])
            else:
                q, _ = profile.quantize(xin, qmodel.scales[nid], int(qmodel.zero_points.get(nid, 0)))
                xq = q.dequantize()
            sums[i][0] = sums[i][0] + _channel_means(xin)
            sums[i][1] = sums[i][1] + _channel_means(xq)

        with own_threads():
            parallel_items(len(targets), one)
    twin = qmodel.copy()
    shifts = {}
    weight_sums: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def sums_of(_part: int, k: int) -> None:      # one target per work item
        i = targets[k]
        lq = qmodel.layers[i]
        w_scale = np.broadcast_to(np.asarray(lq.w_scale, np.float64), (lq.w_q.shape[0],))
        weight_sums[i] = (tap_sums(fused_params(model, i)[0], np.float64),
                          tap_sums(lq.w_q, np.int32) * w_scale[:, None])

    with own_threads():
        parallel_items(len(targets), sums_of)
    for i in targets:
        lq = qmodel.layers[i]
        s_f, s_q = weight_sums[i]
        m_f, m_q = sums[i][0] / count, sums[i][1] / count
        e = s_q @ m_q - s_f @ m_f
        b_q = np.clip(lq.b_q.astype(np.int64) - np.rint(e / lq.acc_scale).astype(np.int64),
                      -(2 ** 31) + 1, 2 ** 31 - 1).astype(np.int32)
        twin.layers[i] = LayerQuant(lq.w_q, lq.w_scale, b_q, lq.in_scale, lq.scheme)
        shifts[str(i)] = float(np.abs(e).mean())
    twin.meta["bias_correction"] = shifts
    return twin
