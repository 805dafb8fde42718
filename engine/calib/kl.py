"""`kl`: TensorRT-style entropy calibration (Migacz, GTC 2017).

For each candidate i (bins kept), P = the first i bins with the clipped mass added to bin i-1,
Q = the first i bins merged into 128 levels and spread back over their non-empty bins; choose
the i minimising KL(P || Q); T = i * bin_width (upper edge of the last kept bin).

    |#####|####|###|##|#|    |    |  :  outliers  ->  P[i-1] += mass beyond i
    |<-------- i bins -------->|
    Q: i bins -> 128 groups of ~i/128 bins, each group's mass spread over its non-zero bins
"""
from __future__ import annotations

import numpy as np

from engine.calib.base import CALIBRATORS, Calibrator
from engine.calib.histogram import AbsHistogram

LEVELS = 128
EPS = 1e-4   # smoothing as MXNet/TVM: eps added to empty bins, taken proportionally from the others


def _smooth(p: np.ndarray) -> np.ndarray | None:
    zeros = p == 0
    nz = int((~zeros).sum())
    if nz == 0:
        return None
    eps1 = EPS * zeros.sum() / nz
    if eps1 >= 1.0:
        return None
    out = p.astype(np.float64).copy()
    out[zeros] = EPS
    out[~zeros] -= eps1
    if (out <= 0).any():  # a bin smaller than its share of the smoothing mass: skip this candidate
        return None
    return out


def kl_divergence(counts: np.ndarray, i: int, levels: int = LEVELS) -> float:
    p = counts[:i].astype(np.float64).copy()
    p[i - 1] += counts[i:].sum()
    bounds = np.linspace(0, i, levels + 1).astype(np.int64)   # contiguous groups of ~i/levels bins
    src = counts[:i].astype(np.float64)
    sums = np.add.reduceat(src, bounds[:-1])
    nonzero = np.add.reduceat((src > 0).astype(np.float64), bounds[:-1])
    per_bin = np.divide(sums, nonzero, out=np.zeros_like(sums), where=nonzero > 0)
    q = np.repeat(per_bin, np.diff(bounds)) * (src > 0)
    if p.sum() == 0 or q.sum() == 0:
        return np.inf
    p /= p.sum()
    q /= q.sum()
    ps, qs = _smooth(p), _smooth(q)
    if ps is None or qs is None:
        return np.inf
    return float(np.sum(ps * np.log(ps / qs)))


@CALIBRATORS.register("kl")
class KLCalibrator(Calibrator):
    name = "kl"

    def __init__(self, stride: int = 1, **settings) -> None:
        super().__init__(**({"stride": stride} if stride != 1 else {}), **settings)
        self.stride = max(1, int(stride))

    def threshold(self, h: AbsHistogram) -> float:
        used = int(np.ceil(h.amax / h.bin_width))
        if used <= LEVELS:
            return h.amax
        counts = h.counts[:used]
        cands = range(LEVELS, used + 1, self.stride)
        divs = [kl_divergence(counts, i) for i in cands]
        best = list(cands)[int(np.argmin(divs))]
        return min(h.amax, best * h.bin_width)
