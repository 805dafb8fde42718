"""`mse`: the threshold minimising the expected squared quantization error over the histogram.

For threshold T (step d = T/127) a value v costs d^2/12 (uniform rounding error) if |v| <= T,
else (|v| - T)^2 (clipping). Candidates are the bin edges. Every candidate's error comes from prefix
sums (the clipped part expanded: sum n (c - T)^2 = sum n c^2 - 2T sum n c + T^2 sum n), in O(bins);
the few within a margin of the least, far above those sums' rounding, are evaluated term by term as
before, so the choice is the direct evaluation's, ties included.
"""
from __future__ import annotations

import numpy as np

from engine.calib.base import CALIBRATORS, Calibrator
from engine.calib.histogram import AbsHistogram


def expected_mse(counts: np.ndarray, centers: np.ndarray, thresholds: np.ndarray, block: int = 64) -> np.ndarray:
    """Per threshold, the expected squared error; `block` thresholds at a time (the same row sums, in cache)."""
    out = np.empty(len(thresholds))
    for lo in range(0, len(thresholds), block):
        t = thresholds[lo:lo + block, None]
        step = t / 127.0
        err = np.where(centers[None, :] <= t, step * step / 12.0, (centers[None, :] - t) ** 2)
        out[lo:lo + block] = (err * counts[None, :]).sum(axis=1)
    return out / max(1, counts.sum())


@CALIBRATORS.register("mse")
class MSECalibrator(Calibrator):
    name = "mse"

    def threshold(self, h: AbsHistogram) -> float:
        used = h.used_bins
        counts, centers = h.counts[:used], h.centers[:used]
        cands = np.arange(max(1, used // 64), used + 1) * h.bin_width
        cands = np.minimum(cands, h.amax)
        approx = _expected_mse_sums(counts, centers, cands)
        near = np.flatnonzero(approx <= approx.min() + 1e-9 * max(h.amax, centers[-1]) ** 2)
        return float(cands[near[int(np.argmin(expected_mse(counts, centers, cands[near])))]])


def _expected_mse_sums(counts: np.ndarray, centers: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """`expected_mse` from prefix sums, up to their rounding (about 1e-13 of max(center, T)^2 for 2048 bins):
    the centers <= T are found by the same float64 comparison (centers ascend)."""
    n = counts.astype(np.float64)
    c0 = np.concatenate([[0.0], np.cumsum(n)])
    c1 = np.concatenate([[0.0], np.cumsum(n * centers)])
    c2 = np.concatenate([[0.0], np.cumsum(n * centers * centers)])
    k = np.searchsorted(centers, thresholds, side="right")
    t = thresholds
    step = t / 127.0
    clipped = (c2[-1] - c2[k]) - 2 * t * (c1[-1] - c1[k]) + t * t * (c0[-1] - c0[k])
    return (c0[k] * (step * step / 12.0) + clipped) / max(1, counts.sum())
