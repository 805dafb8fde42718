"""`onnxruntime`: ONNX Runtime's CPU integer kernels on the graph `export --format onnx-int8` writes.

uint8 activations with a zero point; weights symmetric in [-127, 127] stored as uint8 with zero
point 128 (ORT's u8 x u8 kernels widen to int16 and accumulate exactly in int32 on every x86
target; the u8 x s8 kernels of AVX2 without VNNI saturate pair sums at int16, see avx2_u8s8.py).
Per layer (engine/quant/asym.py holds the float32 rules, each checked against ORT):
* conv: QLinearConv (int32 sum + bias, float32 requantization, half-to-even, clamp);
  leaky: QLinearConv to a pre-activation grid, then QLinearLeakyRelu's 256-entry table;
  relu: the output grid has zero point 0, so the clamp is the relu; linear: QLinearConv alone;
* route: Concat when every input shares the output grid, else QLinearConcat (a table per input
  whose grid differs); a single input (with or without groups) is a Slice and keeps its grid;
* maxpool (uint8 MaxPool), upsample (Resize nearest), reorg: values moved, grid kept;
* heads: the conv feeding [yolo]/[region] is a ConvInteger whose int32 sums (+ int32 bias) are cast to
  float32 and multiplied by the float32 `x_scale * w_scale[c]` (no uint8 rounding of box logits);
* shortcut (same shapes, linear): QLinearAdd with the AVX2 kernel's float32 FMA formula;
* other shortcuts and other activations: a float32 island (DequantizeLinear, float op, QuantizeLinear),
  not part of the exported integer graph.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from engine.layers.activations import activate
from engine.layers.maxpool import maxpool
from engine.layers.reorg import reorg_pj, space_to_depth
from engine.layers.route import route_slices
from engine.layers.upsample import upsample_nearest
from engine.quant import asym
from engine.quant.int_layers import bias_for, weight_scales
from engine.quant.intops import band_buffer, conv_int, row_abs_max
from engine.quant.profiles.base import Profile
from engine.quant.qtensor import QTensor
from engine.quant.zeropoint import conv_zero_point

LEAKY = 0.1
KINDS = ("convolutional", "maxpool", "upsample", "route", "reorg", "reorg3d", "dropout", "shortcut")
LINEAR_OUT = ("linear", "relu")
INT32 = float(1 << 31)
INT32_QRANGE = float((1 << 32) - 2)     # ORT's quantizer: int32 max - (int32 min + 1)
BIAS_MARGIN = 1.0001                    # its multiplicative epsilon on the smallest bias scale


def qlinear_add_fits(layer) -> bool:
    """A shortcut that is a plain QLinearAdd: same shapes, weights 1, linear activation."""
    return (layer.kind == "shortcut" and len(layer.in_shapes) == 2 and layer.in_shapes[0] == layer.in_shapes[1]
            and layer.alpha == 1.0 and layer.beta == 1.0 and layer.activation == "linear")


def int32_wrapping(epilogue, w_q: np.ndarray, bias) -> Callable:
    """`epilogue` handed acc + bias wrapped to int32, as the device has it: MLAS adds the int32 bias to the
    int32 sums with `vpaddd` (ConvInteger's bias is an int32 `Add`), which wraps. Only a bias near the int32
    limit gets there: saturated (an input rescaled after quantization), set by an int8 edit, or left by
    `fit_bias` within 1.0001 of the limit (a filter with tiny weights and a real bias, e.g. a BN channel with
    gamma ~ 0); the exact sum the engine computes is the device's modulo 2**32. `epilogue` itself when no
    `sum |w| * 255 + |bias|` of the layer can leave int32 (every layer of a usual model)."""
    top = 0 if bias is None else int(np.abs(np.asarray(bias, np.int64)).max(initial=0))
    if row_abs_max(w_q) * 255 + top < INT32:
        return epilogue

    def wrapped(part, r0, r1, u, ch):
        if u.dtype != np.float64:                # exact integers above 2**31 are float64 here; be sure
            u = u.astype(np.float64)
        np.subtract(np.mod(u + INT32, 2.0 * INT32), INT32, out=u)   # exact: integers below 2**53
        epilogue(part, r0, r1, u, ch)
    return wrapped


def tensor_grid(qmodel, nid: str) -> tuple[float, int]:
    return qmodel.scales[nid], int(qmodel.zero_points.get(nid, 0))


def clipped_range(h, calibrator, t: float | None = None) -> tuple[float, float]:
    """The signed range [lo, hi] a calibrator keeps of a tensor: its threshold T clips both sides (T given:
    the threshold the calibration rules chose, engine/calib/views.py)."""
    if t is None:
        t = calibrator.threshold(h) if h.amax > 0 else 0.0
    return max(h.lo_signed, -t), min(h.hi_signed, t)


class OrtProfile(Profile):
    name = "onnxruntime"
    title = "ONNX Runtime CPU (QOperator: QLinearConv, QLinearLeakyRelu, QLinearConcat)"
    asymmetric = True
    pre_activation_grid = True      # QLinearLeakyRelu reads the conv's output on a pre-activation grid
    int32_heads = True              # ConvInteger + Add + Cast + Mul: the head's int32 sums, dequantized
    exportable = "onnx-int8"
    signed_weights = False          # exported weights: uint8 with zero point 128
    wraps_int32 = True              # acc + bias wraps at int32, as MLAS adds them (int32_wrapping)
    rules = {
        "activations": "uint8 with zero point, per tensor (ORT quantizer's MinMax rule on the calibrated range)",
        "weights": "int8 values [-127, 127] exported as uint8 with zero point 128, per channel or per tensor",
        "accumulator": "int32, exact (u8 x u8 kernel widens to int16 products: no saturation)",
        "requantization": "float32: float(acc + bias) * ((x_scale * w_scale) / y_scale), MlasRequantizeOutput",
        "rounding": "half to even (cvtps2dq), clamp in float before rounding, + zero point",
        "leaky": "QLinearLeakyRelu: QLinearConv to a pre-activation grid, then a 256-entry float32-built table",
        "route/concat": "Concat if grids equal, else QLinearConcat (float32-built table per differing input)",
        "shortcut": "QLinearAdd, AVX2 kernel: fma(a, sA/sC, fma(b, sB/sC, zC - (sA/sC*zA + sB/sC*zB))), half-even, "
                    "saturating packs (SSE2/NEON kernels differ); other shortcuts: a float32 island, not exported",
        "upsample": "Resize nearest on uint8, grid kept",
        "maxpool": "uint8 MaxPool, grid kept",
        "heads": "ConvInteger (int32 sums) + int32 bias, Cast, Mul by float32 x_scale*w_scale: dequantized "
                 "int32 for [yolo]/[region]",
        "source": "onnxruntime qlinearconv.cc, mlas QuantizeLinear/RequantizeOutput, qlinear_lookup_table.cc, "
                  "qlinear_concat.cc; verified op by op (tests/engine/test_profiles_ort.py)",
    }

    # ---------------------------------------------------------------- quantization
    def activation_params(self, stats, calibrator, thresholds=None):
        scales, zps = {}, {}
        for nid, h in stats.hists.items():
            t = None if thresholds is None else thresholds[nid]
            scales[nid], zps[nid] = asym.asym_params(*clipped_range(h, calibrator, t))
        return scales, zps

    def tie_grids(self, model, scales, zero_points):
        """Layers that only move values (maxpool, upsample, reorg, dropout, a one-input route) run on their
        input's grid: store that grid, so a conv reading them has its bias quantized for the right scale."""
        for layer in model.layers:
            src = layer.inputs[0] if layer.inputs else None
            keeps = (layer.shape_only and self.has_int_path(layer.kind)) or \
                (layer.kind == "route" and len(layer.inputs) == 1)
            if keeps and src is not None:
                nid = "input" if src < 0 else str(src)
                factor = layer.scale if layer.kind == "upsample" else 1.0
                scales[str(layer.index)] = float(np.float32(scales[nid] * factor))
                zero_points[str(layer.index)] = zero_points[nid]

    def extra_params(self, model, stats, calibrator, thresholds=None):
        """A leaky conv's pre-activation grid, from its output's: leaky maps [lo/0.1, hi] onto [lo, hi]."""
        pre_s, pre_z = {}, {}
        for layer in model.layers:
            nid = str(layer.index)
            if layer.kind == "convolutional" and layer.activation == "leaky" and nid in stats.hists:
                lo, hi = clipped_range(stats.hists[nid], calibrator, None if thresholds is None else thresholds[nid])
                pre_s[str(layer.index)], pre_z[str(layer.index)] = asym.asym_params(lo / LEAKY, hi)
        return pre_s, pre_z

    def fit_bias(self, qw, b, in_scale, weights):
        """ORT's own quantizer's rule (onnxruntime/quantization/onnx_quantizer.py,
        `_adjust_weight_scale_for_int32_bias`): where `in_scale * w_scale < 1.0001 * 2|b| / (2**32 - 2)` the
        int32 bias would saturate, so that weight scale (the channel's, or per tensor the tensor's for max |b|)
        grows to the bound and its weights are requantized. A filter with tiny weights and a real bias (a BN
        channel with gamma ~ 0, as slimmed networks have) keeps its bias instead of losing it to saturation."""
        from engine.quant.weights import QuantWeights
        scale = np.asarray(qw.scale, np.float64).reshape(-1)
        need = BIAS_MARGIN * 2.0 * np.abs(np.asarray(b, np.float64)) / INT32_QRANGE
        if scale.size == 1:
            need = need.max(initial=0.0, keepdims=True)
        cand = in_scale * scale
        grow = (cand > 0) & (cand < need)
        if not grow.any():
            return qw
        new = np.where(grow, scale * (need / np.where(grow, cand, 1.0)), scale)
        rows = np.flatnonzero(grow)
        flat = np.asarray(weights()).reshape(scale.size, -1)    # per channel: n rows; per tensor: one
        q = qw.w_q.reshape(scale.size, -1).copy()               # the shared int8 array stays as it is
        blk = np.rint(np.divide(flat[rows], new[rows, None], dtype=np.float64))
        q[rows] = np.clip(blk, -self.weight_qmax, self.weight_qmax)
        return QuantWeights(q.reshape(qw.w_q.shape), new, qw.scheme)

    # ---------------------------------------------------------------- execution
    def has_int_path(self, kind: str) -> bool:
        return kind in KINDS

    def has_hybrid_path(self, kind: str) -> bool:
        return kind == "convolutional"

    def quantize(self, x, scale, zero_point=0):
        q, sat = asym.quantize_linear(x, scale, zero_point)
        return QTensor(q, scale, zero_point), sat

    def run_head(self, layer, xs, lq, qmodel, rec):
        """A conv read only by detection heads: float32(acc + bias) * float32(x_scale * w_scale[c]), activated."""
        x = xs[0]
        if layer.kind != "convolutional":
            raise NotImplementedError(f"{layer.where()}: no int32 head path in profile '{self.name}'")
        n = lq.w_q.shape[0]
        scale = np.multiply(np.float32(x.scale), weight_scales(lq).astype(np.float32), dtype=np.float32).reshape(-1, 1, 1)
        f = np.empty((n,) + tuple(layer.out_shape[1:]), np.float32)
        ranges: list[tuple[int, int]] = []

        def epilogue(part, r0, r1, u, ch):                        # u: exact acc + bias (float32 or 64)
            ranges.append((int(u.min()), int(u.max())))
            np.multiply(u.astype(np.float32), scale[ch], out=f[ch, r0:r1])

        # ConvInteger hands MLAS the weights as its A operand (sign flipped to uint8): the u8 x u8 kernel,
        # exact int32 even with int8 weights on AVX2 (no vpmaddubsw pairs; checked against ORT)
        self.accumulate_any(layer, x, lq, epilogue, lambda *a: OrtProfile.accumulate(self, *a),
                            bias=bias_for(lq, x.scale))
        rec["acc_min"], rec["acc_max"] = min(r[0] for r in ranges), max(r[1] for r in ranges)
        rec["saturated"], rec["total"] = 0, f.size
        rec["output"] = "int32 dequantized for the head"
        return activate(f, layer.activation)

    def run(self, layer, xs, lq, qmodel, rec):
        kind, i = layer.kind, str(layer.index)
        x = xs[0]
        if kind == "convolutional":
            return self._conv(layer, x, lq, qmodel, rec)
        if kind == "maxpool":
            return QTensor(maxpool(x.q, layer.size, layer.stride, layer.padding, fill=0), x.scale, x.zero_point)
        if kind == "upsample":
            return QTensor(upsample_nearest(x.q, layer.stride), float(np.float32(x.scale * layer.scale)), x.zero_point)
        if kind == "reorg":
            return QTensor(reorg_pj(x.q, layer.stride), x.scale, x.zero_point)
        if kind == "reorg3d":
            return QTensor(space_to_depth(x.q, layer.stride), x.scale, x.zero_point)
        if kind == "dropout":
            return x
        if kind == "route":
            return self._route(layer, xs, qmodel, rec)
        if qlinear_add_fits(layer):
            s, z = tensor_grid(qmodel, i)
            q, sat = asym.qlinear_add(xs[0].q, xs[0].scale, xs[0].zero_point, xs[1].q, xs[1].scale,
                                      xs[1].zero_point, s, z)
            rec["saturated"], rec["total"] = sat, q.size
            return QTensor(q, s, z)
        return self._float_island(layer, xs, qmodel, rec)                      # other shortcuts

    def _route(self, layer, xs, qmodel, rec):
        slices = route_slices(layer.in_shapes, layer.groups, layer.group_id)
        if len(xs) == 1:
            x = xs[0]
            return QTensor(np.ascontiguousarray(x.q[slices[0]]), x.scale, x.zero_point)
        s, z = tensor_grid(qmodel, str(layer.index))
        parts = []
        for x, sl in zip(xs, slices):
            part = x.q[sl]
            if (x.scale, x.zero_point) != (s, z):
                part = asym.apply_lut(part, asym.build_lut(x.scale, x.zero_point, s, z))
                rec["lookup_tables"] = rec.get("lookup_tables", 0) + 1
            parts.append(part)
        return QTensor(np.concatenate(parts, axis=0), s, z)

    def _float_island(self, layer, xs, qmodel, rec):
        from engine.layers.shortcut import shortcut_add
        a, b = (x.dequantize() for x in xs)
        y = activate(shortcut_add(a, b, layer.alpha, layer.beta).astype(np.float32), layer.activation)
        s, z = tensor_grid(qmodel, str(layer.index))
        q, sat = self.quantize(y, s, z)
        rec["saturated"], rec["float_activation"] = sat, f"{layer.kind} (float32 island)"
        return q

    # ---------------------------------------------------------------- convolution
    def accumulate(self, layer, x: QTensor, lq, b_q, epilogue) -> None:
        """Exact int32 `sum (x - zp) * w` (+ b_q if given) band by band (the u8 x u8 kernel);
        epilogue(part, r0, r1, acc, ch). Padding with the zero point is padding x - zp with 0."""
        conv_zero_point(x.q, x.zero_point, lq.w_q, lambda: lq.w_f, layer.size, layer.stride, layer.padding, epilogue,
                        bias=b_q)

    def grouped_correction(self, layer, x: QTensor, lq) -> np.ndarray | None:
        """What to add (int64 (n, Ho, Wo)) to a grouped conv's exact sums to get this device's QLinearConv
        sums; None: they are exact (the u8 x u8 kernel, and MLAS's depthwise kernel)."""
        return None

    def accumulate_any(self, layer, x: QTensor, lq, epilogue, accumulate=None, bias=None) -> None:
        """`accumulate` (default: this profile's) for an ungrouped conv; a grouped conv is one exact naive
        int32 pass over every channel (plus `grouped_correction` when `accumulate` is the profile's own),
        handed to `epilogue(0, 0, H, acc, all channels)` whole. `bias`
        (integers (n,)): added to the sums (acc then holds exact integers as float32 or float64, and the
        epilogue may write it)."""
        if self.wraps_int32:
            epilogue = int32_wrapping(epilogue, lq.w_q, bias)
        if layer.groups == 1:
            (accumulate or self.accumulate)(layer, x, lq, bias, epilogue)
            return
        n = lq.w_q.shape[0]
        xc = x.q.astype(np.int16) - np.int16(x.zero_point)
        acc = conv_int(xc, lq.w_f, np.zeros(n, np.int32), layer.size, layer.stride, layer.padding, layer.groups)
        acc = acc.astype(np.float64)
        if accumulate is None and (corr := self.grouped_correction(layer, x, lq)) is not None:
            acc += corr                        # the device's QLinearConv sums, not the exact ones
        if bias is not None:
            acc += np.asarray(bias, np.float64).reshape(-1, 1, 1)
        epilogue(0, 0, acc.shape[1], acc, slice(0, n))

    def _conv(self, layer, x, lq, qmodel, rec):
        i = str(layer.index)
        b_q = bias_for(lq, x.scale)
        act = layer.activation
        leaky = act == "leaky"
        if leaky:
            ys, yz = qmodel.pre_scales[i], int(qmodel.pre_zero_points[i])
        else:
            ys, yz = tensor_grid(qmodel, i)
        island = act not in LINEAR_OUT and not leaky
        if act == "relu" and yz != 0:
            island = True                      # the clamp is a relu only when the zero point is 0
        scales = asym.conv_output_scales(x.scale, weight_scales(lq), ys)
        n = lq.w_q.shape[0]
        shape = (n,) + tuple(layer.out_shape[1:])
        stats: list[tuple[int, int, int]] = []
        if island:
            acc_scale = (np.float32(x.scale) * weight_scales(lq).astype(np.float32)).reshape(-1, 1, 1)
            f = np.empty(shape, np.float32)
        else:
            y = np.empty(shape, np.uint8)

        def epilogue(part, r0, r1, u, ch):       # u: exact int32 acc + bias, a band buffer (float32 or 64)
            lo, hi = asym.channel_extremes(u)
            sat = 0
            if island:
                f[ch, r0:r1] = u.astype(np.float32) * acc_scale[ch]
            else:
                work = u if u.dtype == np.float32 else band_buffer("rq", part, u.shape, np.float32)
                _, sat = asym.requantize_output(u, scales[ch], yz, out=y[ch, r0:r1], work=work, extremes=(lo, hi))
            # one append of the whole entry: the two kernel threads append theirs concurrently (a later
            # stats[-1] update could write the other thread's entry, and its count was lost)
            stats.append((int(lo.min()), int(hi.max()), sat))

        self.accumulate_any(layer, x, lq, epilogue, bias=b_q)
        rec["acc_min"], rec["acc_max"] = min(t[0] for t in stats), max(t[1] for t in stats)
        rec["saturated"] = rec.get("saturated", 0) + sum(t[2] for t in stats)
        rec["total"] = rec.get("total", 0) + int(np.prod(shape))
        s, z = tensor_grid(qmodel, i)
        if island:
            q, sat = self.quantize(activate(f, act), s, z)
            rec["saturated"] += sat
            rec["float_activation"] = act
            return q
        if leaky:
            y = asym.apply_lut(y, asym.build_lut(ys, yz, s, z, asym.leaky_f32(LEAKY)))
        return QTensor(y, s, z)

    def hybrid(self, layer, x, lq, qmodel, rec):
        """HYBRID: the float input on its uint8 grid, exact integer conv, float32 dequantized sums, float activation."""
        src = layer.inputs[0]
        nid = "input" if src < 0 else str(src)
        xq, sat = self.quantize(x, *tensor_grid(qmodel, nid))
        rec["input_saturated"] = sat
        n = lq.w_q.shape[0]
        acc_scale = (np.float32(xq.scale) * weight_scales(lq).astype(np.float32)).reshape(-1, 1, 1)
        f = np.empty((n,) + tuple(layer.out_shape[1:]), np.float32)

        def epilogue(part, r0, r1, u, ch):                        # u: exact acc + bias (float32 or 64)
            np.multiply(u.astype(np.float32), acc_scale[ch], out=f[ch, r0:r1])

        self.accumulate_any(layer, xq, lq, epilogue, bias=bias_for(lq, xq.scale))
        rec["saturated"], rec["total"] = 0, f.size
        return activate(f, layer.activation)
