"""The execution modes, named once: FLOAT, HYBRID (int8 conv/connected on float activations), INT.

`Mode` is a str enum, so `Mode.HYBRID == "hybrid"` and the plain strings the CLI, JSON files and
notebooks use keep working; code compares against the members, never restates the strings.
"""
from __future__ import annotations

from enum import Enum


class Mode(str, Enum):
    FLOAT = "float"
    HYBRID = "hybrid"
    INT8 = "int"

    def __str__(self) -> str:
        return self.value


MODES: tuple[str, ...] = tuple(m.value for m in Mode)                  # ("float", "hybrid", "int")
QUANT_MODES: tuple[str, ...] = (Mode.HYBRID.value, Mode.INT8.value)     # the modes a quantized model runs
