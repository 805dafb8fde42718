"""KernelGrid: the editable k x k cells of one kernel, keeping typed-but-unapplied values per kernel.

Moving a slider, stepping the session or switching the mode shows another kernel in the same cells.
Values the user typed and has not applied are not thrown away then: before the cells change, the
grid compares them with the values it showed; if they differ they are kept under the shown kernel's
key `(layer, target, filter, channel)` and come back when that kernel is shown again, until Apply
(`forget_shown`) or Discard (`discard_shown`). int8 values go when the weights they were typed over do
(`discard_target`: the editor calls it when the session's quantized model changes).
"""
from __future__ import annotations

from typing import Hashable

import ipywidgets as widgets
import numpy as np
import traitlets

CELL = widgets.Layout(width="82px")


def key_text(key: tuple) -> str:
    layer, target, filt, channel = key
    return f"layer {layer} {target} filter {filt} channel {channel}"


class KernelGrid(widgets.GridBox):
    """FloatText (float) or IntText (int8) cells of one kernel; `unapplied` lists kernels with typed values."""

    unapplied = traitlets.List(help="keys (layer, target, filter, channel) of kernels with typed, unapplied values")

    def __init__(self, **kwargs) -> None:
        super().__init__(layout=widgets.Layout(grid_gap="2px"), **kwargs)
        self.cells: list[widgets.Widget] = []
        self._pending: dict[Hashable, np.ndarray] = {}
        self._key: Hashable | None = None         # kernel in the cells now (None: nothing to keep)
        self._shown = np.zeros((0, 0))            # the values the grid put into the cells

    def show(self, key: Hashable | None, k: np.ndarray, target: str) -> str:
        """Show kernel `k` (kh, kw) as `key`; typed values of the kernel shown so far are kept first, and
        `key`'s own unapplied values are shown instead of `k`. Returns a status message when that is
        news (values kept on leaving a kernel, or restored on coming back), else ''. Re-showing the same
        kernel is no news: it must not cover, say, the error of a rejected Apply."""
        before, moved = set(self._pending), key != self._key
        self._stash()
        self._key, self._shown = key, np.asarray(k)
        restored = key in self._pending
        self._fill(self._pending[key] if restored else self._shown, target)
        kept = [x for x in self._pending if x not in before and x != key]
        if restored and moved:
            return f"restored your unapplied values for {key_text(key)}: Apply or Discard them"
        if kept:
            return f"kept your unapplied values for {key_text(kept[0])}: go back to it to Apply or Discard"
        return ""

    @property
    def shown_key(self) -> Hashable | None:
        """Key of the kernel in the cells (None: nothing, or just applied)."""
        return self._key

    def values(self) -> np.ndarray:
        """The cells as typed, in the shown kernel's shape (float64)."""
        return np.array([c.value for c in self.cells], np.float64).reshape(self._shown.shape)

    def typed(self) -> bool:
        """Do the cells differ from the kernel's values?"""
        return self._key is not None and bool(self.cells) and not np.array_equal(self.values(), self._shown)

    def forget_shown(self) -> None:
        """After Apply: the typed values are the kernel's now; nothing to keep."""
        self._pending.pop(self._key, None)
        self._key = None
        self._sync()

    def discard_shown(self, target: str) -> bool:
        """Drop the shown kernel's typed values and show its real values. Returns whether any were typed."""
        had = self.typed() or self._key in self._pending
        self._pending.pop(self._key, None)
        self._fill(self._shown, target)
        self._sync()
        return bool(had)

    def discard_all(self, target: str) -> int:
        """Drop every kernel's typed values (the shown kernel shows its weights again). Returns how many."""
        n = len(set(self._pending) | ({self._key} if self.typed() else set()))
        self._pending.clear()
        if self._key is not None:
            self._fill(self._shown, target)
        self._sync()
        return n

    def discard_target(self, target: str, shown_target: str) -> int:
        """Drop the typed values of every kernel of `target` ("int8": the quantized model they were typed
        for is gone), the shown kernel's too: its cells show the values it was shown with (`shown_target`:
        their kind) and are nothing to keep when the next kernel is shown. Returns how many kernels had values."""
        gone = {k for k in self._pending if k[1] == target}
        if self._key is not None and self._key[1] == target:
            if self.typed():
                gone.add(self._key)
            self._pending.pop(self._key, None)
            self._fill(self._shown, shown_target)
            self._key = None
        for k in gone:
            self._pending.pop(k, None)
        self._sync()
        return len(gone)

    def _stash(self) -> None:
        if self._key is None or not self.cells:
            return
        if self.typed():
            self._pending[self._key] = self.values()
        else:
            self._pending.pop(self._key, None)
        self._sync()

    def _sync(self) -> None:
        self.unapplied = list(self._pending)

    def _fill(self, k: np.ndarray, target: str) -> None:
        cls = widgets.IntText if target == "int8" else widgets.FloatText
        flat = np.asarray(k).reshape(-1)
        if len(self.cells) != flat.size or (self.cells and not isinstance(self.cells[0], cls)):
            self.cells = [cls(layout=CELL) for _ in range(flat.size)]
            self.children = self.cells
            self.layout.grid_template_columns = f"repeat({max(1, k.shape[1] if k.ndim == 2 else 1)}, 84px)"
        for cell, v in zip(self.cells, flat):
            cell.value = int(v) if target == "int8" else float(v)
