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


def y2l_kl(hist: np.ndarray, i: int) -> float:
    """KL of candidate i exactly as y2l's loop computes it (nan where it skips the candidate)."""
    nz = hist > 0
    p = hist[:i].astype(np.float64)
    outliers = hist[i:].sum()
    level = np.minimum(np.floor(np.arange(i) * 128.0 / i + 0.5).astype(np.int64), 127)
    sums = np.bincount(level, weights=p, minlength=128)
    cnt = np.bincount(level, weights=nz[:i].astype(np.float64), minlength=128)
    q = np.where(nz[:i], np.divide(sums, cnt, out=np.zeros(128), where=cnt > 0)[level], 0.0)
    p = p.copy()
    p[i - 1] += outliers
    if p.sum() == 0 or q.sum() == 0:
        return float("nan")
    p /= p.sum()
    q /= q.sum()
    return float(np.sum(p * np.log((p + FLT_MIN) / (q + FLT_MIN))))


def y2l_entropy_threshold_naive(hist: np.ndarray) -> float:
    """Reference: y2l's loop over every candidate (the first minimum wins)."""
    best_i, best_kl = 128, np.inf
    for i in range(128, MAX_BIN):
        kl = y2l_kl(hist, i)
        if kl < best_kl:
            best_i, best_kl = i, kl
    return (best_i + 0.5) * BIN_WIDTH


def _y2l_kl_all(hist: np.ndarray, cands: np.ndarray) -> np.ndarray:
    """`y2l_kl` for all candidates up to rounding, with prefix sums (nan where y2l skips).

    Level of bin j is floor((256 j + i) / (2 i)) capped at 127 (the float lround of j*128/i is never
    within rounding of a half), so level g starts at bin ceil(i (2g - 1) / 256). On non-empty bins
    p + FLT_MIN == p and q + FLT_MIN == q in float64, so KL = sum p log p - sum_g log q_g * P_g,
    plus p log(p / FLT_MIN) for a bin i-1 that holds only outliers.
    """
    h = hist.astype(np.float64)
    n_all = h.sum()
    i = np.asarray(cands, np.int64)
    kl = np.full(i.shape, np.nan)
    cum = np.concatenate([[0.0], np.cumsum(h)])
    if n_all == 0:
        return kl
    nzb = h > 0
    cum_nz = np.concatenate([[0], np.cumsum(nzb)])
    pn = h / n_all
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(nzb, pn * np.log(np.where(nzb, pn, 1.0)), 0.0)
    cum_plogp = np.concatenate([[0.0], np.cumsum(plogp)])
    g = np.arange(1, 128)
    starts = np.minimum(-((-i[:, None] * (2 * g - 1)) // 256), i[:, None])        # ceil, capped at i
    bounds = np.concatenate([np.zeros((i.size, 1), np.int64), starts, i[:, None]], axis=1)
    s_g = cum[bounds[:, 1:]] - cum[bounds[:, :-1]]
    z_g = cum_nz[bounds[:, 1:]] - cum_nz[bounds[:, :-1]]
    out_mass = n_all - cum[i]
    last_nz = nzb[i - 1]
    p_last = (h[i - 1] + out_mass) / n_all
    with np.errstate(divide="ignore", invalid="ignore"):
        q_g = s_g / (z_g * cum[i][:, None])
        mass_g = s_g / n_all
        mass_g[:, -1] += np.where(last_nz, out_mass / n_all, 0.0)
        t2 = np.where(z_g > 0, np.log(np.where(z_g > 0, q_g, 1.0)) * mass_g, 0.0).sum(axis=1)
        special = ~last_nz & (out_mass > 0)                 # bin i-1 holds only outliers: q = 0 there
        safe = np.where(p_last > 0, p_last, 1.0)
        t1 = cum_plogp[i - 1] + np.where(last_nz, p_last * np.log(safe), 0.0)
        t3 = np.where(special, p_last * np.log(safe / np.float64(FLT_MIN)), 0.0)
    ok = cum[i] > 0
    kl[ok] = (t1 - t2 + t3)[ok]
    return kl


def y2l_entropy_threshold(hist: np.ndarray) -> float:
    """hist: counts of |x| on y2l's grid (bin b = lround(|x|*16), saturating at 4095).

    All candidates are ranked at once (`_y2l_kl_all`); those within a tolerance of the minimum (far
    above its rounding error) are re-evaluated with `y2l_kl`, so the result is the reference loop's,
    first-minimum tie-breaking included (`y2l_entropy_threshold_naive`).
    """
    cands = np.arange(128, MAX_BIN)
    approx = _y2l_kl_all(hist, cands)
    finite = np.isfinite(approx)
    if not finite.any():
        return (128 + 0.5) * BIN_WIDTH
    lo = approx[finite].min()
    best_i, best_kl = 128, np.inf
    for k in np.flatnonzero(finite & (approx <= lo + 1e-9 * (1 + abs(lo)))):
        kl = y2l_kl(hist, int(cands[k]))
        if kl < best_kl:
            best_i, best_kl = int(cands[k]), kl
    return (best_i + 0.5) * BIN_WIDTH


def rebin_to_y2l_grid(h: AbsHistogram) -> np.ndarray:
    b = np.minimum(np.floor(h.centers / BIN_WIDTH + 0.5).astype(np.int64), MAX_BIN - 1)
    return np.bincount(b, weights=h.counts, minlength=MAX_BIN)[:MAX_BIN]


@CALIBRATORS.register("yolo2_light")
class Yolo2LightCalibrator(Calibrator):
    name = "yolo2_light"
    weights = "yolo2_light"
    rules = ()

    def threshold(self, h: AbsHistogram) -> float:
        # asked twice per tensor (scale() and quantize_model): remember the last answer by content
        key = (h.hi, h.amax, h.total, h.counts.tobytes())
        memo = getattr(self, "_memo", None)
        if memo is not None and memo[0] == key:
            return memo[1]
        t = min(h.amax, y2l_entropy_threshold(rebin_to_y2l_grid(h)))
        self._memo = (key, t)
        return t
