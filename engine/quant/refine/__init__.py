"""Refinements around calibration, each a switch measured alone: cross-layer equalization before it (the
equalized float model is what gets calibrated), and after it, in `pipeline.AFTER`'s order, GPTQ weight
rounding, the EQ threshold search, bias correction, the head bias and the head margin."""
import importlib

# equalize's names eagerly (they import nothing above the layers; `equalize` the function must shadow
# the submodule of that name); the others lazily (PEP 562): they import the executor, which imports
# refine.equalize, so a package __init__ importing them all made a cycle
from engine.quant.refine.equalize import attach as attach_equalization, derived_forward, equalize

_HOME = {"bias_correction": "bias", "eq_search": "eq", "gptq_rounding": "gptq", "head_bias_correction": "headbias",
         "head_margin": "margin"}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_HOME[name]}")
    return getattr(module, name)


REFINEMENTS = ("bias", "cle", "cle_act", "eq", "gptq", "head", "margin")

__all__ = ["bias_correction", "eq_search", "equalize", "attach_equalization", "derived_forward", "gptq_rounding",
           "head_bias_correction", "head_margin", "REFINEMENTS"]
