"""`log2`: power-of-two scales (every requantization becomes a pure shift), after yolo2_light.

Weights use yolo2_light's log2-distribution rule (engine/quant/weights.py): octave k holds |w| in
[2**(k-16), 2**(k-15)) and the densest window of `bits` adjacent octaves sets the scale.
For activations that window rule (`rule="window"`) clips hard on long-tailed outputs (on
yolov3-tiny it picks T = 4 where |x| reaches 48), so the default (`rule="mse"`) picks, among the
powers of two, the scale with the least expected quantization error over the histogram.
"""
from __future__ import annotations

import numpy as np

from engine.calib.mse import expected_mse

from engine.calib.base import CALIBRATORS, Calibrator, int_setting
from engine.errors import ArgumentError
from engine.calib.histogram import AbsHistogram

OCTAVES = 32
SMALLEST_EXP = -16


def densest_window(counts: np.ndarray, bits: int) -> int:
    """Start of the window of `bits` octaves with the largest count (first on ties; 0 if empty)."""
    window = np.convolve(counts, np.ones(bits, np.int64))[bits - 1:]  # window j = counts[j:j+bits]
    return int(np.argmax(window)) if counts.any() else 0


def octave_counts_from_histogram(h: AbsHistogram) -> np.ndarray:
    """Octave counts of |x| from the linear histogram (each bin counted at its centre)."""
    k = np.floor(np.log2(h.centers)).astype(np.int64) - SMALLEST_EXP
    ok = (k >= 0) & (k < OCTAVES)
    return np.bincount(k[ok], weights=h.counts[ok], minlength=OCTAVES).astype(np.int64)


@CALIBRATORS.register("log2")
class Log2Calibrator(Calibrator):
    name = "log2"
    power_of_two = True
    weights = "log2"

    def __init__(self, bits: int = 8, rule: str = "mse", **settings) -> None:
        if rule not in ("mse", "window"):
            raise ArgumentError(f"log2 rule={rule!r}: expected 'mse' or 'window'")
        bits = int_setting("log2", "bits", bits, 1, OCTAVES)     # a window of 1..32 octaves
        extra = {"bits": bits} if bits != 8 else {}
        super().__init__(**extra, **({"rule": rule} if rule != "mse" else {}), **settings)
        self.bits, self.rule = bits, rule

    def threshold(self, h: AbsHistogram) -> float:
        if self.rule == "window":
            j = densest_window(octave_counts_from_histogram(h), self.bits)
            return min(h.amax, 2.0 ** (j + self.bits + SMALLEST_EXP))
        top = int(np.ceil(np.log2(h.amax / 127)))              # the power of two that clips nothing
        ks = np.arange(top - 8, top + 1)
        used = int(np.ceil(h.amax / h.bin_width))
        errs = expected_mse(h.counts[:used], h.centers[:used], 127.0 * 2.0 ** ks)
        return float(127.0 * 2.0 ** ks[int(np.argmin(errs))])
