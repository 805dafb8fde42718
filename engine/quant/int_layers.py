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

from functools import lru_cache
from typing import Callable

import numpy as np

from engine.kernels.threads import own_threads, parallel_for, parallel_items
from engine.layers.activations import activate
from engine.layers.maxpool import maxpool, maxpool_out_size
from engine.layers.reorg import reorg_pj, space_to_depth
from engine.layers.route import route_slices
from engine.layers.upsample import upsample_nearest
from engine.quant.intcache import drop_oldest, kept
from engine.quant.intops import band_buffer, conv_int, conv_int_fused, gemm_int, plus_bias
from engine.quant.layerquant import LayerQuant
from engine.quant.qtensor import QMAX, QTensor, multiplier_value, quantize, quantize_multiplier, requantize
from engine.quant.requant32 import add_bias as _add_bias, requant_epilogue  # noqa: F401 (re-exported)
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


_INT8_BY_PATTERN = np.arange(256, dtype=np.int32)
_INT8_BY_PATTERN[128:] -= 256                 # the int8 value of each uint8 bit pattern


def _rescale_table(scale: float, out_scale: float) -> tuple[np.ndarray, np.ndarray | None]:
    """requantize()'s rule from `scale` to `out_scale` on the 256 int8 values (indexed by bit pattern),
    and which of them saturate (None: none), kept per pair of scales (a pure function of the two)."""
    return _rescale_table_of(float(scale), float(out_scale))


@lru_cache(maxsize=256)
def _rescale_table_of(scale: float, out_scale: float) -> tuple[np.ndarray, np.ndarray | None]:
    m, sh = quantize_multiplier(scale / out_scale)
    table, _ = requantize(_INT8_BY_PATTERN, m, sh, axis_channels=False)
    saturated = np.abs(np.rint(_INT8_BY_PATTERN * float(multiplier_value(m, sh)))) > QMAX
    table.flags.writeable = saturated.flags.writeable = False     # shared by every later call
    return table, saturated if saturated.any() else None


def rescale(x: QTensor, out_scale: float, rec: dict) -> np.ndarray:
    """int8 in x.scale -> int8 in out_scale (identity when equal): requantize()'s rule applied to the
    256 int8 values once (`_rescale_table`), then one table lookup per element (1.4 -> 0.17 ms on
    256x26x26)."""
    if x.scale == out_scale:
        return x.q
    y = np.empty_like(x.q)
    _rescaled_into(y, [x], out_scale, rec)
    return y


def _rescaled_into(y: np.ndarray, xs: list[QTensor], out_scale: float, rec: dict) -> None:
    """The parts xs, each rescaled to out_scale (`rescale`) or copied, into consecutive channels of y:
    one pass over y's channel ranges on the kernel threads (no concatenate after the lookups)."""
    starts = np.cumsum([0] + [x.q.shape[0] for x in xs]).tolist()
    tables = [None if x.scale == out_scale else _rescale_table(x.scale, out_scale) for x in xs]

    def run(lo: int, hi: int) -> None:
        for x, t, a, b in zip(xs, tables, starts[:-1], starts[1:]):
            if a < hi and b > lo:
                src, dst = x.q[max(lo, a) - a:min(hi, b) - a], y[max(lo, a):min(hi, b)]
                if t is None:
                    np.copyto(dst, src)
                else:
                    np.take(t[0], src.view(np.uint8), out=dst, mode="clip")   # (with out=, 'raise' buffers)

    with own_threads():
        parallel_for(y.shape[0], run, y.size)
    count = sum(int(np.count_nonzero(np.take(t[1], x.q.view(np.uint8))))
                for x, t in zip(xs, tables) if t is not None and t[1] is not None)
    if any(t is not None for t in tables):
        rec["saturated"] = rec.get("saturated", 0) + count


@INT_LAYERS.register("convolutional")
def conv_forward_int(layer, xs: list[QTensor], lq: LayerQuant, out_scale: float, rec: dict) -> QTensor:
    x = xs[0]
    b_q = bias_for(lq, x.scale)
    acc_scale = x.scale * weight_scales(lq)
    if layer.groups == 1 and layer.activation in FOLDED:
        with own_threads():        # once per layer: the kernel's 2-4 passes nest in it at no cost
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
    with own_threads():
        return _conv_dequantized(layer, x.q, lq, bias_for(lq, x.scale), x.scale * weight_scales(lq), rec)


def connected_forward_int_head(layer, xs: list[QTensor], lq: LayerQuant, rec: dict) -> np.ndarray:
    x = xs[0]
    rec["output"] = "int32 dequantized for the head"
    return _connected_dequantized(layer, x.q, lq, bias_for(lq, x.scale), x.scale * weight_scales(lq), rec)


def _conv_requant_fused(layer, x_q: np.ndarray, lq: LayerQuant, b_q: np.ndarray, acc_scale: np.ndarray,
                        out_scale: float, rec: dict) -> np.ndarray:
    """conv_int + requantize_activation (linear/leaky/relu), band by band while the sums are in cache.

    Same numbers as the two-step path: u = acc + b is the exact int32 accumulator, then requantize()'s
    rule on it (u*f_pos in float64, max with u*f_neg, rint, saturate) — see `requant32.requant_epilogue`.
    """
    n = lq.w_q.shape[0]
    slope = FOLDED[layer.activation]
    f_pos, f_neg = _multipliers(acc_scale, out_scale, slope)
    y = np.empty((n,) + tuple(layer.out_shape[1:]), np.int8)
    epilogue, stats = requant_epilogue(y, b_q, f_pos, f_neg, slope)
    conv_int_fused(x_q, lq.w_q, lambda: lq.w_f, layer.size, layer.stride, layer.padding, epilogue,
                   bias=b_q, on_fold=epilogue.fold_bias)
    rec["acc_min"], rec["acc_max"] = min(t[0] for t in stats), max(t[1] for t in stats)
    rec["saturated"] = rec.get("saturated", 0) + sum(t[2] for t in stats)
    rec["total"] = rec.get("total", 0) + y.size
    return y


_MULTIPLIERS: dict[tuple, tuple[np.ndarray, np.ndarray | None]] = {}


def _multipliers(acc_scale: np.ndarray, out_scale: float, slope: float | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The exact fixed-point multipliers (f_pos, f_neg) of acc_scale / out_scale (f_neg: leaky's
    slope; None otherwise), cached per value: ~50 us of small NumPy calls per conv and forward."""
    key = (acc_scale.tobytes(), float(out_scale), slope)
    hit = _MULTIPLIERS.get(key)
    if hit is None:
        f_pos = multiplier_value(*quantize_multiplier(acc_scale / out_scale))
        f_neg = multiplier_value(*quantize_multiplier(acc_scale * slope / out_scale)) if slope else None
        for f in (f_pos, f_neg):
            if f is not None:
                f.flags.writeable = False
        if len(_MULTIPLIERS) >= 512:
            drop_oldest(_MULTIPLIERS)
        hit = _MULTIPLIERS[key] = (f_pos, f_neg)
    return hit


def weight_scales(lq: LayerQuant) -> np.ndarray:
    """The per-filter weight scales as float64 (n,), kept per w_scale array (edits replace arrays)."""
    n = lq.w_q.shape[0]

    def make() -> np.ndarray:
        w = np.broadcast_to(lq.w_scale, (n,)).astype(np.float64)
        w.flags.writeable = False
        return w
    if not isinstance(lq.w_scale, np.ndarray):
        return make()
    return kept(f"int-wscale-{n}", lq.w_scale, make)


def bias_for(lq: LayerQuant, in_scale: float) -> np.ndarray:
    """The int32 biases (n,) for an input at `in_scale`: the stored `b_q` at the calibrated scale, else
    re-derived from the real bias (a mixed-precision override or a HYBRID producer changed the scale)."""
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
    acc = plus_bias(gemm_int(lq.w_f, x.q.reshape(-1, 1).astype(np.float32))[:, 0], bias_for(lq, x.scale))
    _acc_stats(acc, rec)
    q = requantize_activation(acc, x.scale * weight_scales(lq), out_scale, layer.activation, rec)
    return QTensor(q.reshape(layer.out_shape), out_scale)


def connected_forward_hybrid(layer, x: np.ndarray, lq: LayerQuant, rec: dict) -> np.ndarray:
    x_q, sat = quantize(x, lq.in_scale)
    rec["input_saturated"] = sat
    return _connected_dequantized(layer, x_q, lq, lq.b_q, lq.acc_scale, rec)


def _connected_dequantized(layer, x_q: np.ndarray, lq: LayerQuant, b_q: np.ndarray, acc_scale: np.ndarray,
                           rec: dict) -> np.ndarray:
    rec["saturated"], rec["total"] = 0, int(np.prod(layer.out_shape))
    acc = plus_bias(gemm_int(lq.w_f, x_q.reshape(-1, 1).astype(np.float32))[:, 0], b_q)
    _acc_stats(acc, rec)
    return activate((acc * acc_scale).astype(np.float32).reshape(layer.out_shape), layer.activation)


HYBRID_LAYERS = {"convolutional": conv_forward_hybrid, "connected": connected_forward_hybrid}
# INT mode, layers read only by detection heads: int8 in, int32 accumulators dequantized out
HEAD_LAYERS = {"convolutional": conv_forward_int_head, "connected": connected_forward_int_head}


@INT_LAYERS.register("maxpool")
def maxpool_forward_int(layer, xs, lq, out_scale, rec) -> QTensor:
    x = xs[0]
    c, h, w = x.q.shape
    if (layer.size, layer.stride) == (2, 2) and layer.padding // 2 == 0 and h % 2 == 0 and w % 2 == 0 \
            and maxpool_out_size(h, 2, 2, layer.padding) == h // 2 and maxpool_out_size(w, 2, 2, layer.padding) == w // 2:
        return QTensor(_maxpool2(x.q), x.scale)
    return QTensor(maxpool(x.q, layer.size, layer.stride, layer.padding, fill=-128), x.scale)


def _maxpool2(q: np.ndarray) -> np.ndarray:
    """2x2 stride-2 windows of an even map that needs no padding (yolov3-tiny's five): the maxima of
    the row pairs (whole contiguous rows), then of the column pairs; on int8 these strided ufuncs beat
    the shared kernel's copies (0.6 vs 0.9 ms on 16x416x416, one thread). Channel blocks on threads."""
    c, h, w = q.shape
    y = np.empty((c, h // 2, w // 2), q.dtype)

    def run(lo: int, hi: int) -> None:
        r = np.maximum(q[lo:hi, 0::2], q[lo:hi, 1::2])
        np.maximum(r[:, :, 0::2], r[:, :, 1::2], out=y[lo:hi])

    with own_threads():
        parallel_for(c, run, q.size)
    return y


def _upsample_int8(q: np.ndarray, stride: int) -> np.ndarray:
    """Nearest upsampling of int8 (C, H, W); stride 2 as uint16 pairs (each byte times 0x0101 fills
    both bytes, then whole rows are copied): a broadcast copy of single bytes is ~10x slower."""
    if stride != 2 or q.dtype != np.int8:
        return upsample_nearest(q, stride)
    c, h, w = q.shape
    d = q.view(np.uint8).astype(np.uint16)
    d *= 257
    y = np.empty((c, h, 2, w), np.uint16)
    y[...] = d[:, :, None, :]
    return y.view(np.int8).reshape(c, 2 * h, 2 * w)


@INT_LAYERS.register("upsample")
def upsample_forward_int(layer, xs, lq, out_scale, rec) -> QTensor:
    x = xs[0]
    y = _upsample_int8(x.q, layer.stride)
    # a constant factor is a change of scale, not of values
    return QTensor(y, x.scale * layer.scale if layer.scale != 1.0 else x.scale)


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
    parts = [QTensor(x.q[s], x.scale) for x, s in zip(xs, slices)]
    if len(parts) == 1:
        return QTensor(rescale(parts[0], scale, rec), scale)
    y = np.empty((sum(x.q.shape[0] for x in parts),) + parts[0].q.shape[1:], np.int8)
    _rescaled_into(y, parts, scale, rec)       # each part rescaled or copied straight into its channels
    return QTensor(y, scale)


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
