"""Activation calibrators behind one registry; each is a pure function of an AbsHistogram."""
from engine.calib import aciq, auto, kl, log2, minmax, mse, percentile, yolo2_light  # noqa: F401  (registers)
from engine.calib.base import CALIBRATORS, Calibrator, make
from engine.calib.histogram import AbsHistogram

__all__ = ["CALIBRATORS", "Calibrator", "make", "AbsHistogram"]
