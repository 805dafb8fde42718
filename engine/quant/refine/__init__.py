"""Refinements applied to a quantized model after calibration (each a switch, measured alone)."""
from engine.quant.refine.bias import bias_correction

REFINEMENTS = ("bias",)

__all__ = ["bias_correction", "REFINEMENTS"]
