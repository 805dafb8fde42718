"""The INT convolutions' requantization epilogue in float32, exact, and its certificate.

q = sat8(rint(u * f)) (round half to even), u the exact int32 accumulator, f = m * 2**-shift a 15-bit
fixed-point multiplier per channel, a second one (leaky) or 0 (relu) for u < 0: `qtensor.requantize`'s
rule, whose float64 evaluation is exact. The GEMMs hand u over as exact float32 integers, so the
epilogue runs in float32 (half the bytes of float64 per pass) and must still give that rule's bits.

Why float32 is exact except at known accumulators. With |u| < 2**24 and f exact in float32,
v = fl32(u * f) is the exact product P rounded once. Rounding is monotone and keeps every float32
number, and every half-integer below 2**22 is one: v and P never lie on opposite sides of a
half-integer h, so rint(v) != rint(P) only when v == h while P != h, i.e. |P - h| <= ulp(h) / 2.
For one channel and multiplier that confines the "spurious ties" to u in [(h - ulp) / f,
(h + ulp) / f] for the 128 half-integers 0.5 <= |h| <= 127.5 a non-saturating channel can reach:
a few candidates each, checked once in float64 (`spurious_ties`, cached per multipliers). On
yolov3-tiny they are 1-5 accumulator values per channel, almost never inside a band's
[min, max] of that channel, so a band needs no per-element tie test at all (it used to take three
passes: v - rint(v), its max and min); where one is inside, its elements are found and recomputed.
Channels whose extremes may saturate run the float64 rule whole.
"""
from __future__ import annotations

import numpy as np

from engine.quant.intcache import drop_oldest
from engine.quant.intops import EXACT_F32, band_buffer
from engine.quant.qtensor import QMAX

_HALF = np.arange(int(QMAX) + 1) + 0.5          # 0.5 .. 127.5
_MIN, _MAX, _ANY, _ALL = np.minimum.reduce, np.maximum.reduce, np.logical_or.reduce, np.logical_and.reduce
_PLANS: dict[tuple, "Plan"] = {}
_PLANS_MAX = 512                                 # cached multiplier sets (one per layer and scales)
MAX_WINDOW = 64                                 # candidates per half-integer before giving up


def _side(f: np.ndarray, negative: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """(channel, u) of the spurious ties of fl32(u * f[c]) for u >= 0 (or u < 0 when `negative`)."""
    h = -_HALF if negative else _HALF
    sp = np.spacing(np.abs(h).astype(np.float32)).astype(np.float64)      # ulp above |h|: >= the ulp below
    f2 = f[:, None]
    start = np.floor((h - sp) / f2) - 1                                    # -1 / +2: margin for the divisions
    count = int((np.floor((h + sp) / f2) - start).max()) + 2
    if count > MAX_WINDOW:
        return None                                                        # a tiny multiplier: test per element
    u = start[:, :, None] + np.arange(count)                               # (n, 128, count)
    ok = (u < 0) if negative else (u >= 0)
    ok &= np.abs(u) < EXACT_F32
    exact = np.rint(u * f[:, None, None])                                  # |u| < 2**24, 15-bit f: exact
    fast = np.rint((u.astype(np.float32) * f.astype(np.float32)[:, None, None]).astype(np.float64))
    c, _, _ = np.nonzero(ok & (exact != fast))
    return c, u[ok & (exact != fast)]


def _ties(f_pos: np.ndarray, f_neg: np.ndarray | None, slope: float | None
           ) -> tuple[np.ndarray, np.ndarray] | None:
    sides = [_side(f_pos, False)]
    if slope is None:
        sides.append(_side(f_pos, True))
    elif slope != 0.0:
        sides.append(_side(np.asarray(f_neg, np.float64), True))
    if any(s is None for s in sides):
        return None
    chan = np.concatenate([s[0] for s in sides])
    val = np.concatenate([s[1] for s in sides])
    order = np.lexsort((val, chan))
    return chan[order], val[order]


class Plan:
    """What the epilogue of one multiplier set needs, computed once (cached per multipliers): the
    spurious ties, the saturation bounds, and the watch bounds a band's [min, max] is checked against."""

    def __init__(self, f_pos: np.ndarray, f_neg: np.ndarray | None, slope: float | None) -> None:
        self.f_low = f_pos if slope is None else (np.zeros_like(f_pos) if slope == 0.0 else f_neg)
        self.exact32 = all(f is None or np.array_equal(f.astype(np.float32).astype(np.float64), f)
                           for f in (f_pos, f_neg))
        self.ties = _ties(f_pos, f_neg, slope) if self.exact32 else None
        self.sat_hi, self.sat_lo = saturation_bounds(f_pos, self.f_low)
        # a band needs a closer look only where a channel's [min, max] reaches a saturating
        # accumulator or one of the channel's spurious ties: hi >= watch_hi or lo <= watch_lo
        self.watch_hi, self.watch_lo = self.sat_hi + 1, self.sat_lo - 1
        if self.ties is not None and self.ties[0].size:
            chan, val = self.ties
            pos, neg = val >= 0, val < 0
            first_pos = np.full(f_pos.shape, np.inf)
            np.minimum.at(first_pos, chan[pos], val[pos])
            last_neg = np.full(f_pos.shape, -np.inf)
            np.maximum.at(last_neg, chan[neg], val[neg])
            self.watch_hi = np.minimum(self.watch_hi, first_pos)
            self.watch_lo = np.maximum(self.watch_lo, last_neg)
        self.fp32 = f_pos.astype(np.float32).reshape(-1, 1, 1)
        self.fn32 = None if f_neg is None else np.asarray(f_neg).astype(np.float32).reshape(-1, 1, 1)
        self._slices: dict = {}

    def sliced(self, ch: slice, b_q: np.ndarray, bkey: tuple, folded: bool) -> tuple:
        """What an epilogue's bands of channels ch read, sliced once per (channels, bias) and kept with
        the plan (a layer's filter blocks and bands are the same on every forward; they were sliced
        again on every layer call, ~10 small NumPy calls each): the bias (zero when the kernel folded
        it), the watch and saturation bounds and the ties of these channels, the lower bounds negated
        so that one comparison of E = [-lo, hi] (2, channels) tests both ends; the float32 bias and
        multipliers of these channels."""
        key = (ch.start, ch.stop, bkey, folded)
        hit = self._slices.get(key)
        if hit is None:
            if len(self._slices) >= SLICES_MAX:
                self._slices.clear()
            b64 = np.zeros(ch.stop - ch.start) if folded else b_q[ch].astype(np.float64)
            tc, tv, t2 = _NONE, _NO_TIES[1], _NO_TIE2
            if self.ties is not None:
                i0, i1 = np.searchsorted(self.ties[0], (ch.start, ch.stop))
                tc, tv = self.ties[0][i0:i1] - ch.start, self.ties[1][i0:i1]
                t2 = np.stack([-tv, tv])
            hit = self._slices[key] = (
                _SGN * b64, np.stack([-self.watch_lo[ch], self.watch_hi[ch]]),
                np.stack([-self.sat_lo[ch], self.sat_hi[ch]]), tc, tv, t2,
                b_q[ch].astype(np.float32).reshape(-1, 1, 1), self.fp32[ch],
                None if self.fn32 is None else self.fn32[ch])
        return hit


_LAST: dict[tuple, tuple] = {}     # (id f_pos, id f_neg, slope) -> (f_pos, f_neg, plan): read-only arrays


def plan(f_pos: np.ndarray, f_neg: np.ndarray | None, slope: float | None) -> Plan:
    # the same read-only multiplier arrays (int_layers._multipliers keeps them) skip the byte keys
    ids = (id(f_pos), id(f_neg), slope)
    same = _LAST.get(ids)
    if same is not None and same[0] is f_pos and same[1] is f_neg:
        return same[2]
    hit = _plan(f_pos, f_neg, slope)
    if all(f is None or (not f.flags.writeable and f.base is None) for f in (f_pos, f_neg)):   # immutable
        if len(_LAST) >= _PLANS_MAX:
            drop_oldest(_LAST)
        _LAST[ids] = (f_pos, f_neg, hit)
    return hit


def _plan(f_pos: np.ndarray, f_neg: np.ndarray | None, slope: float | None) -> Plan:
    key = (f_pos.tobytes(), None if f_neg is None else f_neg.tobytes(), slope)
    hit = _PLANS.get(key)
    if hit is None:
        if len(_PLANS) >= _PLANS_MAX:
            drop_oldest(_PLANS)
        hit = _PLANS[key] = Plan(np.asarray(f_pos, np.float64), f_neg, slope)
    return hit


def spurious_ties(f_pos: np.ndarray, f_neg: np.ndarray | None, slope: float | None
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """Every accumulator u (|u| < 2**24) whose float32 requantization rint(max(fl32(u*f_pos), fl32(u*f_neg)))
    (f_neg: leaky; relu: max with 0; linear: f_pos for all u) differs from the exact rule while the exact
    |u * f| < 127.5 + 1 ulp: (channels sorted, u as float64), or None when a multiplier is so small
    that the candidates are too many (then the caller tests every element). Cached per multipliers."""
    return plan(f_pos, f_neg, slope).ties


_NO_TIES = (np.zeros(0, np.intp), np.zeros(0))      # (channels within a band, tie accumulators): none
_NONE = np.zeros(0, np.intp)
_NO_TIE2 = np.zeros((2, 0))
_SGN = np.array([[-1.0], [1.0]])
SLICES_MAX = 256                                     # kept channel slices per plan (layers x blocks x biases)


def fix_ties(y: np.ndarray, u: np.ndarray, cs: np.ndarray, vals: np.ndarray, ch: slice, r0: int,
             f_pos: np.ndarray, f_low: np.ndarray, counted) -> int:
    """Rewrite with the exact rule the outputs y[ch][cs, r0 + ...] whose float32 accumulator in the band
    u (channels, rows, width >= y's) is one of the spurious ties (cs, vals): q = sat8(rint(val * f)),
    f = f_pos or f_low (val < 0) in float64. One scan of its channel per tie (a gather of the tie
    channels measured slower: a channel holds several ties). Returns how many of them `_saturate32`
    counted as saturated (its float32 value rounded past 127) while the exact value does not saturate
    (`counted`: True for every channel, a set of band channels, or None: nothing counted)."""
    minus = 0
    wo, width = y.shape[2], u.shape[2]
    for c_i, val in zip(cs.tolist(), vals.tolist()):
        at = np.flatnonzero(u[c_i] == val)           # contiguous channel band: one fast scan
        if at.size:
            ys, xs = np.divmod(at, width)
            if width > wo:
                keep = xs < wo
                ys, xs = ys[keep], xs[keep]
            f = f_pos[ch.start + c_i] if val >= 0 else f_low[ch.start + c_i]
            q = round(val * float(f))
            y[ch.start + c_i, r0 + ys, xs] = max(-QMAX, min(QMAX, q))
            if counted is not None and (counted is True or c_i in counted) \
                    and abs(q) <= QMAX < abs(round(float(np.float32(val) * np.float32(f)))):
                minus += int(ys.size)                # a tie at +-127.5 counted as saturated
    return minus


def add_bias(part: int, acc: np.ndarray, b_q: np.ndarray, ch: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """acc (float32 exact integers, int32 or float64; a contiguous band, as wide as Wo or wider) + b_q[ch] ->
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


def saturation_bounds(f_pos: np.ndarray, f_low: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, the integer accumulators beyond which the rule saturates: u > hi[c] gives
    rint(u * f_pos) > 127 (u * f_pos >= 127.5: 127.5 rounds to 128), u < lo[c] gives
    rint(u * f_low) < -127 (f_low: the multiplier of u < 0; 0 for relu, never). Exact float64
    integers, clamped to the int32 range."""
    top = float(1 << 31)
    hi = np.minimum(np.floor(127.5 / f_pos), top)
    hi -= hi * f_pos >= 127.5                       # the division rounded up onto the boundary
    hi += (hi + 1) * f_pos < 127.5                  # or below it
    with np.errstate(divide="ignore"):
        lo = np.maximum(np.ceil(-127.5 / np.where(f_low > 0, f_low, np.nan)), -top)
    lo = np.where(np.isnan(lo), -top - 1, lo)
    lo += lo * f_low <= -127.5
    lo -= ((lo - 1) * f_low > -127.5) & (f_low > 0)
    return hi, lo


def _saturate32(r: np.ndarray, flagged: np.ndarray, wo: int) -> tuple[int, bool | set]:
    """Clip the rounded float32 band r (channels, rows, width) to +-127 and count the valid columns
    (< wo) beyond it: in every channel (returns True) or in the `flagged` ones (returns their set).
    Exact with the tie table: rounding is monotone, so rint(fl32(P)) > 127 iff P >= 127.5 except where
    fl32(P) == 127.5 while P < 127.5, a spurious tie at h = 127.5 that the caller's tie fix finds and
    subtracts where it was counted; unflagged channels reach no saturating accumulator."""
    if 4 * flagged.size >= r.shape[0]:            # most channels: whole-band passes beat fancy copies
        valid = r[:, :, :wo]
        sat = int(np.count_nonzero(valid > QMAX)) + int(np.count_nonzero(valid < -QMAX))
        np.clip(r, -QMAX, QMAX, out=r)
        return sat, True
    sat = 0
    for c in flagged.tolist():
        rc = r[c]
        valid = rc[:, :wo]
        sat += int(np.count_nonzero(valid > QMAX)) + int(np.count_nonzero(valid < -QMAX))
        np.clip(rc, -QMAX, QMAX, out=rc)
    return sat, set(flagged.tolist())


def requant_epilogue(y: np.ndarray, b_q: np.ndarray, f_pos: np.ndarray, f_neg: np.ndarray | None,
                     slope: float | None):
    """An epilogue for `conv_int_bands` writing int8 into y (n, Ho, Wo): q = sat8(rint(u*f)),
    u = acc + b the exact accumulator, f = f_pos (u >= 0) or f_neg (u < 0; relu: 0) per channel.
    Returns (epilogue, stats): stats collects (acc min, acc max, saturated) per band.

    Float32 where exact (module docstring): the spurious ties inside a band's range are recomputed
    in float64; max(fl32(a), fl32(b)) = fl32(max(a, b)), so leaky / relu keep the argument. Every
    per-channel threshold is computed here once, so that a band whose channels can neither saturate
    nor hold a tie (the usual case) costs its seven NumPy passes and a dozen small calls.
    """
    fp3 = f_pos.reshape(-1, 1, 1)
    fn3 = None if f_neg is None else f_neg.reshape(-1, 1, 1)
    pl = plan(f_pos, f_neg, slope)
    f_low, exact32, ties = pl.f_low, pl.exact32, pl.ties
    leaky = slope is not None and slope != 0.0
    bkey = (b_q.dtype.str, b_q.tobytes())         # the plan's slices are kept per bias too
    stats: list[tuple[int, int, int]] = []
    none = _NONE
    bufs: dict = {}
    folded = False

    def fold_bias() -> None:
        """The kernel adds the bias in its GEMM (`intops.conv_int_bands`): acc is u already."""
        nonlocal folded
        folded = True

    def rule64(v: np.ndarray, ch: slice, cs=slice(None)) -> np.ndarray:
        """The requantization products of float64 v (channels cs of band channels ch), in place."""
        w = np.multiply(v, fn3[ch][cs]) if leaky else None
        np.multiply(v, fp3[ch][cs], out=v)
        if slope == 0.0:
            np.maximum(v, 0.0, out=v)
        elif leaky:
            np.maximum(v, w, out=v)
        return v

    sgn = _SGN

    def epilogue(part: int, r0: int, r1: int, acc: np.ndarray, ch: slice) -> None:
        bc2, watch2, sat2, tc, tv, t2, b32c, fp32c, fn32c = pl.sliced(ch, b_q, bkey, folded)
        a2 = acc.reshape(acc.shape[0], -1)
        # ufunc.reduce, not ndarray.min/max: the methods' Python wrappers cost ~1 us a call, per band
        ext = np.empty((2, a2.shape[0]), acc.dtype)
        _MIN(a2, axis=1, out=ext[0])
        _MAX(a2, axis=1, out=ext[1])
        e = ext * sgn
        e += bc2                                              # [-lo, hi] of u = acc + b, float64: exact
        m = _MAX(e, axis=1)
        lo_min, hi_max = -float(m[0]), float(m[1])
        wo = y.shape[2]
        flagged, tie_c, tie_v = none, _NO_TIES[0], _NO_TIES[1]
        if _ANY(e >= watch2, axis=None):
            # the rule is monotone in u per channel: only channels whose extremes pass a saturation
            # bound can hold saturated values
            over = e > sat2
            if _ANY(over, axis=None):     # usually none: no per-channel pass and flatnonzero
                flagged = np.flatnonzero(_ANY(over, axis=0))
            if tc.size:                   # the ties inside a channel's [lo, hi]
                inside = _ALL(e[:, tc] >= t2, axis=0)
                tie_c, tie_v = tc[inside], tv[inside]
        sat = 0
        fast = (exact32 and acc.dtype != np.float64 and -EXACT_F32 < lo_min and hi_max < EXACT_F32
                and (acc.dtype == np.float32 or (-EXACT_F32 < float(_MIN(ext[0])) and float(_MAX(ext[1])) < EXACT_F32)))
        if fast:
            if acc.dtype == np.float32:
                u = acc
            else:                          # int32 (integer Winograd): one exact cast to float32
                u = band_buffer("u32", part, acc.shape, np.float32)
                np.copyto(u, acc)
            if not folded:
                u += b32c                  # exact float32 integers: |u| < 2**24
            key = (part, u.shape)
            vr = bufs.get(key)
            if vr is None:                 # the part's work buffers, looked up once per layer call
                vr = bufs[key] = (band_buffer("v32", part, u.shape, np.float32),
                                  band_buffer("r32", part, u.shape, np.float32))
            v, r = vr
            np.multiply(u, fp32c, out=v)
            if leaky:
                np.multiply(u, fn32c, out=r)
                np.maximum(v, r, out=v)
            elif slope == 0.0:
                np.maximum(v, 0.0, out=v)
            if flagged.size and ties is None:   # keep the int8 cast in range; recomputed exactly below
                v[flagged] = np.clip(v[flagged], -QMAX, QMAX)
            np.rint(v, out=r)
            counted = None
            if flagged.size and ties is not None:
                sat, counted = _saturate32(r, flagged, wo)
            y[ch, r0:r1] = r[:, :, :wo]
            if ties is not None:
                sat -= fix_ties(y, u, tie_c, tie_v, ch, r0, f_pos, f_low, counted)
                flagged = none             # saturated exactly in float32 (`_saturate32`)
            else:                          # every element: |v - rint(v)| == 0.5 marks a possible tie
                np.subtract(v, r, out=v)   # exact, in [-0.5, 0.5]
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
            stats.append((int(lo_min), int(hi_max), sat))
            return
        v = band_buffer("v", part, acc.shape)
        np.copyto(v, acc)        # one cast to float64: mixed-type ufuncs cast in slow buffered loops
        if not folded:
            v += b_q[ch].astype(np.float64).reshape(-1, 1, 1)
        rule64(v, ch)
        # clip-then-rint == rint-then-clip (integer bounds); counted on the valid columns only
        for c_i in flagged:
            vc = v[c_i]
            valid = vc[:, :wo]
            sat += int(np.count_nonzero(valid >= QMAX + 0.5)) + int(np.count_nonzero(valid <= -QMAX - 0.5))
            np.clip(vc, -QMAX, QMAX, out=vc)
        np.rint(v, out=v)
        y[ch, r0:r1] = v[:, :, :wo]                    # integral, in [-127, 127]: the cast is exact
        stats.append((int(lo_min), int(hi_max), sat))

    epilogue.fold_bias = fold_bias      # type: ignore[attr-defined]
    return epilogue, stats
