"""Checks of the arguments of Session calls, so a wrong type or value is refused with an
ArgumentError (an EngineError) naming the argument and what was expected, instead of being
silently coerced (`run_to("3")`, `run_to(2.5)`, `run_to(True)`) or failing deep inside NumPy."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from engine.errors import ArgumentError
from engine.quant.modes import MODES, Mode


def is_integer(value) -> bool:
    """An int or NumPy integer, not a bool (True is not layer 1) nor a float (2.5 is not layer 2)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def layer_index(value, n: int, what: str = "layer") -> int:
    """`value` as a layer index 0..n-1."""
    if not is_integer(value):
        raise ArgumentError(f"{what} {value!r}: expected an integer layer index 0..{n - 1}, "
                            f"got {type(value).__name__}")
    if not 0 <= int(value) < n:
        raise ArgumentError(f"{what} {int(value)} does not exist; this model has layers 0..{n - 1}")
    return int(value)


def mode(value) -> str:
    """'float', 'hybrid' or 'int' (or a Mode)."""
    try:
        return Mode(value).value
    except ValueError:
        raise ArgumentError(f"mode={value!r}: expected one of {', '.join(MODES)}") from None


def model(value):
    """A Model, or a path `engine.load` takes (a cfg needs its weights: pass a Model then)."""
    from engine.model import Model, load
    if isinstance(value, Model):
        return value
    if isinstance(value, (str, os.PathLike)):
        return load(value)
    raise ArgumentError(f"model={value!r}: expected an engine Model or a model file path, got {type(value).__name__}")


def quantized(value):
    """A QuantizedModel, a path to a quantized model file, or None."""
    from engine.quant.qmodel import QuantizedModel
    if value is None or isinstance(value, QuantizedModel):
        return value
    if isinstance(value, (str, os.PathLike)):
        return QuantizedModel.load(Path(value))
    raise ArgumentError(f"quantized={value!r}: expected a QuantizedModel, a quantized model file path, "
                        f"or None; got {type(value).__name__}")


def unit_interval(value, what: str) -> float:
    """A finite number in [0, 1] (a detection threshold, an NMS overlap)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or not 0 <= value <= 1:
        raise ArgumentError(f"{what}={value!r}: expected a number in [0, 1]")
    return float(value)


def count(value, what: str, lo: int = 1, hi: int = 1 << 20) -> int:
    """An integer in [lo, hi] (a number of bins, of images...)."""
    if not is_integer(value) or not lo <= int(value) <= hi:
        raise ArgumentError(f"{what}={value!r}: expected an integer in [{lo}, {hi}]")
    return int(value)
