"""Refinements applied around calibration (each a switch, measured alone): bias correction and the EQ
threshold search after it, cross-layer equalization before it (the equalized float model is what
gets calibrated)."""
from engine.quant.refine.bias import bias_correction
from engine.quant.refine.eq import eq_search
from engine.quant.refine.equalize import attach as attach_equalization, derived_forward, equalize

REFINEMENTS = ("bias", "cle", "cle_act", "eq")

__all__ = ["bias_correction", "eq_search", "equalize", "attach_equalization", "derived_forward", "REFINEMENTS"]
