"""Refinements applied around calibration (each a switch, measured alone): after it, GPTQ weight rounding,
the EQ threshold search and bias correction (in that order); before it, cross-layer equalization (the
equalized float model is what gets calibrated)."""
from engine.quant.refine.bias import bias_correction
from engine.quant.refine.eq import eq_search
from engine.quant.refine.equalize import attach as attach_equalization, derived_forward, equalize
from engine.quant.refine.gptq import gptq_rounding
from engine.quant.refine.headbias import head_bias_correction
from engine.quant.refine.margin import head_margin

REFINEMENTS = ("bias", "cle", "cle_act", "eq", "gptq", "head", "margin")

__all__ = ["bias_correction", "eq_search", "equalize", "attach_equalization", "derived_forward", "gptq_rounding",
           "head_bias_correction", "head_margin", "REFINEMENTS"]
