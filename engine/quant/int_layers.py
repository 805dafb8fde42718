"""The int8 path of each Darknet layer type (INT mode), and the HYBRID convolution.

Every function takes int8 QTensors and returns a QTensor, recording into `rec` what the
Explorer shows: the int32 accumulator range and how many values saturated. Scale rules:
conv / connected / shortcut / avgpool / crop requantize to their calibrated output scale;
maxpool, upsample, reorg, dropout keep the input scale (they only move or select values);
route concatenates at the largest input scale, rescaling the others (so nothing saturates).
A conv / connected layer whose only readers are detection heads ([yolo], [region], ...) ends the
int8 chain: its int32 accumulators are dequantized for the head (HEAD_LAYERS).
Activations: linear, leaky and relu are folded into the requantization (two multipliers, one
rounding); other activations (logistic, mish, swish, ...) run as a float island between a
dequantize and a quantize, and `rec["float_activation"]` says so.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from engine.kernels.threads import own_threads, parallel_items
from engine.layers.activations import activate
from engine.layers.maxpool import maxpool
from engine.layers.reorg import reorg_pj, space_to_depth
from engine.layers.route import route_slices
from engine.layers.upsample import upsample_nearest
from engine.quant.intops import EXACT_F32, band_buffer, conv_int, conv_int_fused, gemm_int
from engine.quant.layerquant import LayerQuant
from engine.quant.qtensor import QMAX, QTensor, multiplier_value, quantize, quantize_multiplier, requantize
from engine.registry import Registry

SHORTCUT_BLOCK = 1 << 15   # elements per block of the int8 shortcut (its float64 values stay in L2)

INT_LAYERS: Registry[Callable] = Registry("int8 layer path")
FOLDED = {"linear": None, "leaky": 0.1, "relu": 0.0}


def _acc_stats(acc: np.ndarray, rec: dict) -> None:
    rec["acc_min"], rec["acc_max"] = int(acc.min()), int(acc.max())


def requantize_activation(acc: np.ndarray, acc_scale: np.ndarray, out_scale: float, activation: str,
                          rec: dict) -> np.ndarray:
    """int32 accumulators (n, ...) in per-channel `acc_scale` -> int8 in `out_scale`, activation applied."""
    if activation in FOLDED:
        m, sh = quantize_multiplier(acc_scale / out_scale)
        slope = FOLDED[activation]
        if slope is None:
            q, sat = requantize(acc, m, sh)
        elif slope == 0.0:
            q, sat = requantize(acc, m, sh, np.zeros_like(m), np.zeros_like(sh))
        else:
            mn, shn = quantize_multiplier(acc_scale * slope / out_scale)
            q, sat = requantize(acc, m, sh, mn, shn)
    else:
        shape = (-1,) + (1,) * (acc.ndim - 1)
        y = activate((acc * acc_scale.reshape(shape)).astype(np.float32), activation)
        q, sat = quantize(y, out_scale)
        rec["float_activation"] = activation
    rec["saturated"] = rec.get("saturated", 0) + sat
    rec["total"] = rec.get("total", 0) + q.size
    return q


def rescale(x: QTensor, out_scale: float, rec: dict) -> np.ndarray:
    """int8 in x.scale -> int8 in out_scale (identity when equal)."""
    if x.scale == out_scale:
        return x.q
    m, sh = quantize_multiplier(x.scale / out_scale)
    q, sat = requantize(x.q.astype(np.int32), m, sh, axis_channels=False)
    rec["saturated"] = rec.get("saturated", 0) + sat
    return q


@INT_LAYERS.register("convolutional")
def conv_forward_int(layer, xs: list[QTensor], lq: LayerQuant, out_scale: float, rec: dict) -> QTensor:
    x = xs[0]
    b_q = _bias_for(lq, x.scale)
    acc_scale = x.scale * _wscale(lq)
    if layer.groups == 1 and layer.activation in FOLDED:
        q = _conv_requant_fused(layer, x.q, lq, b_q, acc_scale, out_scale, rec)
        return QTensor(q, out_scale)
    acc = conv_int(x.q, lq.w_f, b_q, layer.size, layer.stride, layer.padding, layer.groups)
    _acc_stats(acc, rec)
    return QTensor(requantize_activation(acc, acc_scale, out_scale, layer.activation, rec), out_scale)


def conv_forward_int_head(layer, xs: list[QTensor], lq: LayerQuant, rec: dict) -> np.ndarray:
    """INT mode, a conv read only by detection heads: its exact int32 accumulators are dequantized
    (acc * s_in * s_w) and the activation applied in float, instead of rounding the head's logits
    to int8 first (what an NPU's last layer does: int32 out, dequantized by the host). The kernel
    is HYBRID's, on the int8 input as it is."""
    x = xs[0]
    rec["output"] = "int32 dequantized for the head"
    return _conv_dequantized(layer, x.q, lq, _bias_for(lq, x.scale), x.scale * _wscale(lq), rec)


def connected_forward_int_head(layer, xs: list[QTensor], lq: LayerQuant, rec: dict) -> np.ndarray:
    x = xs[0]
    rec["output"] = "int32 dequantized for the head"
    return _connected_dequantized(layer, x.q, lq, _bias_for(lq, x.scale), x.scale * _wscale(lq), rec)


def _conv_requant_fused(layer, x_q: np.ndarray, lq: LayerQuant, b_q: np.ndarray, acc_scale: np.ndarray,
                        out_scale: float, rec: dict) -> np.ndarray:
    """conv_int + requantize_activation (linear/leaky/relu), band by band while the sums are in cache.

    Same numbers as the two-step path: u = acc + b is the exact int32 accumulator, then requantize()'s
    rule on it (u*f_pos in float64, max with u*f_neg, rint, saturate) — see `requant_epilogue`.
    """
    n = lq.w_q.shape[0]
    m, sh = quantize_multiplier(acc_scale / out_scale)
    f_pos = multiplier_value(m, sh)
    slope = FOLDED[layer.activation]
    f_neg = None
    if slope:
        mn, shn = quantize_multiplier(acc_scale * slope / out_scale)
        f_neg = multiplier_value(mn, shn)
    y = np.empty((n,) + tuple(layer.out_shape[1:]), np.int8)
    epilogue, stats = requant_epilogue(y, b_q, f_pos, f_neg, slope)
    conv_int_fused(x_q, lq.w_q, lambda: lq.w_f, layer.size, layer.stride, layer.padding, epilogue)
    rec["acc_min"], rec["acc_max"] = min(t[0] for t in stats), max(t[1] for t in stats)
    rec["saturated"] = rec.get("saturated", 0) + sum(t[2] for t in stats)
    rec["total"] = rec.get("total", 0) + y.size
    return y


def _add_bias(part: int, acc: np.ndarray, b_q: np.ndarray, ch: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """acc (float32 exact integers, int32 or float64; a contiguous `full_width` band) + b_q[ch] ->
    (u, min, max per channel): u holds the exact int32 accumulators as floats, min / max are exact
    integral float64.

    In place in float32 when every |acc + b| < 2**24 (known from the per-channel extremes, which the
    statistics need anyway): every sum is then an exact float32 integer; else in float64."""
    b = b_q[ch].astype(np.float64)
    a2 = acc.reshape(acc.shape[0], -1)
    lo = a2.min(axis=1).astype(np.float64) + b
    hi = a2.max(axis=1).astype(np.float64) + b
    if acc.dtype != np.float64 and (not lo.size or max(float(hi.max()), -float(lo.min())) < EXACT_F32):
        if acc.dtype != np.float32:        # int32 (integer Winograd): one exact cast to float32
            u = band_buffer("u32", part, acc.shape, np.float32)
            np.copyto(u, acc)
            acc = u
        acc += b.astype(np.float32).reshape(-1, 1, 1)
        return acc, lo, hi
    u = band_buffer("u", part, acc.shape)
    np.copyto(u, acc)
    u += b.reshape(-1, 1, 1)
    return u, lo, hi


def requant_epilogue(y: np.ndarray, b_q: np.ndarray, f_pos: np.ndarray, f_neg: np.ndarray | None,
                     slope: float | None):
    """A `full_width` epilogue for `conv_int_bands` writing int8 into y (n, Ho, Wo): q = sat8(rint(u*f)),
    u = acc + b the exact accumulator, f = f_pos (u >= 0) or f_neg (u < 0; relu: 0) per channel:
    requantize()'s rule, whose float64 evaluation is exact (|u| < 2**31, 15-bit multipliers).
    Returns (epilogue, stats): stats collects (acc min, acc max, saturated) per band.

    Float32 fast path, exact by construction. When u is an exact float32 integer and the
    multipliers are exact in float32, v = fl32(u * f) is the exact product P rounded once, and every
    half-integer below 2**22 is a float32 number; rounding is monotone and keeps such numbers, so v
    and P never lie on opposite sides of a half-integer: rint(v) != rint(P) only if v IS a
    half-integer and P is not. Those elements (|v - rint(v)| == 0.5, found by one max / min) are
    recomputed in float64; channels that may saturate (from their exact extremes) are computed in
    float64 whole. max(fl32(a), fl32(b)) = fl32(max(a, b)), so leaky / relu keep the argument.
    """
    fp3 = f_pos.reshape(-1, 1, 1)
    fn3 = None if f_neg is None else f_neg.reshape(-1, 1, 1)
    f_low = f_pos if slope is None else (np.zeros_like(f_pos) if slope == 0.0 else f_neg)
    exact32 = all(f is None or np.array_equal(f.astype(np.float32).astype(np.float64), f) for f in (f_pos, f_neg))
    fp32 = fp3.astype(np.float32)
    fn32 = None if fn3 is None else fn3.astype(np.float32)
    leaky = slope is not None and slope != 0.0
    stats: list[tuple[int, int, int]] = []

    def rule64(v: np.ndarray, ch: slice, cs=slice(None)) -> np.ndarray:
        """The requantization products of float64 v (channels cs of band channels ch), in place."""
        w = np.multiply(v, fn3[ch][cs]) if leaky else None
        np.multiply(v, fp3[ch][cs], out=v)
        if slope == 0.0:
            np.maximum(v, 0.0, out=v)
        elif leaky:
            np.maximum(v, w, out=v)
        return v

    def epilogue(part: int, r0: int, r1: int, acc: np.ndarray, ch: slice) -> None:
        u, lo_c, hi_c = _add_bias(part, acc, b_q, ch)
        fp = f_pos[ch]
        wo = y.shape[2]
        # the rule is monotone in u per channel: only channels whose extreme accumulators round
        # beyond +-127 can hold saturated values. rint(v) > 127 <=> v >= 127.5 (127.5 rounds to 128)
        top = np.rint(hi_c * fp) > QMAX
        bottom = np.rint(np.where(lo_c < 0, lo_c * f_low[ch], lo_c * fp)) < -QMAX
        flagged = np.flatnonzero(top | bottom)
        sat = 0
        if u.dtype == np.float32 and exact32:
            v = band_buffer("v32", part, u.shape, np.float32)
            r = band_buffer("r32", part, u.shape, np.float32)
            np.multiply(u, fp32[ch], out=v)
            if leaky:
                np.multiply(u, fn32[ch], out=r)
                np.maximum(v, r, out=v)
            elif slope == 0.0:
                np.maximum(v, 0.0, out=v)
            if flagged.size:               # keep the int8 cast in range; recomputed exactly below
                v[flagged] = np.clip(v[flagged], -QMAX, QMAX)
            np.rint(v, out=r)
            y[ch, r0:r1] = r[:, :, :wo]
            np.subtract(v, r, out=v)       # exact, in [-0.5, 0.5]
            if v.max() >= 0.5 or v.min() <= -0.5:
                cs, ys, xs = np.nonzero(np.abs(v[:, :, :wo]) == 0.5)
                tie = rule64(u[cs, ys, xs].astype(np.float64).reshape(-1, 1, 1), ch, cs)
                y[ch.start + cs, r0 + ys, xs] = np.clip(np.rint(tie), -QMAX, QMAX).reshape(-1)
            if flagged.size:
                vf = rule64(u[flagged].astype(np.float64), ch, flagged)
                valid = vf[:, :, :wo]
                sat = int(np.count_nonzero(valid >= QMAX + 0.5)) + int(np.count_nonzero(valid <= -QMAX - 0.5))
                np.clip(valid, -QMAX, QMAX, out=valid)
                y[ch.start + flagged, r0:r1] = np.rint(valid)
            stats.append((int(lo_c.min()), int(hi_c.max()), sat))
            return
        if u.dtype == np.float64 and u is not acc:       # already a float64 work buffer
            v = u
        else:
            v = band_buffer("v", part, u.shape)
            np.copyto(v, u)      # one cast to float64: mixed-type ufuncs cast in slow buffered loops
        rule64(v, ch)
        # clip-then-rint == rint-then-clip (integer bounds); counted on the valid columns only
        for c_i in flagged:
            vc = v[c_i]
            valid = vc[:, :wo]
            sat += int(np.count_nonzero(valid >= QMAX + 0.5)) + int(np.count_nonzero(valid <= -QMAX - 0.5))
            np.clip(vc, -QMAX, QMAX, out=vc)
        np.rint(v, out=v)
        y[ch, r0:r1] = v[:, :, :wo]                    # integral, in [-127, 127]: the cast is exact
        stats.append((int(lo_c.min()), int(hi_c.max()), sat))

    return epilogue, stats


def _wscale(lq: LayerQuant) -> np.ndarray:
    return np.broadcast_to(lq.w_scale, (lq.w_q.shape[0],)).astype(np.float64)


def _bias_for(lq: LayerQuant, in_scale: float) -> np.ndarray:
    if in_scale == lq.in_scale:
        return lq.b_q
    # the producer ran at another scale (e.g. a mixed-precision override changed it): re-derive
    from engine.quant.weights import quantize_bias
    return quantize_bias(lq.b_q * lq.acc_scale, in_scale, lq.w_scale)


def conv_forward_hybrid(layer, x: np.ndarray, lq: LayerQuant, rec: dict) -> np.ndarray:
    """HYBRID: quantize the float input with the calibrated scale, int8 conv, int32 acc, dequantize."""
    x_q, sat = quantize(x, lq.in_scale)
    rec["input_saturated"] = sat
    return _conv_dequantized(layer, x_q, lq, lq.b_q, lq.acc_scale, rec)


def _conv_dequantized(layer, x_q: np.ndarray, lq: LayerQuant, b_q: np.ndarray, acc_scale: np.ndarray,
                      rec: dict) -> np.ndarray:
    """int8 conv, exact int32 accumulators (+ b_q), times the per-channel acc_scale -> float32, activated."""
    rec["saturated"], rec["total"] = 0, int(np.prod(layer.out_shape))   # nothing is rounded to int8
    if layer.groups == 1:
        scale3 = np.asarray(acc_scale, np.float64).reshape(-1, 1, 1)
        y = np.empty((lq.w_q.shape[0],) + tuple(layer.out_shape[1:]), np.float32)
        ranges: list[tuple[int, int]] = []

        def epilogue(part: int, r0: int, r1: int, acc: np.ndarray, ch: slice) -> None:
            u, lo, hi = _add_bias(part, acc, b_q, ch)    # the exact int32 accumulators
            ranges.append((int(lo.min()), int(hi.max())))
            if u.dtype == np.float64 and u is not acc:
                v = u
            else:
                v = band_buffer("v", part, u.shape)
                np.copyto(v, u)
            np.multiply(v, scale3[ch], out=v)            # in float64, rounded once to float32 (as acc * scale)
            yb = y[ch, r0:r1]
            yb[...] = v[:, :, :y.shape[2]]
            if fused:                                    # elementwise, in place: the band while in cache
                activate(yb, layer.activation)

        fused = layer.activation in FOLDED
        conv_int_fused(x_q, lq.w_q, lambda: lq.w_f, layer.size, layer.stride, layer.padding,
                       epilogue)
        rec["acc_min"], rec["acc_max"] = min(r[0] for r in ranges), max(r[1] for r in ranges)
        return y if fused else activate(y, layer.activation)
    acc = conv_int(x_q, lq.w_f, b_q, layer.size, layer.stride, layer.padding, layer.groups)
    _acc_stats(acc, rec)
    y = (acc * np.asarray(acc_scale, np.float64).reshape(-1, 1, 1)).astype(np.float32)
    return activate(y, layer.activation)


@INT_LAYERS.register("connected")
def connected_forward_int(layer, xs: list[QTensor], lq: LayerQuant, out_scale: float, rec: dict) -> QTensor:
    x = xs[0]
    acc = gemm_int(lq.w_f, x.q.reshape(-1, 1).astype(np.float32))[:, 0] + _bias_for(lq, x.scale)
    _acc_stats(acc, rec)
    q = requantize_activation(acc, x.scale * _wscale(lq), out_scale, layer.activation, rec)
    return QTensor(q.reshape(layer.out_shape), out_scale)


def connected_forward_hybrid(layer, x: np.ndarray, lq: LayerQuant, rec: dict) -> np.ndarray:
    x_q, sat = quantize(x, lq.in_scale)
    rec["input_saturated"] = sat
    return _connected_dequantized(layer, x_q, lq, lq.b_q, lq.acc_scale, rec)


def _connected_dequantized(layer, x_q: np.ndarray, lq: LayerQuant, b_q: np.ndarray, acc_scale: np.ndarray,
                           rec: dict) -> np.ndarray:
    rec["saturated"], rec["total"] = 0, int(np.prod(layer.out_shape))
    acc = gemm_int(lq.w_f, x_q.reshape(-1, 1).astype(np.float32))[:, 0] + b_q
    _acc_stats(acc, rec)
    return activate((acc * acc_scale).astype(np.float32).reshape(layer.out_shape), layer.activation)


HYBRID_LAYERS = {"convolutional": conv_forward_hybrid, "connected": connected_forward_hybrid}
# INT mode, layers read only by detection heads: int8 in, int32 accumulators dequantized out
HEAD_LAYERS = {"convolutional": conv_forward_int_head, "connected": connected_forward_int_head}


@INT_LAYERS.register("maxpool")
def maxpool_forward_int(layer, xs, lq, out_scale, rec) -> QTensor:
    x = xs[0]
    return QTensor(maxpool(x.q, layer.size, layer.stride, layer.padding, fill=-128), x.scale)


@INT_LAYERS.register("upsample")
def upsample_forward_int(layer, xs, lq, out_scale, rec) -> QTensor:
    x = xs[0]
    if layer.scale != 1.0:
        y = upsample_nearest(x.q, layer.stride)
        return QTensor(y, x.scale * layer.scale)  # a constant factor is a change of scale, not of values
    return QTensor(upsample_nearest(x.q, layer.stride), x.scale)


@INT_LAYERS.register("reorg")
def reorg_forward_int(layer, xs, lq, out_scale, rec) -> QTensor:
    return QTensor(reorg_pj(xs[0].q, layer.stride), xs[0].scale)


@INT_LAYERS.register("reorg3d")
def reorg3d_forward_int(layer, xs, lq, out_scale, rec) -> QTensor:
    return QTensor(space_to_depth(xs[0].q, layer.stride), xs[0].scale)


@INT_LAYERS.register("dropout")
def dropout_forward_int(layer, xs, lq, out_scale, rec) -> QTensor:
    return xs[0]


@INT_LAYERS.register("route")
def route_forward_int(layer, xs: list[QTensor], lq, out_scale, rec) -> QTensor:
    scale = max(x.scale for x in xs)
    slices = route_slices(layer.in_shapes, layer.groups, layer.group_id)
    parts = [rescale(QTensor(x.q[s], x.scale), scale, rec) for x, s in zip(xs, slices)]
    return QTensor(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0), scale)


@INT_LAYERS.register("shortcut")
def shortcut_forward_int(layer, xs: list[QTensor], lq, out_scale: float, rec: dict) -> QTensor:
    """out = sat8(round(a*Ma + b*Mb)) on the overlapping region, Ma/Mb 15-bit fixed-point ratios.

    Linear / leaky / relu run in channel blocks whose float64 values stay in cache, spread over the
    kernel threads: the same element-wise operations as on the whole tensor (the same bits), without
    ten passes over a float64 copy (a yolov3 208x208x64 shortcut spent ~100 ms there)."""
    a, b = xs
    fa = _fixed(a.scale * layer.alpha / out_scale)
    fb = _fixed(b.scale * layer.beta / out_scale)
    c = min(a.q.shape[0], b.q.shape[0])
    st = max(1, b.q.shape[2] // a.q.shape[2])
    sample = max(1, a.q.shape[2] // b.q.shape[2])
    src = b.q[:c, ::st, ::st]
    if layer.activation not in ("leaky", "relu", "linear"):
        v = a.q.astype(np.float64) * fa
        dst = v[:c, ::sample, ::sample]
        h, w = min(src.shape[1], dst.shape[1]), min(src.shape[2], dst.shape[2])
        dst[:, :h, :w] += src[:, :h, :w].astype(np.float64) * fb
        y = activate((v * out_scale).astype(np.float32), layer.activation)
        q, sat = quantize(y, out_scale)
        rec["saturated"], rec["float_activation"] = sat, layer.activation
        return QTensor(q, out_scale)
    ch, hh, ww = a.q.shape
    h, w = min(src.shape[1], -(-hh // sample)), min(src.shape[2], -(-ww // sample))
    per = max(1, SHORTCUT_BLOCK // max(1, hh * ww))
    count = -(-ch // per)
    out, sats, leak = np.empty(a.q.shape, np.int8), np.zeros(count, np.int64), _fixed(0.1)

    def block(part: int, i: int) -> None:
        lo, hi = i * per, min(ch, (i + 1) * per)
        v = band_buffer("shortcut-v", part, (hi - lo, hh, ww))
        t = band_buffer("shortcut-t", part, (hi - lo, hh, ww))
        np.multiply(a.q[lo:hi], fa, out=v, dtype=np.float64)
        if lo < c:
            k = min(hi, c) - lo
            add = band_buffer("shortcut-b", part, (k, h, w))
            np.multiply(src[lo:lo + k, :h, :w], fb, out=add, dtype=np.float64)
            v[:k, ::sample, ::sample][:, :h, :w] += add
        if layer.activation == "leaky":
            np.multiply(v, leak, out=t)
            np.maximum(v, t, out=v)
        elif layer.activation == "relu":
            np.maximum(v, 0, out=v)
        np.rint(v, out=v)
        np.abs(v, out=t)
        sats[i] = np.count_nonzero(t > 127)
        np.clip(v, -127, 127, out=v)
        out[lo:hi] = v

    with own_threads():
        parallel_items(count, block)
    rec["saturated"] = int(sats.sum())
    return QTensor(out, out_scale)


def _fixed(real: float) -> float:
    """A real multiplier rounded to the 15-bit fixed point the integer path uses (exact float64)."""
    from engine.quant.qtensor import multiplier_value
    m, sh = quantize_multiplier(real)
    return float(multiplier_value(m, sh))


@INT_LAYERS.register("avgpool")
def avgpool_forward_int(layer, xs, lq, out_scale: float, rec: dict) -> QTensor:
    x = xs[0]
    acc = x.q.reshape(x.q.shape[0], -1).sum(axis=1, dtype=np.int32)
    _acc_stats(acc, rec)
    hw = x.q.shape[1] * x.q.shape[2]
    m, sh = quantize_multiplier(np.full(acc.shape, x.scale / (hw * out_scale)))
    q, sat = requantize(acc, m, sh)
    rec["saturated"] = sat
    return QTensor(q.reshape(-1, 1, 1), out_scale)


@INT_LAYERS.register("crop")
def crop_forward_int(layer, xs, lq, out_scale: float, rec: dict) -> QTensor:
    x = xs[0]
    dy, dx = (x.q.shape[1] - layer.crop_height) // 2, (x.q.shape[2] - layer.crop_width) // 2
    q = x.q[:, dy:dy + layer.crop_height, dx:dx + layer.crop_width]
    if layer.noadjust:
        return QTensor(np.ascontiguousarray(q), x.scale)
    v = q.astype(np.float64) * _fixed(2 * x.scale / out_scale) - np.rint(1.0 / out_scale)
    np.rint(v, out=v)
    rec["saturated"] = int(np.count_nonzero(np.abs(v) > 127))
    return QTensor(np.clip(v, -127, 127).astype(np.int8), out_scale)
