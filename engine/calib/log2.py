"""`log2`: power-of-two scales (every requantization becomes a pure shift), after yolo2_light.

Weights use yolo2_light's log2-distribution rule (engine/quant/weights.py): octave k holds |w| in
[2**(k-16), 2**(k-15)) and the densest window of `bits` adjacent octaves sets the scale.
For activations that window rule (`rule="window"`) clips hard on long-tailed outputs (on
yolov3-tiny it picks T = 4 where |x| reaches 48), so the default (`rule="mse"`) picks, among the
powers of two, the scale with the least expected quantization error over the histogram.

The first layer (the image and conv 0, whose range the calibration rules keep unclipped) gets the same
least-error choice over its whole tensor, both signs (`first_layer="least_error"`, round 12 of
docs/quantization.md): a power of two cannot equal that range, and rounding it up cost the image half its
levels (1/127 -> 1/64 for pixels in [0, 1]) and yolov3-tiny's conv 0 a third of its codes (47.9 -> 63.5);
on 19 validation sets that group cost most. `first_layer="range"` keeps the former rule (the range, rounded up).

The first layer's weights round so that each filter's rounding errors sum to about zero (`first_weights="zero_sum"`,
round 13): the image is far from zero mean, so the sum of a filter's errors times the local brightness is most of
its output error; a power-of-two step, up to 2x minmax's, makes that sum large (yolov3-tiny's conv 0: 85% of its
output error on the calibration photos, 37x less with the sums near zero). `first_weights="nearest"` keeps the
former rounding.
"""
from __future__ import annotations

import numpy as np

from engine.calib.mse import expected_mse

from engine.calib.base import CALIBRATORS, Calibrator, int_setting
from engine.errors import ArgumentError
from engine.calib.histogram import AbsHistogram

OCTAVES = 32
SMALLEST_EXP = -16
FIRST_LAYER_RULES = ("least_error", "range")
FIRST_WEIGHTS_RULES = ("zero_sum", "nearest")


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

    def __init__(self, bits: int = 8, rule: str = "mse", first_layer: str = "least_error",
                 first_weights: str = "zero_sum", **settings) -> None:
        if rule not in ("mse", "window"):
            raise ArgumentError(f"log2 rule={rule!r}: expected 'mse' or 'window'")
        if first_layer not in FIRST_LAYER_RULES:
            raise ArgumentError(f"log2 first_layer={first_layer!r}: expected one of {', '.join(map(repr, FIRST_LAYER_RULES))}")
        if first_weights not in FIRST_WEIGHTS_RULES:
            raise ArgumentError(f"log2 first_weights={first_weights!r}: expected one of "
                                f"{', '.join(map(repr, FIRST_WEIGHTS_RULES))}")
        bits = int_setting("log2", "bits", bits, 1, OCTAVES)     # a window of 1..32 octaves
        extra = {"bits": bits} if bits != 8 else {}
        extra.update({"first_layer": first_layer} if first_layer != "least_error" else {})
        extra.update({"first_weights": first_weights} if first_weights != "zero_sum" else {})
        super().__init__(**extra, **({"rule": rule} if rule != "mse" else {}), **settings)
        self.bits, self.rule, self.first_layer, self.first_weights = bits, rule, first_layer, first_weights

    def weight_rounding(self, reads_image: bool) -> str:
        return self.first_weights if reads_image else "nearest"

    def group_threshold(self, view) -> float:
        # The full-range rule protects the first layer from deep clips (KL's 12% of the range); with a power of
        # two its cost is the other way round, up to 2x the step on the signal every later layer builds on.
        # Read on the whole tensor: the one-sided view would leave out the negatives' rounding error.
        if not view.full_range or self.first_layer == "range" or view.tensor is None:
            return super().group_threshold(view)
        return self.least_error(view.tensor)

    def threshold(self, h: AbsHistogram) -> float:
        if self.rule == "window":
            j = densest_window(octave_counts_from_histogram(h), self.bits)
            return min(h.amax, 2.0 ** (j + self.bits + SMALLEST_EXP))
        return self.least_error(h)

    def least_error(self, h: AbsHistogram) -> float:
        """127 * 2**k for the k with the least expected squared error over `h` (engine/calib/mse.py's)."""
        top = int(np.ceil(np.log2(h.amax / 127)))              # the power of two that clips nothing
        ks = np.arange(top - 8, top + 1)
        used = h.used_bins
        errs = expected_mse(h.counts[:used], h.centers[:used], 127.0 * 2.0 ** ks)
        return float(127.0 * 2.0 ** ks[int(np.argmin(errs))])
