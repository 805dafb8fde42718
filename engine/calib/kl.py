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

from engine.calib.base import CALIBRATORS, Calibrator, int_setting, number_setting
from engine.calib.histogram import NBINS, AbsHistogram

LEVELS = 128
# smoothing as MXNet / TVM / ONNX Runtime: EPS added to every empty bin of the *count* histograms, taken
# proportionally from the others, before they are normalised. (Smoothing the normalised distributions with
# the same EPS, as this module did before, moved ~1e-4 of the mass, a thousand counts on a 4-photo
# calibration: every sparse tail bin below that made its candidate infeasible, so KL could not choose a
# threshold past it and clipped 1.5-2x below what MXNet's rule picks; docs/quantization.md round 7.)
EPS = 1e-4
# KL may clip at most this fraction of the calibration values (a threshold at least their 1 - CLIP_MAX
# quantile). KL fits the calibration images' histogram; on other photos, noise or contrast a dense tail moves,
# and clipping it costs most there: on yolov3-tiny KL clipped conv 2 at .35 of its range (0.15% of its values),
# conv 4 at .41 (0.09%). A lone outlier (fewer values than this) is still clipped, as TensorRT's rule does.
# Measured on 19 validation sets: docs/quantization.md, round 10. `{"clip_max": 1}`: TensorRT's rule alone.
CLIP_MAX = 1e-4


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
    ps, qs = _smooth(p), _smooth(q)          # the count histograms, as MXNet's _smooth_distribution
    if ps is None or qs is None:
        return np.inf
    ps /= ps.sum()
    qs /= qs.sum()
    return float(np.sum(ps * np.log(ps / qs)))


def _kl_all(counts: np.ndarray, cands: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`kl_divergence(counts, i)` for every i in `cands` at once, up to rounding (other summation order).

    Returns (kl, uncertain): kl is inf where the reference returns inf; `uncertain` marks candidates
    whose smoothing feasibility is too close to call, so the caller evaluates them exactly.
    With p = counts/N (outliers in bin i-1), a/b the smoothing shares of p/q, q = v_g on the
    non-empty bins of group g: KL = sum (p-a) log(p-a) - sum_g log(v_g - b) * sum_{j in g} (p_j - a)
    (+ the bin i-1 term when it holds only outliers): the second sum needs 128 logs per candidate.
    """
    c = counts.astype(np.float64)
    n_all = c.sum()
    cum = np.concatenate([[0.0], np.cumsum(c)])
    nzb = c > 0
    cum_nz = np.concatenate([[0], np.cumsum(nzb)])
    i = np.asarray(cands, np.int64)
    kl = np.full(i.shape, np.inf)
    uncertain = np.zeros(i.shape, bool)
    if n_all == 0:
        return kl, uncertain
    pc = c / n_all                                   # p before the outliers are added (as the reference)
    out_mass = n_all - cum[i]                        # outliers, an exact integer
    nnz = cum_nz[i]
    last_nz = nzb[i - 1]
    special = ~last_nz & (out_mass > 0)              # bin i-1: p > 0 (outliers only), q = 0
    zeros_q = i - nnz
    nnz_p = nnz + special
    with np.errstate(divide="ignore", invalid="ignore"):
        # EPS on the count histograms is EPS / (their total) on the normalised ones: p's total is every
        # value, q's the values below the candidate
        eps_p, eps_q = np.full(i.shape, EPS / n_all), EPS / cum[i]
        a = eps_p * (zeros_q - special) / nnz_p
        b = eps_q * zeros_q / nnz
        bounds = np.linspace(0, i, LEVELS + 1, axis=1).astype(np.int64)
        s_g = cum[bounds[:, 1:]] - cum[bounds[:, :-1]]
        z_g = cum_nz[bounds[:, 1:]] - cum_nz[bounds[:, :-1]]
        q_g = s_g / (z_g * cum[i][:, None])          # normalised q on the non-empty bins of group g
        q_s = np.where(z_g > 0, q_g - b[:, None], np.inf)
        p_last = (c[i - 1] + out_mass) / n_all
        # smallest p among non-empty bins below i-1 (prefix minimum), then bin i-1
        pmin_prefix = np.concatenate([[np.inf], np.minimum.accumulate(np.where(nzb, pc, np.inf))])[i - 1]
        p_min = np.minimum(pmin_prefix, np.where(p_last > 0, p_last, np.inf)) - a
        q_min = q_s.min(axis=1)
    ok = (cum[i] > 0) & (nnz > 0) & (nnz_p > 0) & (a < 1) & (b < 1)
    margin = 1e-9 * np.maximum(1e-300, np.maximum(pc.max(), 1e-300))
    uncertain = ok & ((np.abs(p_min) <= margin) | (np.abs(q_min) <= 1e-9 * np.nanmax(np.where(z_g > 0, q_g, 0), axis=1)))
    ok &= (p_min > 0) & (q_min > 0)
    rows = np.flatnonzero(ok)
    if rows.size == 0:
        return kl, uncertain
    i_r, a_r = i[rows], a[rows]
    # sum over non-empty bins j < i-1 of (p_j - a) log(p_j - a): ragged rows of the non-empty bins
    nz_idx = np.flatnonzero(nzb)
    lens = cum_nz[i_r - 1]
    starts = np.cumsum(lens) - lens
    pos = np.arange(int(lens.sum())) - np.repeat(starts, lens)
    ps = pc[nz_idx[pos]] - np.repeat(a_r, lens)
    terms = ps * np.log(ps)
    t1 = np.zeros(rows.size)
    has = lens > 0
    if terms.size:
        t1[has] = np.add.reduceat(terms, starts[has])
    pl = p_last[rows] - a_r
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 += np.where(last_nz[rows], pl * np.log(np.where(last_nz[rows], pl, 1.0)), 0.0)
        # sum_g log(q_g - b) * (mass of p - a over the group's non-empty bins)
        ps_g = s_g[rows] / n_all - a_r[:, None] * z_g[rows]
        ps_g[:, -1] += np.where(last_nz[rows], out_mass[rows] / n_all, 0.0)
        t2 = np.where(z_g[rows] > 0, np.log(np.where(z_g[rows] > 0, q_s[rows], 1.0)) * ps_g, 0.0).sum(axis=1)
        sp = special[rows]
        t3 = np.where(sp, pl * np.log(np.where(sp, pl, 1.0) / eps_q[rows]), 0.0)
        # the empty bins of p (q's too): eps_p log(eps_p / eps_q) each
        t4 = (zeros_q[rows] - special[rows]) * eps_p[rows] * np.log(eps_p[rows] / eps_q[rows])
    kl[rows] = t1 - t2 + t3 + t4
    return kl, uncertain


def kl_best(counts: np.ndarray, cands: np.ndarray) -> int:
    """The candidate with the least `kl_divergence` (first on ties), exactly as a loop over all of them.

    `_kl_all` ranks every candidate; those within a tolerance of the minimum (far above its rounding
    error) and the borderline ones are re-evaluated with `kl_divergence` itself, so the choice is the
    reference's, including its tie-breaking.
    """
    cands = np.asarray(cands, np.int64)
    approx, uncertain = _kl_all(counts, cands)
    finite = np.isfinite(approx)
    if finite.any():
        lo = approx[finite].min()
        near = (approx <= lo + 1e-9 * (1 + abs(lo))) | uncertain
    else:
        near = uncertain
    check = np.flatnonzero(near)
    if check.size == 0:
        return int(cands[0])                          # every candidate is inf: argmin picks the first
    exact = [kl_divergence(counts, int(cands[k])) for k in check]
    return int(cands[check[int(np.argmin(exact))]]) if np.isfinite(min(exact)) or not finite.any() \
        else int(cands[0])


@CALIBRATORS.register("kl")
class KLCalibrator(Calibrator):
    name = "kl"

    def __init__(self, stride: int = 1, clip_max: float = CLIP_MAX, **settings) -> None:
        stride = int_setting("kl", "stride", stride, 1, NBINS)   # candidates every `stride` bins
        clip_max = number_setting("kl", "clip_max", clip_max, 0.0, 1.0, closed=True)
        super().__init__(**({"stride": stride} if stride != 1 else {}),
                         **({"clip_max": clip_max} if clip_max != CLIP_MAX else {}), **settings)
        self.stride, self.clip_max = stride, clip_max

    def threshold(self, h: AbsHistogram) -> float:
        # scale() and quantize_model both ask for the threshold of the same histogram: remember the
        # last answer, keyed by the histogram's full content (so it is exact, never stale)
        key = (h.hi, h.amax, h.total, h.counts.tobytes())
        memo = getattr(self, "_memo", None)
        if memo is not None and memo[0] == key:
            return memo[1]
        t = self._search(h)
        self._memo = (key, t)
        return t

    def _search(self, h: AbsHistogram) -> float:
        used = h.used_bins
        if used <= LEVELS:
            return h.amax
        counts = h.counts[:used]
        first = LEVELS
        if self.clip_max < 1:       # the candidates that clip at most clip_max of the values
            cdf = np.cumsum(counts)
            first = max(first, int(np.searchsorted(cdf, (1 - self.clip_max) * cdf[-1], side="left")) + 1)
        best = kl_best(counts, np.arange(min(first, used), used + 1, self.stride))
        return min(h.amax, best * h.bin_width)
