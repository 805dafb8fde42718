"""`yolo2_light`: yolo2_light's own scheme, for parity with that tool.

Weights: the log2 octave window on *signed* values, multiplier 2**(14 - j*), truncation
(darknet-semantics.md C.1; engine/quant/weights.py). Activations: its entropy calibration
`entropy_calibration(x, n, 1/16, 4096)` (C.6): a fixed 1/16 bin width, candidate i in
128..4095, levels by lround(j*128/i), outliers added after Q is built, FLT_MIN smoothing;
threshold (i* + 0.5)/16. Our histogram is re-binned to the 1/16 grid (counts at bin centres).
"""
from __future__ import annotations

import numpy as np

from engine.calib.base import CALIBRATORS, Calibrator
from engine.calib.histogram import AbsHistogram

BIN_WIDTH = 1.0 / 16
MAX_BIN = 4096
FLT_MIN = np.float32(1.17549435e-38)


def y2l_entropy_threshold(hist: np.ndarray) -> float:
    """hist: counts of |x| on y2l's grid (bin b = lround(|x|*16), saturating at 4095)."""
    best_i, best_kl = 128, np.inf
    nz = hist > 0
    for i in range(128, MAX_BIN):
        p = hist[:i].astype(np.float64)
        outliers = hist[i:].sum()
        level = np.minimum(np.floor(np.arange(i) * 128.0 / i + 0.5).astype(np.int64), 127)
        sums = np.bincount(level, weights=p, minlength=128)
        cnt = np.bincount(level, weights=nz[:i].astype(np.float64), minlength=128)
        q = np.where(nz[:i], np.divide(sums, cnt, out=np.zeros(128), where=cnt > 0)[level], 0.0)
        p = p.copy()
        p[i - 1] += outliers
        if p.sum() == 0 or q.sum() == 0:
            continue
        p /= p.sum()
        q /= q.sum()
        kl = float(np.sum(p * np.log((p + FLT_MIN) / (q + FLT_MIN))))
        if kl < best_kl:
            best_i, best_kl = i, kl
    return (best_i + 0.5) * BIN_WIDTH


def rebin_to_y2l_grid(h: AbsHistogram) -> np.ndarray:
    b = np.minimum(np.floor(h.centers / BIN_WIDTH + 0.5).astype(np.int64), MAX_BIN - 1)
    return np.bincount(b, weights=h.counts, minlength=MAX_BIN)[:MAX_BIN]


@CALIBRATORS.register("yolo2_light")
class Yolo2LightCalibrator(Calibrator):
    name = "yolo2_light"
    weights = "yolo2_light"

    def threshold(self, h: AbsHistogram) -> float:
        return min(h.amax, y2l_entropy_threshold(rebin_to_y2l_grid(h)))
