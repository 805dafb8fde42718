"""Weight and scale edits: validation, and a journal with undo / redo.

An edit replaces one whole parameter array (float weights/biases of the model, int8 weights or
int32 biases of the quantized model, or an activation scale) and keeps the old array, so undo
is exact. Edits are validated before they touch anything: finite floats, int8 values in
[-127, 127], matching shapes, positive scales.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.errors import EditError  # noqa: F401  (re-exported; an EngineError since issue 16)
from engine.quant.qtensor import QMAX

TARGETS = ("float", "int8", "scale")



@dataclass(repr=False)
class Edit:
    layer: int | str            # layer index, or a node id for scale edits
    target: str                 # "float" | "int8" | "scale"
    param: str                  # "weights", "biases", ... / "w_q", "b_q" / "scale"
    old: Any
    new: Any
    description: str
    extra: dict = field(default_factory=dict)

    def summary(self) -> str:
        return f"layer {self.layer} {self.target} {self.param}: {self.description}"

    def __repr__(self) -> str:   # the summary, not the arrays: `s.undo()` ends a notebook cell
        shape = getattr(self.new, "shape", None)
        return f"<Edit {self.summary()}{f' {shape}' if shape else ''}>"


def check_float(values: np.ndarray, where: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise EditError(f"{where}: values must be finite (NaN/Inf given)")
    if np.abs(arr).max(initial=0) > 1e30:
        raise EditError(f"{where}: values beyond +-1e30 are not plausible weights")
    return arr.astype(np.float32)


def _whole_numbers(values, where: str, what: str) -> np.ndarray:
    """`values` as an array of integers or integral floats; EditError naming `what` (int8 / int32) else."""
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as err:
        raise EditError(f"{where}: {what} values must be numbers ({err})") from None
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise EditError(f"{where}: {what} values must be finite integers (NaN/Inf given)")
        if (arr != np.round(arr)).any():
            raise EditError(f"{where}: {what} values must be whole numbers, got e.g. "
                            f"{arr[arr != np.round(arr)].ravel()[0]}")
    elif arr.dtype.kind not in "iub":
        raise EditError(f"{where}: {what} values must be integers, got dtype {arr.dtype}")
    return arr


def check_int8(values: np.ndarray, where: str, qmax: int = QMAX, why: str = "symmetric int8") -> np.ndarray:
    """int8 weights in [-qmax, qmax] (a device profile's weight range: 63 for 7-bit weights), or EditError."""
    arr = _whole_numbers(values, where, "int8")
    lo, hi = int(arr.min(initial=0)), int(arr.max(initial=0))
    if lo < -qmax or hi > qmax:
        raise EditError(f"{where}: int8 values must be in [-{qmax}, {qmax}] ({why}), got {lo}..{hi}")
    return arr.astype(np.int8)


def check_int32(values, where: str) -> np.ndarray:
    """int32 accumulator-scale values (biases): finite whole numbers below 2**31 in magnitude."""
    arr = _whole_numbers(values, where, "int32")
    if arr.size and np.abs(arr.astype(np.float64)).max() >= 2 ** 31:
        raise EditError(f"{where}: int32 values must be below 2**31 in magnitude")
    return arr.astype(np.int64)


def check_number(value, where: str, *, positive: bool = False) -> float:
    """One finite float (a scale factor, a scale, a threshold), or an EditError naming `where`."""
    rule = "must be finite and > 0" if positive else "must be finite"
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise EditError(f"{where} must be a number, got {value!r}") from None
    if not np.isfinite(v) or (positive and v <= 0):
        raise EditError(f"{where} {rule}, got {value!r}")
    return v


def apply_region(base: np.ndarray, region, values, where: str) -> np.ndarray:
    """A copy of `base` with base[region] = values (broadcast); region is an index tuple or slice."""
    out = base.copy()
    try:
        target = out[region]
    except (IndexError, TypeError) as err:
        raise EditError(f"{where}: index {region!r} is not valid for shape {base.shape} ({err})") from None
    v = np.asarray(values)
    if v.ndim > 0 and v.shape != np.shape(target):
        try:
            np.broadcast_to(v, np.shape(target))
        except ValueError:
            raise EditError(f"{where}: values of shape {v.shape} do not fit the selected region of shape "
                            f"{np.shape(target)}") from None
    out[region] = v
    return out


def prune_mask(w: np.ndarray, fraction: float) -> np.ndarray:
    """True for the `fraction` of weights with the smallest magnitude (ties broken by position)."""
    if not 0 <= fraction <= 1:
        raise EditError(f"prune fraction {fraction}: expected 0 <= fraction <= 1")
    k = int(round(fraction * w.size))
    mask = np.zeros(w.size, bool)
    if k:
        mask[np.argsort(np.abs(w).ravel(), kind="stable")[:k]] = True
    return mask.reshape(w.shape)


class Journal:
    """Applied edits in order, with a redo stack."""

    def __init__(self) -> None:
        self.done: list[Edit] = []
        self.undone: list[Edit] = []

    def push(self, edit: Edit) -> None:
        self.done.append(edit)
        self.undone.clear()

    def pop_undo(self) -> Edit:
        if not self.done:
            raise EditError("nothing to undo")
        edit = self.done.pop()
        self.undone.append(edit)
        return edit

    def pop_redo(self) -> Edit:
        if not self.undone:
            raise EditError("nothing to redo")
        edit = self.undone.pop()
        self.done.append(edit)
        return edit

    def peek_undo(self) -> Edit | None:
        """The edit undo() would revert next (None if there is none)."""
        return self.done[-1] if self.done else None

    def peek_redo(self) -> Edit | None:
        return self.undone[-1] if self.undone else None

    def __len__(self) -> int:
        return len(self.done)
