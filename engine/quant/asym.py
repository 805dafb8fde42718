"""Asymmetric (zero-point) int8/uint8 activations with ONNX Runtime's float32 arithmetic.

A tensor is `real = (q - zero_point) * scale` with q uint8 [0, 255] (or int8 [-128, 127]).
Every rule below is what ONNX Runtime's CPU kernels compute (MLAS), checked op by op against a
live onnxruntime in tests/engine/test_profiles_ort.py; docs/profiles.md cites the source lines.

* QuantizeLinear (MlasQuantizeLinear): float32 `x / scale` (a division, not a multiply by the
  reciprocal), clamped to [qmin - zp, qmax - zp] in float, rounded half to even (cvtps2dq), + zp.
* QLinearConv requantization (MlasRequantizeOutput): the int32 sum `acc + bias` converted to
  float32 (rounded to nearest even above 2**24), times the float32 per-channel scale
  `(x_scale * w_scale[c]) / y_scale` evaluated in float32 in that order, clamped, rounded half to
  even, + zp.
* Lookup-table ops (QLinearLeakyRelu, QLinearConcat with differing input parameters,
  QlinearBuildLookupTable): for each of the 256 codes v, `x = x_scale * float(v - x_zp)` in float32,
  y = f(x) in float32 (leaky: `x >= 0 ? x : alpha * x` with float32 alpha), then QuantizeLinear.
* DequantizeLinear: `float(q - zp) * scale` in float32.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from engine.kernels.threads import own_threads, parallel_for

F32 = np.float32
RANGES = {"uint8": (0, 255), "int8": (-128, 127)}
DTYPES = {"uint8": np.uint8, "int8": np.int8}


def f32(value) -> np.float32:
    return np.float32(value)


def asym_params(lo: float, hi: float, dtype: str = "uint8") -> tuple[float, int]:
    """(scale, zero_point) covering [min(lo, 0), max(hi, 0)], as ONNX Runtime's quantizer computes them
    (scale = (rmax - rmin) / (qmax - qmin), zp = round(qmin - rmin / scale)); the scale is a float32 value,
    so the engine and an exported ONNX file hold the same number."""
    qmin, qmax = RANGES[dtype]
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 0:
        return float(f32(1.0 / (qmax - qmin))), int(qmin if dtype == "uint8" else 0)
    scale = float(f32((hi - lo) / (qmax - qmin)))
    zp = int(np.clip(np.rint(qmin - lo / scale), qmin, qmax))
    return scale, zp


def quantize_linear(x: np.ndarray, scale: float, zp: int, dtype: str = "uint8") -> tuple[np.ndarray, int]:
    """float -> (q, saturated count) by ONNX QuantizeLinear's float32 rule (see module docstring)."""
    qmin, qmax = RANGES[dtype]
    v = np.divide(np.asarray(x, F32), f32(scale), dtype=F32)
    lo, hi = F32(qmin - zp), F32(qmax - zp)
    saturated = 0
    top, bottom = (np.fmax.reduce(v, axis=None), np.fmin.reduce(v, axis=None)) if v.size else (hi, lo)
    if top > hi + F32(0.5) or bottom < lo - F32(0.5):    # NaN-ignoring extremes: count only where needed
        saturated = int(np.count_nonzero(v > hi + F32(0.5))) + int(np.count_nonzero(v < lo - F32(0.5)))
    np.clip(v, lo, hi, out=v)
    np.rint(v, out=v)
    v += F32(zp)
    return v.astype(DTYPES[dtype]), saturated


def dequantize_linear(q: np.ndarray, scale, zp) -> np.ndarray:
    """q -> float32 (q - zp) * scale, computed as onnxruntime's DequantizeLinear does."""
    d = (q.astype(np.int32) - np.int32(zp)).astype(F32)
    return np.multiply(d, f32(scale), dtype=F32)


def conv_output_scales(x_scale: float, w_scale: np.ndarray, y_scale: float) -> np.ndarray:
    """QLinearConv's per-channel requantization scale: float32 (x_scale * w_scale[c]) / y_scale."""
    w = np.asarray(w_scale, np.float64).astype(F32).ravel()
    return np.divide(np.multiply(f32(x_scale), w, dtype=F32), f32(y_scale), dtype=F32)


def channel_extremes(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (min, max) of an accumulator band u (channels first) as float64, exact for the integer
    sums it holds: the asymmetric profiles' epilogues read them for the layer's statistics and to tell
    whether anything saturates without a pass over the codes."""
    u2 = u.reshape(u.shape[0], -1)
    # ufunc.reduce, not ndarray.min/max: the methods' Python wrappers cost ~1 us a call, per band
    return (np.minimum.reduce(u2, axis=1).astype(np.float64), np.maximum.reduce(u2, axis=1).astype(np.float64))


def requantize_output(acc: np.ndarray, scales: np.ndarray, zp: int, dtype: str = "uint8",
                      out: np.ndarray | None = None, work: np.ndarray | None = None,
                      extremes: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, int]:
    """Exact integer accumulators `acc + bias` (n, ...) (any integer-valued dtype) -> (q, saturated count)
    by MlasRequantizeOutput: float32(acc) * float32 scale[c], clamped, rounded half to even, + zp.
    `work`: a float32 array of acc's shape to compute in (a band buffer: no temporaries), or acc itself
    when it is such a float32 array the caller lets go of. `extremes`: acc's per-channel (min, max), if
    known: float32 rounding and the positive scales are monotone, so they bound every product and
    spare the passes that look for saturation when nothing saturates."""
    qmin, qmax = RANGES[dtype]
    shape = (-1,) + (1,) * (acc.ndim - 1)
    if work is None:
        v = np.asarray(acc).astype(F32)                  # int32 -> float32: round to nearest even
    else:
        v = work
        if v is not acc:
            np.copyto(v, acc, casting="unsafe")          # the same conversion, into the buffer
    np.multiply(v, np.asarray(scales, F32).reshape(shape), out=v)
    lo, hi = F32(qmin - zp), F32(qmax - zp)
    saturated = 0
    if extremes is None:
        top, bottom = (v.max(), v.min()) if v.size else (lo, hi)
    else:
        sc = np.asarray(scales, F32).reshape(-1)
        top = np.multiply(np.asarray(extremes[1]).astype(F32), sc, dtype=F32).max(initial=lo)
        bottom = np.multiply(np.asarray(extremes[0]).astype(F32), sc, dtype=F32).min(initial=hi)
    if top > hi + F32(0.5) or bottom < lo - F32(0.5):
        saturated = int(np.count_nonzero(v > hi + F32(0.5))) + int(np.count_nonzero(v < lo - F32(0.5)))
    if top > hi or bottom < lo:
        np.clip(v, lo, hi, out=v)
    np.rint(v, out=v)
    if out is None:
        v += F32(zp)
        return v.astype(DTYPES[dtype]), saturated
    np.add(v, F32(zp), out=out, casting="unsafe")        # integers in range: the cast into out is exact
    return out, saturated


def build_lut(x_scale: float, x_zp: int, y_scale: float, y_zp: int,
              fn: Callable[[np.ndarray], np.ndarray] | None = None, dtype: str = "uint8") -> np.ndarray:
    """QlinearBuildLookupTable: the 256-entry table of an elementwise float op between two quantized grids
    (fn=None: identity, QLinearConcat's requantization). Indexed by the code's byte (q.view(uint8))."""
    qmin, _ = RANGES[dtype]
    codes = np.arange(256, dtype=np.int32) if dtype == "uint8" else np.arange(256, dtype=np.uint8).view(np.int8)
    x = np.multiply(f32(x_scale), (codes.astype(np.int32) - np.int32(x_zp)).astype(F32), dtype=F32)
    y = x if fn is None else np.asarray(fn(x), F32)
    table, _ = quantize_linear(y, y_scale, y_zp, dtype)
    return table


def leaky_f32(alpha: float) -> Callable[[np.ndarray], np.ndarray]:
    """QLinearLeakyRelu's transformer: v >= 0 ? v : alpha * v, in float32."""
    a = f32(alpha)

    def fn(v: np.ndarray) -> np.ndarray:
        return np.where(v >= F32(0), v, np.multiply(a, v, dtype=F32)).astype(F32)
    return fn


def apply_lut(q: np.ndarray, table: np.ndarray) -> np.ndarray:
    """table[q's bytes], q of any shape, as a new array of table's dtype. A big contiguous map is looked
    up two codes at a time through `_pair_table` (one uint16 index per pair: half the gathers, 3x faster
    than table[q] on 2.8M codes, whose uint8 indices NumPy first widens to intp one by one), in
    contiguous halves on the kernel threads. (Applied band by band inside the conv epilogue it cost
    twice the thread time: a band of rows is strided across the channels, so each took a copy.)"""
    b = q.view(np.uint8)
    if b.size < PAIR_MIN or b.size % 2 or not b.flags.c_contiguous:
        return table[b]
    out = np.empty(b.shape, table.dtype)
    src, dst, pair = b.reshape(-1).view(np.uint16), out.reshape(-1).view(np.uint16), _pair_table(table)

    def run(lo: int, hi: int) -> None:
        np.take(pair, src[lo:hi], out=dst[lo:hi], mode="clip")

    with own_threads():
        parallel_for(src.size, run, src.size)
    return out


PAIR_MIN = 1 << 16            # codes from which the pair table pays for its lookups
_PAIRS: dict[tuple, np.ndarray] = {}


def _pair_table(table: np.ndarray) -> np.ndarray:
    """The 65,536-entry uint16 table of two codes at once: entry i holds table[low byte of i] in its low
    byte and table[high byte] in its high one, so the pair's two output bytes lie in memory as the two
    input bytes do, whatever the byte order."""
    key = (table.dtype.str, table.tobytes())
    pair = _PAIRS.get(key)
    if pair is None:
        t = table.view(np.uint8).astype(np.uint16)
        i = np.arange(1 << 16)
        pair = t[i & 255] | (t[i >> 8] << np.uint16(8))
        if len(_PAIRS) >= 256:                          # one per layer and grid pair: bounded anyway
            _PAIRS.clear()
        _PAIRS[key] = pair
    return pair


def _fma32(x: np.ndarray, y, z) -> np.ndarray:
    """float32 fused multiply-add (one rounding): x*y is exact in float64 for these operands (an 8-bit
    integer times a float32), so the float64 sum rounded to float32 is the FMA except at ~2**-29 of ties."""
    return (np.asarray(x, np.float64) * np.float64(y) + np.asarray(z, np.float64)).astype(F32)


def qlinear_add(a: np.ndarray, sa: float, za: int, b: np.ndarray, sb: float, zb: int, sc: float, zc: int,
                dtype: str = "uint8") -> tuple[np.ndarray, int]:
    """QLinearAdd as MLAS's AVX2 kernel computes it (qladd_avx2.cpp): ratios rA = sA/sC, rB = sB/sC in
    float32, fixed = zC - (rA*zA + rB*zB), then fma(a, rA, fma(b, rB, fixed)), rounded half to even,
    saturated by the int16 and uint8 packs. (The SSE2 and NEON kernels differ.)"""
    qmin, qmax = RANGES[dtype]
    ra, rb = F32(F32(sa) / F32(sc)), F32(F32(sb) / F32(sc))
    fixed = F32(F32(zc) - _fma32(ra, F32(za), F32(rb) * F32(zb)))
    t = _fma32(b.astype(F32), rb, fixed)
    v = np.rint(_fma32(a.astype(F32), ra, t))
    saturated = int(np.count_nonzero((v < qmin) | (v > qmax)))
    return np.clip(v, qmin, qmax).astype(DTYPES[dtype]), saturated
