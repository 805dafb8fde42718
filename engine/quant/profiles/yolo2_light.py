"""`yolo2_light`: the INT path of AlexeyAB/yolo2_light (`yolov2_forward_network_q_old`), on our scales.

From /work/shared/docs/darknet-semantics.md C.4 (yolo2_light src/yolov2_forward_network_quantized.c):
* activations int8 symmetric, quantized by truncation: q = clamp(trunc(x * m), +-127), m = 1/scale;
* conv: int8 x int8 summed in int32, then `acc16 = clamp(trunc(acc / 32), +-32767)` (int16 store),
  `q = trunc(acc16 * out_mult)` with the float `out_mult = 32 * s_in * s_w / s_out`, then
  `q = trunc(q + b / s_out)` (a float bias in output units), leaky as `q > 0 ? q : q / 10` (C integer
  division, toward zero), saturated to +-127;
* weights per tensor, power-of-two multiplier, truncated (C.1: the `yolo2_light` weight scheme);
* layer 0, linear convs (the heads) and grouped convs run in float, as in yolo2_light;
* route concatenates the int8 codes without rescaling (the output takes the first input's scale);
* maxpool int8 max with -128 padding; upsample/shortcut/reorg (not in yolo2_light's INT path) follow
  the qwidgets rules.
"""
from __future__ import annotations

import numpy as np

from engine.layers.activations import activate
from engine.layers.route import route_slices
from engine.quant.intops import conv_int
from engine.quant.profiles.qwidgets import QwidgetsProfile
from engine.quant.qtensor import QMAX, QTensor

R_MULT = 32


class Yolo2LightProfile(QwidgetsProfile):
    name = "yolo2_light"
    title = "yolo2_light INT path (int16 intermediate, truncation)"
    int32_heads = False
    rules = {
        "activations": "int8 symmetric [-127, 127], per tensor, quantized by truncation",
        "weights": "int8, per tensor, power-of-two multiplier, truncated (yolo2_light C.1)",
        "accumulator": "int32, then trunc(acc / 32) saturated to int16",
        "requantization": "float out_mult = 32*s_in*s_w/s_out on the int16 value, truncation; float bias added after",
        "rounding": "truncation toward zero everywhere",
        "leaky": "q > 0 ? q : q / 10 in integers (toward zero), after requantization",
        "route/concat": "int8 codes concatenated without rescaling (first input's scale)",
        "shortcut": "qwidgets rule (not in yolo2_light's INT path)",
        "upsample": "qwidgets rule (not in yolo2_light's INT path)",
        "maxpool": "int8 max, -128 padding",
        "heads": "layer 0 and linear convs (heads) run in float",
        "source": "darknet-semantics.md C.2-C.4 (AlexeyAB/yolo2_light yolov2_forward_network_quantized.c)",
    }

    def weight_choice(self, calibrator, per_channel):
        return "yolo2_light", False

    def has_int_path(self, kind: str) -> bool:
        return kind in ("convolutional", "maxpool", "route", "upsample", "reorg", "reorg3d", "dropout", "shortcut")

    def runs_float(self, layer) -> bool:
        return layer.kind == "convolutional" and (layer.index == 0 or layer.activation != "leaky" or layer.groups != 1)

    def quantize(self, x, scale, zero_point=0):
        v = np.trunc(np.multiply(x, np.float32(1.0 / scale), dtype=np.float32))
        sat = int(np.count_nonzero(np.abs(v) > QMAX))
        return QTensor(np.clip(v, -QMAX, QMAX).astype(np.int8), scale), sat

    def run(self, layer, xs, lq, qmodel, rec):
        if layer.kind == "convolutional":
            return self._conv(layer, xs[0], lq, qmodel.scales[str(layer.index)], rec)
        if layer.kind == "route":
            slices = route_slices(layer.in_shapes, layer.groups, layer.group_id)
            parts = [x.q[s] for x, s in zip(xs, slices)]
            return QTensor(np.concatenate(parts, axis=0) if len(parts) > 1 else np.ascontiguousarray(parts[0]),
                           xs[0].scale)
        return super().run(layer, xs, lq, qmodel, rec)

    def hybrid(self, layer, x, lq, qmodel, rec):
        """yolo2_light's CPU path (C.3): the float input truncated to int8, int32 sums, trunc(/32) to int16,
        dequantized with the float 32 * s_in * s_w, float bias, float activation."""
        if layer.kind != "convolutional" or layer.groups != 1:
            return super().hybrid(layer, x, lq, qmodel, rec)
        xq, sat = self.quantize(x, lq.in_scale)
        rec["input_saturated"] = sat
        acc = conv_int(xq.q, lq.w_f, np.zeros(lq.w_q.shape[0], np.int32), layer.size, layer.stride, layer.padding)
        rec["acc_min"], rec["acc_max"] = int(acc.min()), int(acc.max())
        acc16 = np.clip(np.trunc(acc / R_MULT), -32767, 32767).astype(np.float32)
        y = acc16 * np.float32(R_MULT * lq.in_scale * float(np.asarray(lq.w_scale).ravel()[0]))
        y += (lq.b_q.astype(np.float64) * lq.acc_scale).astype(np.float32).reshape(-1, 1, 1)
        rec["saturated"], rec["total"] = 0, y.size
        return activate(y, layer.activation)

    def _conv(self, layer, x, lq, out_scale, rec):
        acc = conv_int(x.q, lq.w_f, np.zeros(lq.w_q.shape[0], np.int32), layer.size, layer.stride, layer.padding)
        rec["acc_min"], rec["acc_max"] = int(acc.min()), int(acc.max())
        acc16 = np.clip(np.trunc(acc / R_MULT), -32767, 32767).astype(np.float32)   # C: int / 32, toward zero
        s_w = float(np.asarray(lq.w_scale).ravel()[0])
        out_mult = np.float32(R_MULT * x.scale * s_w / out_scale)
        bias = (lq.b_q.astype(np.float64) * lq.acc_scale / out_scale).astype(np.float32).reshape(-1, 1, 1)
        q = np.trunc(np.multiply(acc16, out_mult, dtype=np.float32))
        q = np.trunc(np.add(q, bias, dtype=np.float32)).astype(np.int32)
        q = np.where(q > 0, q, -((-q) // 10))                                        # C q / 10 for q <= 0
        rec["saturated"] = int(np.count_nonzero(np.abs(q) > QMAX))
        rec["total"] = q.size
        return QTensor(np.clip(q, -QMAX, QMAX).astype(np.int8), out_scale)
