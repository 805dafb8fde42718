"""Refinements applied to a quantized model after calibration (each a switch, measured alone)."""
from engine.quant.refine.bias import bias_correction
from engine.quant.refine.eq import eq_search

REFINEMENTS = ("bias", "eq")

__all__ = ["bias_correction", "eq_search", "REFINEMENTS"]
