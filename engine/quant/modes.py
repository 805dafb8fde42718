"""The execution modes, named once: FLOAT, HYBRID (int8 conv/connected on float activations), INT, and the
FLOAT-kept layers of a mixed-precision run.

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


def float_layer_indices(model, float_layers) -> tuple[int, ...]:
    """The layers a mixed-precision run keeps FLOAT, sorted and once each; a layer the model does not have
    is refused here, by the caller that names them, not on a worker or a layer in the middle of a run.
    Raises: ValueError naming the missing layers and the model's range."""
    kept = tuple(sorted({int(i) for i in float_layers}))
    outside = [i for i in kept if not 0 <= i < len(model.layers)]
    if outside:
        raise ValueError(f"float_layers {outside}: no such layers (0..{len(model.layers) - 1})")
    return kept
