"""Refinements around calibration, each a switch measured alone: cross-layer equalization before it (the
equalized float model is what gets calibrated), and after it, in `pipeline.AFTER`'s order, GPTQ weight
rounding, the EQ threshold search, bias correction, the head bias and the head margin."""
from engine.quant.refine.bias import bias_correction
from engine.quant.refine.eq import eq_search
from engine.quant.refine.equalize import attach as attach_equalization, derived_forward, equalize
from engine.quant.refine.gptq import gptq_rounding
from engine.quant.refine.headbias import head_bias_correction
from engine.quant.refine.margin import head_margin

REFINEMENTS = ("bias", "cle", "cle_act", "eq", "gptq", "head", "margin")

__all__ = ["bias_correction", "eq_search", "equalize", "attach_equalization", "derived_forward", "gptq_rounding",
           "head_bias_correction", "head_margin", "REFINEMENTS"]
