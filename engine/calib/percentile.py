"""`percentile`: clip at the p-th percentile of |x| (default 99.99)."""
from __future__ import annotations

import numpy as np

from engine.calib.base import CALIBRATORS, Calibrator, number_setting
from engine.calib.histogram import AbsHistogram


@CALIBRATORS.register("percentile")
class PercentileCalibrator(Calibrator):
    name = "percentile"

    def __init__(self, percentile: float = 99.99, **settings) -> None:
        percentile = number_setting("percentile", "percentile", percentile, 0, 100)
        super().__init__(percentile=percentile, **settings)
        self.percentile = percentile

    def threshold(self, h: AbsHistogram) -> float:
        cdf = np.cumsum(h.counts)
        target = self.percentile / 100.0 * cdf[-1]
        b = int(np.searchsorted(cdf, target, side="left"))
        return min(h.amax, (b + 1) * h.bin_width)   # upper edge of the bin reaching the percentile
