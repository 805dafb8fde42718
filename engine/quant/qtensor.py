"""int8 tensors and the integer arithmetic rules every quantized path uses.

Conventions (fixed by tests):
* symmetric int8 in [-127, 127] (-128 is never produced, as in yolo2_light), real = q * scale;
* float -> int8: round half to even (`np.rint`, what SSE `cvtps2dq` / ARM `vcvtn` do), then saturate
  (+-inf too); NaN (an overflowed float layer) becomes 0;
* requantization of an int32 accumulator: `q = sat8(round_half_even(acc * m / 2**shift))` with a
  15-bit multiplier m in [2**14, 2**15). |acc| < 2**31 and m < 2**15 keep |acc * m| < 2**46, so the
  float64 evaluation below is exact and equals the integer definition bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QMAX = 127
MULT_BITS = 15


@dataclass
class QTensor:
    """An integer tensor and its per-tensor grid: real = (q - zero_point) * scale. q: (C, H, W) int8
    (symmetric profiles, zero_point 0) or uint8 / int8 with a zero point (asymmetric profiles)."""
    q: np.ndarray
    scale: float
    zero_point: int = 0

    def dequantize(self, channels: slice | None = None) -> np.ndarray:
        """The real values (q - zero_point) * scale as float32 (one rounding of the exact product), of
        every element or of `channels` only (a slice of axis 0, e.g. the channels a view shows: no
        float copy of the rest)."""
        q = self.q if channels is None else self.q[channels]
        if self.zero_point:
            d = (q.astype(np.int32) - np.int32(self.zero_point)).astype(np.float32)
            return np.multiply(d, np.float32(self.scale), dtype=np.float32)
        return dequantize(q, self.scale)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.q.shape


QUANTIZE_BLOCK = 1 << 16   # elements per work item of a big quantize() on the kernel threads


def quantize(x: np.ndarray, scale: float) -> tuple[np.ndarray, int]:
    """float32 -> (int8 array, number of saturated values). Rounds half to even, saturates at +-127
    (+-inf included); NaN gives 0 and is not counted.
    A big contiguous x is quantized in blocks on the kernel threads (elementwise: the same int8 and
    the same count on any thread count)."""
    if not scale > 0:
        raise ValueError(f"quantize: scale must be > 0, got {scale}")
    if x.size >= 4 * QUANTIZE_BLOCK and x.flags.c_contiguous:
        return _quantize_blocks(x, scale)
    return _quantize(x, scale)


def _quantize_blocks(x: np.ndarray, scale: float) -> tuple[np.ndarray, int]:
    from engine.kernels.threads import own_threads, parallel_items
    q = np.empty(x.shape, np.int8)
    xf, qf = x.reshape(-1), q.reshape(-1)
    count = -(-x.size // QUANTIZE_BLOCK)
    sats = [0] * count

    def block(_part: int, i: int) -> None:
        sl = slice(i * QUANTIZE_BLOCK, (i + 1) * QUANTIZE_BLOCK)
        qf[sl], sats[i] = _quantize(xf[sl], scale)

    with own_threads():
        parallel_items(count, block)
    return q, sum(sats)


def _quantize(x: np.ndarray, scale: float) -> tuple[np.ndarray, int]:
    v = np.divide(x, np.float32(scale), dtype=np.float32)
    saturated = 0
    top = v.max() if v.size else 0.0
    if top != top:     # a NaN (a float layer that overflowed): code 0, and it must not hide the extremes
        np.copyto(v, 0.0, where=np.isnan(v))
        top = v.max()
    if v.size and (top >= QMAX + 0.5 or v.min() <= -QMAX - 0.5):       # rint(v) beyond +-127 (127.5 -> 128)
        saturated = int(np.count_nonzero(v >= QMAX + 0.5)) + int(np.count_nonzero(v <= -QMAX - 0.5))
        np.clip(v, -QMAX, QMAX, out=v)                                   # then rint: same as rint, clip
    q = np.empty(v.shape, np.int8)
    np.rint(v, out=q, casting="unsafe")                                  # integral and in range: exact
    return q, saturated


def dequantize(q: np.ndarray, scale) -> np.ndarray:
    """int -> float32: q * scale (scale a scalar or broadcastable per-channel array)."""
    return (q.astype(np.float32) * np.asarray(scale, np.float32)).astype(np.float32, copy=False)


def dequantize_weights(w_q: np.ndarray, w_scale) -> np.ndarray:
    """int8 weights -> their real values w_q * w_scale, float32 (as `dequantize`).

    w_q: (n, ...) int8, filters along axis 0; w_scale: one scale for the layer ((1,) or a scalar) or
    one per filter ((n,)). Raises ValueError when w_scale has neither size.
    """
    scale = np.asarray(w_scale, np.float32).reshape(-1)
    if scale.size == 1:
        return dequantize(w_q, scale[0])
    if scale.size != w_q.shape[0]:
        raise ValueError(f"dequantize_weights: {scale.size} scales for {w_q.shape[0]} filters {w_q.shape}; "
                         "expected one per filter or one for the layer")
    return dequantize(w_q, scale.reshape((-1,) + (1,) * (w_q.ndim - 1)))


def quantize_multiplier(real: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Real multipliers (> 0) -> (m, shift) int64 arrays with m in [2**14, 2**15), real ~= m * 2**-shift.

    Raises ValueError for non-positive or non-finite multipliers.
    """
    r = np.asarray(real, np.float64)
    if not (np.isfinite(r).all() and (r > 0).all()):
        raise ValueError(f"requantization multipliers must be finite and > 0, got {r.ravel()[:4]}")
    _, e = np.frexp(r)                                 # r = f * 2**e, f in [0.5, 1)
    shift = (MULT_BITS - e).astype(np.int64)           # m = r * 2**shift in [2**14, 2**15)
    m = np.rint(np.ldexp(r, shift)).astype(np.int64)
    carry = m == (1 << MULT_BITS)                      # rounding up to 2**15: renormalise
    m = np.where(carry, m >> 1, m)
    shift = np.where(carry, shift - 1, shift)
    return m, shift


def multiplier_value(m: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """The exact float64 value m * 2**-shift."""
    return np.ldexp(np.asarray(m, np.float64), -np.asarray(shift, np.int64))


def requantize(acc: np.ndarray, m: np.ndarray, shift: np.ndarray, m_neg: np.ndarray | None = None,
               shift_neg: np.ndarray | None = None, axis_channels: bool = True) -> tuple[np.ndarray, int]:
    """int32 accumulators (n, ...) -> (int8, saturated count) with per-channel (m, shift).

    With (m_neg, shift_neg), negative accumulators use the second multiplier: that is leaky
    (slope ~0.1) or relu (m_neg = 0) folded into the requantization, with a single rounding.
    """
    shape = (-1,) + (1,) * (acc.ndim - 1) if axis_channels else ()
    f_pos = multiplier_value(m, shift).reshape(shape)
    v = np.multiply(acc, f_pos, dtype=np.float64)
    if m_neg is not None:
        f_neg = multiplier_value(m_neg, shift_neg).reshape(shape)
        # for acc > 0, acc*f_pos > acc*f_neg and for acc < 0 the reverse, since 0 <= f_neg < f_pos
        np.maximum(v, np.multiply(acc, f_neg, dtype=np.float64), out=v)
    np.rint(v, out=v)
    saturated = int(np.count_nonzero(np.abs(v) > QMAX))
    np.clip(v, -QMAX, QMAX, out=v)
    return v.astype(np.int8), saturated


def requantize_naive(acc: int, m: int, shift: int) -> int:
    """Reference in Python integers: round-half-even of acc*m / 2**shift, saturated to +-127."""
    num, den = acc * m, 1 << shift if shift >= 0 else 1
    if shift < 0:
        num, den = num << -shift, 1
    q, r = divmod(num, den)               # floor division: num = q*den + r, 0 <= r < den
    if 2 * r > den or (2 * r == den and q % 2 == 1):
        q += 1
    return max(-QMAX, min(QMAX, q))
