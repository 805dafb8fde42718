"""`aciq`: the analytic clip of ACIQ (Banner, Nahshan, Soudry 2019) for a Laplace-shaped tensor.

With |x| ~ Exponential(b) (a Laplace(0, b) folded, or the positive side of a leaky output) the
clip minimising the expected rounding + clipping error at 8 bits is T = 9.89 b (their table:
2.83 b at 2 bits ... 9.89 b at 8), b = E|x| read from the histogram. One pass over the counts:
the cheapest threshold here, and the least data-hungry (no search, no tail statistics).
"""
from __future__ import annotations

import numpy as np

from engine.calib.base import CALIBRATORS, Calibrator, int_setting
from engine.calib.histogram import AbsHistogram

LAPLACE_ALPHA = {2: 2.83, 3: 3.89, 4: 5.03, 5: 6.2, 6: 7.41, 7: 8.64, 8: 9.89}


@CALIBRATORS.register("aciq")
class ACIQCalibrator(Calibrator):
    name = "aciq"

    def __init__(self, bits: int = 8, **settings) -> None:
        bits = int_setting("aciq", "bits", bits, min(LAPLACE_ALPHA), max(LAPLACE_ALPHA))
        super().__init__(**({"bits": bits} if bits != 8 else {}), **settings)
        self.alpha = LAPLACE_ALPHA[bits]

    def threshold(self, h: AbsHistogram) -> float:
        n = h.counts.sum()
        if n == 0:
            return h.amax
        b = float((h.counts * h.centers).sum() / n)          # E|x| at bin centres
        return float(min(h.amax, self.alpha * b))
