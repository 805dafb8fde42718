"""Weight quantization: symmetric int8, per tensor or per output channel; biases to int32.

Schemes (chosen by the calibration method's `weights` attribute):
* `minmax`: scale = max|w| / 127 (per tensor or per channel), round half to even;
* `log2`: the power-of-two scale with the least squared error (per tensor or channel);
* `yolo2_light`: its exact rule (darknet-semantics.md C.1): octaves of the *signed* value
  (negative weights are not counted), window of 8, multiplier 2**(14 - j*), truncation,
  saturation at +-127, per tensor only.
Rounding (minmax and log2): to nearest, or `zero_sum` (each filter's errors summing to about zero, the same
scales), which log2 gives the layers reading the image (engine/calib/log2.py, round 13 of docs/quantization.md).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from engine.calib.log2 import OCTAVES, SMALLEST_EXP, densest_window
from engine.quant.qtensor import QMAX

WEIGHT_SCHEMES = ("minmax", "log2", "yolo2_light")
ROUNDINGS = ("nearest", "zero_sum")


@dataclass
class QuantWeights:
    w_q: np.ndarray        # int8, same shape as the float weights
    scale: np.ndarray      # float64 (n,) per channel, or (1,) per tensor
    scheme: str

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1


def octave_counts(values: np.ndarray, signed: bool = False) -> np.ndarray:
    """Counts of octave k: 2**(k-16) <= v < 2**(k-15), k = 0..31 (|v|, or v itself if signed)."""
    v = values.astype(np.float64).ravel()
    v = v[v > 0] if signed else np.abs(v[v != 0])
    _, e = np.frexp(v)                       # v = f * 2**e, f in [0.5, 1)  =>  2**(e-1) <= v < 2**e
    k = e - 1 - SMALLEST_EXP
    k = k[(k >= 0) & (k < OCTAVES)]
    return np.bincount(k, minlength=OCTAVES)


def y2l_weight_multiplier(w: np.ndarray) -> float:
    """yolo2_light's per-layer weight multiplier 2**(14 - j*) (get_distribution / 4)."""
    return 2.0 ** (14 - densest_window(octave_counts(w, signed=True), 8))


def log2_scales(rows: np.ndarray, tries: int = 4, qmax: int = QMAX) -> np.ndarray:
    """Per row, the power-of-two scale with the least squared rounding + clipping error, among the
    one that clips nothing and the `tries - 1` finer ones. (The densest-octave-window rule of
    yolo2_light clipped the largest weights of most yolov3-tiny layers: 0.60 vs 0.79 mAP@[.5:.95].)

    Evaluated in float32 for float32 weights: dividing by a power of two, rounding, clipping and
    multiplying back are exact there, so only the squared differences round (summed in float64);
    tests/engine/test_weights.py checks the choice against the float64 evaluation on yolov3-tiny."""
    step = _block_rows(rows)
    if rows.shape[0] > step:            # rows are independent: blocks that stay in cache through the tries
        return np.concatenate([log2_scales(rows[lo:lo + step], tries, qmax) for lo in range(0, rows.shape[0], step)])
    amax = np.abs(rows).max(axis=1).astype(np.float64)
    top = np.ceil(np.log2(np.where(amax > 0, amax, 1.0) / qmax))
    # float32 only while every scale and its inverse are normal float32 numbers
    work = np.float32 if rows.dtype == np.float32 and np.all(np.abs(top) < 100) else np.float64
    r = rows.astype(work, copy=False)
    best, best_err = 2.0 ** top, np.full(r.shape[0], np.inf)
    d = np.empty_like(r)
    for j in range(tries):
        s = 2.0 ** (top - j)
        np.multiply(r, (1.0 / s).astype(work)[:, None], out=d)
        np.rint(d, out=d)
        np.clip(d, -qmax, qmax, out=d)
        d *= s.astype(work)[:, None]
        d -= r
        np.square(d, out=d)
        err = d.sum(axis=1, dtype=np.float64)
        better = err < best_err
        best, best_err = np.where(better, s, best), np.where(better, err, best_err)
    return np.where(amax > 0, best, 1.0)


def nearest_codes(v: np.ndarray, qmax: int = QMAX, out: np.ndarray | None = None) -> np.ndarray:
    """v (weights / scale, float64) rounded to the nearest int code (half to even), saturated at +-qmax (in `out`)."""
    out = np.rint(v, out=out)
    return np.clip(out, -qmax, qmax, out=out)


def zero_sum_codes(v: np.ndarray, qmax: int = QMAX) -> np.ndarray:
    """Per row of v (weights / scale, float64 (n, k)), int codes in [-qmax, qmax] whose rounding errors sum to
    within 0.5 of zero: round to nearest, then move the fewest codes (|round(sum of errors)|) to their other
    neighbour, those whose move adds the least squared error (the fraction nearest 0.5 on the needed side).

    Why: a filter reading the image sees a signal far from zero mean (pixels in [0, 1], neighbours alike), so
    its output error is mostly sum(errors) x the local brightness, a shift that nearest rounding leaves
    (yolov3-tiny's conv 0 with power-of-two scales: 85% of its output error on the calibration photos)."""
    q = nearest_codes(v, qmax)
    err = q - v
    excess = np.rint(err.sum(axis=1)).astype(np.int64)
    for i in np.flatnonzero(excess):
        k, down = abs(int(excess[i])), excess[i] > 0       # down: the codes sum too high, lower k of them
        room = np.flatnonzero(q[i] > -qmax) if down else np.flatnonzero(q[i] < qmax)
        cost = -err[i, room] if down else err[i, room]      # moving a code whose error is e by -+1 adds 1 -+ 2e
        q[i, room[np.argsort(cost, kind="stable")[:k]]] -= 1 if down else -1
    return q


def quantize_weights(w: np.ndarray, scheme: str = "minmax", per_channel: bool = False,
                     qmax: int = QMAX, rounding: str = "nearest") -> QuantWeights:
    """float32 (n, ...) -> QuantWeights in [-qmax, qmax] (127; 63 for 7-bit `reduce_range` weights).
    `rounding`: "nearest" (half to even), or "zero_sum" (each filter's rounding errors sum to about zero,
    `zero_sum_codes`; the same scales). Raises ValueError for unknown schemes or roundings, non-finite weights."""
    if scheme not in WEIGHT_SCHEMES:
        raise ValueError(f"weight scheme {scheme!r}: expected one of {', '.join(WEIGHT_SCHEMES)}")
    if rounding not in ROUNDINGS or (rounding != "nearest" and scheme == "yolo2_light"):
        raise ValueError(f"weight rounding {rounding!r}: expected one of {', '.join(ROUNDINGS)} "
                         "(yolo2_light: its own truncation only)")
    if not np.isfinite(w).all():
        raise ValueError("weights must be finite to quantize")
    n = w.shape[0]
    rows = w.reshape(n, -1) if per_channel else w.reshape(1, -1)
    if scheme == "yolo2_light":
        if per_channel:
            raise ValueError("yolo2_light quantizes weights per tensor only (one multiplier per layer)")
        mult = y2l_weight_multiplier(w)
        q = np.clip(np.trunc(w.astype(np.float64) * mult), -QMAX, QMAX).astype(np.int8)
        return QuantWeights(q, np.array([1.0 / mult]), scheme)
    if scheme == "minmax":
        amax = np.abs(rows).max(axis=1).astype(np.float64)
        scale = np.where(amax > 0, amax / qmax, 1.0)
    else:
        scale = log2_scales(rows, qmax=qmax)
    flat = w.reshape(n, -1)
    q = np.empty(flat.shape, np.int8)
    step = _block_rows(flat)
    for lo in range(0, n, step):        # rint(w / scale) clipped, in float64, a cache-sized block at a time
        blk = np.divide(flat[lo:lo + step], (scale[lo:lo + step] if per_channel else scale).reshape(-1, 1),
                        dtype=np.float64)
        q[lo:lo + step] = zero_sum_codes(blk, qmax) if rounding == "zero_sum" else nearest_codes(blk, qmax, blk)
    return QuantWeights(q.reshape(w.shape), scale, scheme)


def _block_rows(rows: np.ndarray, nbytes: int = 1 << 20) -> int:
    """Rows of a 2-D weight array per block of about `nbytes` (float32; at least one row)."""
    return max(1, nbytes // (4 * max(1, rows.shape[1])))


_FUSED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def fused_params(model, index: int) -> tuple[np.ndarray, np.ndarray]:
    """layer.fused(params) of `model`'s layer `index` (BN-folded float32 weights, biases), kept while
    that layer's params dict is the model's: edits replace the dict (Model.replace_param), never
    write into it. Calibration folds each layer once instead of once per step (quantize, rescale,
    bias correction). The arrays are read-only."""
    per = _FUSED.setdefault(model, {})
    params = model.params[index]
    hit = per.get(index)
    if hit is not None and hit[0] is params:
        return hit[1], hit[2]
    w, b = model.layers[index].fused(params)
    w.flags.writeable = b.flags.writeable = False
    per[index] = (params, w, b)
    return w, b


def quantize_bias(b: np.ndarray, in_scale: float, w_scale: np.ndarray) -> np.ndarray:
    """Biases in the accumulator scale: int32(round(b / (s_in * s_w))), saturated to int32."""
    acc_scale = in_scale * np.broadcast_to(w_scale, b.shape)
    q = np.rint(b.astype(np.float64) / acc_scale)
    return np.clip(q, -(2 ** 31) + 1, 2 ** 31 - 1).astype(np.int32)
