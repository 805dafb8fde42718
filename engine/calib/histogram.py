"""Mergeable histogram of |x|, the one statistic every activation calibrator reads.

The range is [0, hi) with `nbins` equal bins and hi a power of two. When a value >= hi arrives,
hi doubles and adjacent bin pairs are summed, which is exact, so histograms from different images,
batches or Dask workers add up to exactly the histogram of all the data, in any order.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numpy as np

NBINS = 2048
_local = threading.local()


def _buffer(name: str, n: int, dtype) -> np.ndarray:
    """A per-thread work buffer of at least n elements (grown, never shrunk), as a 1-D view."""
    buf = getattr(_local, name, None)
    if buf is None or buf.size < n:
        buf = np.empty(max(n, 1), dtype)
        setattr(_local, name, buf)
    return buf[:n]


def _min_positive(x: np.ndarray, pos: np.ndarray) -> float:
    """The smallest value > 0 of x (which has one). For float32, positive floats order as their bit
    patterns and bits - 1 sends +0 and every negative (sign bit set) above them: one integer min,
    where np.min(x, where=pos) takes 20x longer."""
    if x.dtype == np.float32 and x.flags.c_contiguous:
        bits = _buffer("bits", x.size, np.uint32)
        np.subtract(x.reshape(-1).view(np.uint32), np.uint32(1), out=bits)
        return float(np.array(int(bits.min()) + 1, np.uint32).view(np.float32))
    return float(np.min(x, where=pos, initial=np.inf))


@dataclass
class AbsHistogram:
    nbins: int = NBINS
    hi: float = 0.0                     # 0 while empty; otherwise a power of two > every |x| seen
    counts: np.ndarray = field(default_factory=lambda: np.zeros(NBINS, np.int64))
    amax: float = 0.0                   # exact max |x|
    lo_signed: float = 0.0              # exact signed min / max (for range-utilisation statistics)
    hi_signed: float = 0.0
    total: int = 0

    @property
    def bin_width(self) -> float:
        return self.hi / self.nbins

    @property
    def used_bins(self) -> int:
        """How many bins from 0 hold values: up to amax's own. A value on an edge k * width counts in bin k
        (observe truncates), so this is floor + 1, not ceil (which left amax's bin out when it sat on an edge:
        the searches of log2, mse and kl then never saw the image's pixels at 1.0)."""
        return min(self.nbins, math.floor(self.amax / self.bin_width) + 1)     # exact: the width is a power of two

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(0.0, self.hi, self.nbins + 1)

    @property
    def centers(self) -> np.ndarray:
        return (np.arange(self.nbins) + 0.5) * self.bin_width

    def _grow_to(self, hi: float) -> None:
        while self.hi < hi:
            pairs = self.counts.reshape(-1, 2).sum(axis=1)
            self.counts = np.concatenate([pairs, np.zeros(self.nbins // 2, np.int64)])
            self.hi *= 2

    def observe(self, x: np.ndarray) -> None:
        """Add the values of a float array."""
        if x.size == 0:
            return
        if self._add_range(float(x.min()), float(x.max()), x.size):
            self.counts += np.bincount(self._bins(x, absolute=True), minlength=self.nbins)

    def _add_range(self, xmin: float, xmax: float, size: int) -> bool:
        """Update the exact statistics and grow the range for values in [xmin, xmax]; False when they
        are all zero (then already counted in bin 0)."""
        amax = max(-xmin, xmax)
        if not math.isfinite(amax):
            raise ValueError("AbsHistogram.observe: values must be finite")
        if self.total == 0:
            self.lo_signed, self.hi_signed = xmin, xmax
        else:
            self.lo_signed, self.hi_signed = min(self.lo_signed, xmin), max(self.hi_signed, xmax)
        self.total += size
        self.amax = max(self.amax, amax)
        if amax == 0:
            self.counts[0] += size
            return False
        need = 2.0 ** (math.floor(math.log2(amax)) + 1)     # smallest power of two > amax
        if self.hi == 0:
            self.hi = need
        else:
            self._grow_to(need)
        return True

    def _bins(self, x: np.ndarray, absolute: bool) -> np.ndarray:
        """Bin indices of |x| (absolute) or of x truncated toward zero (signed, in (-nbins, nbins))."""
        factor = self.nbins / self.hi                      # a power of two: x * factor is exact
        if x.dtype == np.float32 and factor < 2.0 ** 127:
            idx = _buffer("abs", x.size, np.float32)     # reused: no fresh pages per tensor
            if absolute:
                np.abs(x.reshape(-1), out=idx)
                idx *= np.float32(factor)
            else:
                np.multiply(x.reshape(-1), np.float32(factor), out=idx)
        else:
            # float64 (a value just below hi must not round up to hi in float32) and tiny ranges
            # (factor beyond float32) are binned in float64, which is exact for every float type
            idx = x.astype(np.float64).reshape(-1)
            if absolute:
                np.abs(idx, out=idx)
            idx *= factor
        bins = _buffer("bins", idx.size, np.intp)
        np.copyto(bins, idx, casting="unsafe")             # truncation toward zero (= floor for |x|)
        return bins

    def observe_with_positive(self, positive: "AbsHistogram", x: np.ndarray) -> None:
        """observe(x) here and positive.observe(x[x > 0]), with one binning pass when both ranges agree
        (the usual case: a leaky output's largest |x| is positive). Same counts as the two calls:
        x truncated toward zero gives |x|'s bin on both sides, and the positive side's bin 0 is the
        positive count minus its other bins."""
        if x.size == 0:
            return
        xmin, xmax = float(x.min()), float(x.max())
        pos = x > 0
        n_pos = int(np.count_nonzero(pos))
        if not self._add_range(xmin, xmax, x.size):
            return                                         # all zero: nothing positive either
        if n_pos == 0:
            self.counts += np.bincount(self._bins(x, absolute=True), minlength=self.nbins)
            return
        pmin = _min_positive(x, pos)
        positive._add_range(pmin, xmax, n_pos)
        if positive.hi != self.hi or positive.nbins != self.nbins:
            self.counts += np.bincount(self._bins(x, absolute=True), minlength=self.nbins)
            positive.counts += np.bincount(positive._bins(x[pos], absolute=True), minlength=positive.nbins)
            return
        n = self.nbins
        bins = self._bins(x, absolute=False)
        bins += n
        c = np.bincount(bins, minlength=2 * n)
        upper = c[n + 1:2 * n]
        self.counts[0] += c[n]
        self.counts[1:] += upper + c[n - 1:0:-1]
        positive.counts[1:] += upper
        positive.counts[0] += n_pos - int(upper.sum())

    def merge(self, other: "AbsHistogram") -> "AbsHistogram":
        """A new histogram of both data sets (exact)."""
        if self.nbins != other.nbins:
            raise ValueError(f"cannot merge histograms with {self.nbins} and {other.nbins} bins")
        a, b = self.copy(), other.copy()
        if a.total == 0:
            return b
        if b.total == 0:
            return a
        hi = max(a.hi, b.hi)
        if hi:
            if a.hi == 0:
                a.hi = hi
            if b.hi == 0:
                b.hi = hi
            a._grow_to(hi)
            b._grow_to(hi)
        a.counts = a.counts + b.counts
        a.amax = max(a.amax, b.amax)
        a.lo_signed, a.hi_signed = min(a.lo_signed, b.lo_signed), max(a.hi_signed, b.hi_signed)
        a.total += b.total
        return a

    def copy(self) -> "AbsHistogram":
        return AbsHistogram(self.nbins, self.hi, self.counts.copy(), self.amax, self.lo_signed, self.hi_signed,
                            self.total)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts, "meta": np.array([self.hi, self.amax, self.lo_signed, self.hi_signed,
                                                         float(self.total)], np.float64)}

    @classmethod
    def from_arrays(cls, counts: np.ndarray, meta: np.ndarray) -> "AbsHistogram":
        """From `to_arrays`'s pair, read from a file: ValueError names what is damaged (a NaN or negative
        count, an infinite range) rather than letting it become a meaningless threshold later."""
        counts, meta = np.asarray(counts), np.asarray(meta)
        if counts.ndim != 1 or counts.size == 0 or counts.dtype.kind not in "iuf":
            raise ValueError(f"counts must be a 1-D array of numbers, got {counts.dtype} of shape {counts.shape}")
        if counts.dtype.kind == "f" and not (np.isfinite(counts).all() and (counts == np.round(counts)).all()):
            raise ValueError("counts must be whole numbers (found NaN, infinity or a fraction)")
        if (counts < 0).any():
            raise ValueError("counts must be >= 0")
        if meta.shape != (5,) or meta.dtype.kind not in "iuf" or not np.isfinite(meta).all():
            raise ValueError(f"meta must be 5 finite numbers (range, max |x|, signed min and max, count), got {meta!r}")
        hi, amax, lo, hs, total = (float(v) for v in meta)
        if hi < 0 or amax < 0 or total < 0 or total != round(total):
            raise ValueError(f"meta holds a negative range, max |x| or count, or a fractional count: {meta!r}")
        return cls(len(counts), hi, counts.astype(np.int64), amax, lo, hs, int(total))
