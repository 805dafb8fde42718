"""`qwidgets_asym`: the engine's integer rules with uint8 activations and a zero point per tensor.

Why: a leaky output spans about [-0.1 T, T]; a symmetric int8 grid spends half its 255 codes on
[-T, 0]. With real = (q - zp) * scale, q in [0, 255], the grid covers [lo, hi] = the calibrated
range (any calibrator, with the calibration rules: T from the rule's histogram clips the top,
the tensor's own minimum (clipped at -T) the bottom), about 1.8x finer for leaky outputs.
Arithmetic (integer-exact, as the symmetric `qwidgets` path; naive references in
tests/engine/test_asym_calib.py):
* quantize: q = sat_[0,255](rint_half_even(x / scale) + zp);
* conv: exact int32 `sum w * (x - zp_in) + b` (b quantized in s_in * s_w), then the 15-bit
  fixed-point multiplier of `s_in * s_w / s_out` (and of `0.1 * ...` for negative sums: leaky
  folded, one rounding), + zp_out, saturated to [0, 255];
* maxpool (padding = code 0, the grid's minimum), upsample, reorg, dropout, a one-input route:
  codes moved, grid kept; a multi-input route: each input whose grid differs from the route's own
  is requantized `zp_out + rint((q - zp_in) * M)` with M the fixed-point `s_in / s_out`;
* heads: int32 accumulators dequantized (acc * s_in * s_w) for [yolo]/[region], as `qwidgets`;
* other activations and shortcuts: a float island (dequantize, float op, quantize).
"""
from __future__ import annotations

import math

import numpy as np

from engine.layers.activations import activate
from engine.layers.route import route_slices
from engine.quant import asym
from engine.quant.intops import band_buffer
from engine.quant.int_layers import bias_for, weight_scales
from engine.quant.profiles.base import Profile
from engine.quant.profiles.onnxruntime import OrtProfile, tensor_grid
from engine.quant.qtensor import QTensor, multiplier_value, quantize_multiplier

QLO, QHI = 0, 255
FOLDED = {"linear": None, "leaky": 0.1, "relu": 0.0}


def quantize_u8(x: np.ndarray, scale: float, zp: int) -> tuple[np.ndarray, int]:
    """float -> (uint8 codes, saturated count): rint_half_even(x / scale) + zp, saturated to [0, 255].
    In float32: the rounded quotient is an integer and adding zp is exact below 2**24 (past it, the sum
    saturates either way). NaN-ignoring extremes decide whether to count and clip (two reductions)."""
    v = np.divide(x, np.float32(scale), dtype=np.float32)
    np.rint(v, out=v)
    v += np.float32(zp)
    sat = 0
    if v.size and (np.fmin.reduce(v, axis=None) < QLO or np.fmax.reduce(v, axis=None) > QHI):
        sat = int(np.count_nonzero((v < QLO) | (v > QHI)))
        np.clip(v, QLO, QHI, out=v)
    return v.astype(np.uint8), sat


def fixed(real) -> np.ndarray:
    """Real multipliers as the exact float64 value of their 15-bit fixed-point form."""
    m, sh = quantize_multiplier(real)
    return multiplier_value(m, sh)


def requantize_u8(u: np.ndarray, f_pos: np.ndarray, f_neg: np.ndarray | None, zp: int) -> tuple[np.ndarray, int]:
    """Exact integer sums u (float64, (n, ...)) -> uint8: max(u*f_pos, u*f_neg) rounded half to even, + zp,
    saturated (f_neg None: linear; 0: relu). u*f is exact in float64 (|u| < 2**31, f has 15 bits)."""
    v = u * f_pos
    if f_neg is not None:
        np.maximum(v, u * f_neg, out=v)
    np.rint(v, out=v)
    v += zp
    sat = int(np.count_nonzero((v < QLO) | (v > QHI)))
    return np.clip(v, QLO, QHI).astype(np.uint8), sat


def requantize_u8_band(u: np.ndarray, f_pos: np.ndarray, f_neg: np.ndarray | None, zp: int, out: np.ndarray,
                       part: int, lo: np.ndarray, hi: np.ndarray) -> int:
    """`requantize_u8` of a band u (n, ...) into `out` (uint8, u's shape), computed in band buffers of
    thread `part` (no temporaries); returns the saturated count. The same float64 operations, so the
    same codes. lo, hi: u's per-channel extremes; the rule is monotone in u (f_pos, f_neg >= 0), so they
    tell whether anything saturates without a pass over the codes."""
    def code(a: np.ndarray) -> np.ndarray:
        f = f_pos.reshape(-1)
        v = a * f if f_neg is None else np.maximum(a * f, a * f_neg.reshape(-1))
        return np.rint(v) + zp

    v = band_buffer("rq-v", part, u.shape)
    np.multiply(u, f_pos, out=v)
    if f_neg is not None:
        np.maximum(v, np.multiply(u, f_neg, out=band_buffer("rq-t", part, u.shape)), out=v)
    np.rint(v, out=v)
    if not v.size or (code(lo).min() >= QLO and code(hi).max() <= QHI):
        np.add(v, zp, out=out, casting="unsafe")         # nothing saturates: + zp cast into out, exact
        return 0
    v += zp
    sat = int(np.count_nonzero(v < QLO)) + int(np.count_nonzero(v > QHI))
    np.clip(v, QLO, QHI, out=v)
    np.copyto(out, v, casting="unsafe")
    return sat


class QwidgetsAsymProfile(OrtProfile):
    name = "qwidgets_asym"
    title = "qwidgets engine, uint8 activations with zero points (leaky folded)"
    exportable = None
    pre_activation_grid = False     # leaky is folded into the requantization
    signed_weights = True
    wraps_int32 = False             # our own rule: the exact sum (no device adds it in int32)
    fit_bias = Profile.fit_bias     # and the weights' own scales: ORT's quantizer rule is not ours
    rules = {
        "activations": "uint8 with zero point, per tensor, range from the calibrator and the calibration rules",
        "weights": "int8 symmetric [-127, 127], per tensor or per output channel",
        "accumulator": "int32, exact: sum w * (x - zp)",
        "requantization": "15-bit fixed-point multiplier s_in*s_w/s_out, + zero point",
        "rounding": "half to even, then saturate to [0, 255]",
        "leaky": "folded into requantization (second multiplier for negative sums), one rounding",
        "route/concat": "inputs on another grid requantized to the route's grid (fixed point, + zero point)",
        "shortcut": "float island (dequantize, add, quantize)",
        "upsample": "copy, grid kept",
        "maxpool": "uint8 max (padding code 0), grid kept",
        "heads": "int32 accumulators dequantized for [yolo]/[region]",
        "source": "engine/quant/profiles/qwidgets_asym.py, docs/quantization.md",
    }

    def activation_params(self, stats, calibrator, thresholds=None):
        """As `onnxruntime` (the calibrated [lo, hi] on 256 codes); power-of-two methods (log2) get their scale
        rounded up to a power of two and the zero point recomputed for the same lower end."""
        scales, zps = super().activation_params(stats, calibrator, thresholds)
        if calibrator.power_of_two:
            for nid, s in scales.items():
                lo = -zps[nid] * s
                p2 = 2.0 ** math.ceil(math.log2(s) - 1e-12)
                scales[nid], zps[nid] = p2, int(np.clip(np.rint(-lo / p2), QLO, QHI))
        return scales, zps

    def extra_params(self, model, stats, calibrator, thresholds=None):
        return {}, {}                   # leaky is folded: no pre-activation grid

    def has_hybrid_path(self, kind: str) -> bool:
        return kind == "convolutional"

    def quantize(self, x, scale, zero_point=0):
        q, sat = quantize_u8(x, scale, int(zero_point))
        return QTensor(q, scale, int(zero_point)), sat

    def run(self, layer, xs, lq, qmodel, rec):
        if layer.kind == "convolutional":
            return self._conv(layer, xs[0], lq, qmodel, rec)
        if layer.kind == "route" and len(xs) > 1:
            return self._route(layer, xs, qmodel, rec)
        if layer.kind == "shortcut":
            return self._float_island(layer, xs, qmodel, rec)
        return super().run(layer, xs, lq, qmodel, rec)

    def _route(self, layer, xs, qmodel, rec):
        s, z = tensor_grid(qmodel, str(layer.index))
        parts = []
        for x, sl in zip(xs, route_slices(layer.in_shapes, layer.groups, layer.group_id)):
            part = x.q[sl]
            if (x.scale, x.zero_point) != (s, z):
                part, sat = requantize_u8(part.astype(np.float64) - x.zero_point, fixed(x.scale / s), None, z)
                rec["saturated"] = rec.get("saturated", 0) + sat
            parts.append(part)
        return QTensor(np.concatenate(parts, axis=0), s, z)

    def _sums(self, layer, x: QTensor, lq, b_q, epilogue) -> None:
        """epilogue(part, r0, r1, u, ch) with u the exact `sum w * (x - zp) + b` (float32 or float64 integers)."""
        self.accumulate_any(layer, x, lq, epilogue, bias=b_q)

    def _conv(self, layer, x, lq, qmodel, rec):
        s, z = tensor_grid(qmodel, str(layer.index))
        acc_scale = x.scale * weight_scales(lq)
        n = lq.w_q.shape[0]
        shape = (n,) + tuple(layer.out_shape[1:])
        act = layer.activation
        folded = act in FOLDED
        if folded:
            f_pos = fixed(acc_scale / s).reshape(-1, 1, 1)
            slope = FOLDED[act]
            f_neg = None if slope is None else (np.zeros_like(f_pos) if slope == 0 else
                                               fixed(acc_scale * slope / s).reshape(-1, 1, 1))
            y = np.empty(shape, np.uint8)
        else:
            f = np.empty(shape, np.float32)
        a3 = acc_scale.reshape(-1, 1, 1)
        stats: list[tuple[int, int, int]] = []

        def epilogue(part, r0, r1, u, ch):
            lo, hi = asym.channel_extremes(u)
            sat = 0
            if folded:
                sat = requantize_u8_band(u, f_pos[ch], None if f_neg is None else f_neg[ch], z, y[ch, r0:r1],
                                         part, lo, hi)
            else:
                f[ch, r0:r1] = (u * a3[ch]).astype(np.float32)
            stats.append((int(lo.min()), int(hi.max()), sat))   # whole, once: both kernel threads append

        self._sums(layer, x, lq, bias_for(lq, x.scale), epilogue)
        rec["acc_min"], rec["acc_max"] = min(t[0] for t in stats), max(t[1] for t in stats)
        rec["saturated"] = rec.get("saturated", 0) + sum(t[2] for t in stats)
        rec["total"] = rec.get("total", 0) + int(np.prod(shape))
        if folded:
            return QTensor(y, s, z)
        q, sat = self.quantize(activate(f, act), s, z)
        rec["saturated"] += sat
        rec["float_activation"] = act
        return q

    def _dequantized(self, layer, x: QTensor, lq, rec) -> np.ndarray:
        n = lq.w_q.shape[0]
        a3 = (x.scale * weight_scales(lq)).reshape(-1, 1, 1)
        f = np.empty((n,) + tuple(layer.out_shape[1:]), np.float32)
        ranges: list[tuple[int, int]] = []

        def epilogue(part, r0, r1, u, ch):
            ranges.append((int(u.min()), int(u.max())))
            f[ch, r0:r1] = (u * a3[ch]).astype(np.float32)

        self._sums(layer, x, lq, bias_for(lq, x.scale), epilogue)
        rec["acc_min"], rec["acc_max"] = min(r[0] for r in ranges), max(r[1] for r in ranges)
        rec["saturated"], rec["total"] = 0, f.size
        return activate(f, layer.activation)

    def run_head(self, layer, xs, lq, qmodel, rec):
        if layer.kind != "convolutional":
            raise NotImplementedError(f"{layer.where()}: no int32 head path in profile '{self.name}'")
        rec["output"] = "int32 dequantized for the head"
        return self._dequantized(layer, xs[0], lq, rec)

    def hybrid(self, layer, x, lq, qmodel, rec):
        """HYBRID: the float input on its uint8 grid, exact integer conv, dequantized sums, float activation."""
        src = layer.inputs[0]
        xq, sat = self.quantize(x, *tensor_grid(qmodel, "input" if src < 0 else str(src)))
        rec["input_saturated"] = sat
        return self._dequantized(layer, xq, lq, rec)
