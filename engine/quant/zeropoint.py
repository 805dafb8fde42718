"""Exact int32 sums `sum w * (x - zp)` of uint8 (or int8) codes with a zero point, on the int8 kernels.

The asymmetric profiles (`onnxruntime`, `qwidgets_asym`) multiply weights by x - zp, which spans
[-255, 255]: as a GEMM operand that halves the reduction a float32 GEMM keeps exact, and it kept
those layers off the integer Winograd. Instead, with off = 128 for uint8 codes (0 for int8):

    x - zp = (x - off) + d,   d = off - zp

x - off is int8 (uint8 codes XOR 0x80), so its zero-padded conv runs on the symmetric path's kernels
(`intops.conv_int_unshared`: integer Winograd or int8 bands). The rest is d times the sum of the
weights a window reads inside the image: the filter's whole sum, less its taps that fall on padding,
which only border rows and columns have (the taps of the rows off the image, plus those of the
columns off it, less those in both at the corners). Every term is an integer, so the accumulators
are the very ones of the int16 GEMM the profiles ran before (tests/engine/test_zeropoint.py against
it and against naive loops).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from engine.kernels.gemm import conv_out_size
from engine.kernels.scratch import derived
from engine.quant.intops import EXACT_F32, band_buffer, conv_int_unshared, row_abs_max


class Borders(NamedTuple):
    """Weight sums of one filter bank for one input size (int64; scaled by d per call).

    total (n,): each filter's sum. rows / cols: the output rows (columns) whose windows reach the
    padding, and per filter the sum of the taps there, (n, len(rows)) / (n, len(cols)). corners
    (n, len(rows), len(cols)): the taps in both a padding row and a padding column."""
    total: np.ndarray
    rows: np.ndarray
    row_sums: np.ndarray
    cols: np.ndarray
    col_sums: np.ndarray
    corners: np.ndarray


def _outside(out: int, size: int, k: int, s: int, p: int) -> np.ndarray:
    """(out, k) bool: tap t of output position o reads input o*s - p + t outside [0, size)."""
    pos = np.arange(out)[:, None] * s - p + np.arange(k)[None, :]
    return (pos < 0) | (pos >= size)


def borders(w_q: np.ndarray, h: int, w: int, k: int, s: int, p: int) -> Borders:
    """The weight sums `conv_zero_point` adds, for int8 weights (n, C, k, k) on an (h, w) input."""
    wq = w_q.astype(np.int64)
    per_tap = wq.sum(axis=1)                                   # (n, k, k): over input channels
    row_out = _outside(conv_out_size(h, k, s, p), h, k, s, p)
    col_out = _outside(conv_out_size(w, k, s, p), w, k, s, p)
    rows, cols = np.flatnonzero(row_out.any(1)), np.flatnonzero(col_out.any(1))
    mr, mc = row_out[rows].astype(np.int64), col_out[cols].astype(np.int64)
    return Borders(per_tap.sum(axis=(1, 2)), rows, per_tap.sum(axis=2) @ mr.T, cols, per_tap.sum(axis=1) @ mc.T,
                   np.einsum("fab,ra,cb->frc", per_tap, mr, mc))


def conv_zero_point(x_q: np.ndarray, zero_point: int, w_q: np.ndarray, w_f: Callable[[], np.ndarray], k: int,
                    s: int, p: int, epilogue: Callable[[int, int, int, np.ndarray, slice], None],
                    bias: np.ndarray | None = None) -> str:
    """Exact `sum w * (x - zero_point)` (+ `bias`, integers (n,), if given) of uint8 or int8 codes x_q
    (C, H, W) with int8 weights w_q (n, C, k, k) (zero padding of x - zero_point, groups 1), handed to
    epilogue(part, r0, r1, acc, ch) band by band as `intops.conv_int_bands` does: acc holds exact integers
    (float32 when every sum is known to stay below 2**24, else float64; the kernel's own dtype when
    neither d nor a bias is added) and the epilogue may write it. `w_f()`: the weights as the GEMMs'
    float32 (n, C*k*k). Returns the kernel's name."""
    off = 128 if x_q.dtype == np.uint8 else 0
    shifted = np.bitwise_xor(x_q, np.uint8(0x80)).view(np.int8) if off else x_q
    d = off - int(zero_point)
    if d == 0 and bias is None:
        return conv_int_unshared(shifted, w_q, w_f, k, s, p, epilogue)
    _, h, w = x_q.shape
    b = derived(f"zp-borders-{h}x{w}-{k}/{s}/{p}", (w_q,), lambda: borders(w_q, h, w, k, s, p))
    b_q = np.zeros(len(b.total), np.int64) if bias is None else np.asarray(bias).astype(np.int64)
    # the per-filter constant: cached with the arrays it comes from, so that the kernels' forms of the
    # weights with it folded in (`conv_int_bands`' bias column) are made once, not per call
    total = derived(f"zp-total-{d}-{h}x{w}-{k}/{s}/{p}", (w_q,) if bias is None else (w_q, bias),
                    lambda: d * b.total + b_q)
    # every partial sum below 2**24 (|x - 128| <= 128 and |d| times a filter's sum of |w| over a set of its
    # taps, plus the bias): float32 bands, exact (half the bytes of every later pass), with the constant
    # folded into the kernel where it can (its bias column, or M[1, 1] of the Winograd); else float64
    bound = row_abs_max(w_q) * (128 + abs(d)) + float(np.abs(b_q).max(initial=0))
    dtype = np.float32 if bound < EXACT_F32 else np.float64
    total3 = total.astype(dtype)[:, None, None]
    row_sums, col_sums, corners = (d * a for a in (b.row_sums, b.col_sums, b.corners))
    rows, cols = (b.rows.tolist(), b.cols.tolist()) if d else ([], [])
    folded: list[bool] = []

    def corrected(part: int, r0: int, r1: int, acc: np.ndarray, ch: slice) -> None:
        if folded:
            u = acc                                            # float32, the constant added by the kernel
        else:
            u = band_buffer("zp", part, acc.shape, dtype)
            np.add(acc, total3[ch], out=u)                     # exact integers
        for j, c in enumerate(cols):
            u[:, :, c] -= col_sums[ch, j, None]
        for i, r in enumerate(rows):
            if r0 <= r < r1:
                u[:, r - r0] -= row_sums[ch, i, None]
                u[:, r - r0, cols] += corners[ch, i]
        epilogue(part, r0, r1, u, ch)

    if dtype is np.float64:
        return conv_int_unshared(shifted, w_q, w_f, k, s, p, corrected)
    return conv_int_unshared(shifted, w_q, w_f, k, s, p, corrected, total, lambda: folded.append(True))
