"""`minmax`: clip at the largest |x| seen (no clipping, coarsest steps)."""
from __future__ import annotations

from engine.calib.base import CALIBRATORS, Calibrator
from engine.calib.histogram import AbsHistogram


@CALIBRATORS.register("minmax")
class MinMaxCalibrator(Calibrator):
    name = "minmax"

    def threshold(self, h: AbsHistogram) -> float:
        return h.amax
