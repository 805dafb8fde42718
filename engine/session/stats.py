"""Inspection data for one tensor: summary statistics and histogram counts (what panels show)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class TensorSummary:
    shape: tuple[int, ...]
    min: float
    max: float
    mean: float
    std: float
    zeros: float                 # fraction of exact zeros
    range_use: float | None      # max|q| / 127 for int8 tensors
    saturation: float | None     # saturated / values, when known

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(x: np.ndarray, q: np.ndarray | None = None, saturated: int | None = None) -> TensorSummary:
    x64 = x.astype(np.float64, copy=False)
    return TensorSummary(tuple(x.shape), float(x64.min()), float(x64.max()), float(x64.mean()), float(x64.std()),
                         float(np.count_nonzero(x == 0) / max(1, x.size)),
                         float(np.abs(q.astype(np.int16)).max() / 127) if q is not None and q.size else None,
                         None if saturated is None else saturated / max(1, x.size))


def histogram(x: np.ndarray, bins: int = 64, log2: bool = False, lo: float | None = None,
              hi: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(counts, edges). log2=True bins |x| by octave (edges 2**k), zeros counted in the first bin."""
    if log2:
        a = np.abs(x[x != 0]).astype(np.float64)
        if a.size == 0:
            return np.array([x.size]), np.array([0.0, 1.0])
        _, e = np.frexp(a)
        k0, k1 = int(e.min()) - 1, int(e.max())
        counts = np.bincount(e - 1 - k0, minlength=k1 - k0)
        counts[0] += x.size - a.size
        return counts, np.ldexp(1.0, np.arange(k0, k1 + 1))
    lo = float(x.min()) if lo is None else lo
    hi = float(x.max()) if hi is None else hi
    if hi <= lo:
        hi = lo + 1.0
    return np.histogram(x, bins=bins, range=(lo, hi))
