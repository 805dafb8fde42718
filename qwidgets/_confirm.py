"""Switching a session's quantized model, or its model, when that would drop edits: a second click confirms.

`Session.set_quantized(q)` keeps float edits but refuses (EditsWouldBeLost, with the applied and undone
counts) while the session holds int8 or scale edits of the current quantized model, which belong to it.
`Session.set_model(m)` refuses while the session holds any edit: every edit belongs to the old model.
The first click shows the engine's message and arms the guard for that target; the next click for the
same target passes `drop_edits=True`. Any other target, or a successful switch, disarms it.
"""
from __future__ import annotations

from typing import Any, Callable, Hashable

from engine.errors import EditsWouldBeLost


class Refused(Exception):
    """The switch needs a confirming click: `message` for the status line, `label` for the button."""

    def __init__(self, message: str, label: str) -> None:
        super().__init__(message)
        self.message, self.label = message, label


class SwitchGuard:
    """Two-click `set_quantized` / `set_model` for one button (one guard per button)."""

    def __init__(self) -> None:
        self.armed: tuple | None = None         # (target, edits named) the next click confirms

    def switch(self, session: Any, quantized: Any, target: Hashable) -> int:
        """`session.set_quantized(quantized)`; returns the number of dropped (int8 / scale) edits.

        Raises: Refused when int8/scale edits would be lost and this target is not armed yet (the
        guard is armed by the refusal); EngineError / OSError / ValueError for anything else.
        """
        return self._guarded(("quantized", target), lambda drop: session.set_quantized(quantized, drop_edits=drop),
                             lambda: quantized_pending(session))

    def switch_model(self, session: Any, model: Any, target: Hashable) -> int:
        """`session.set_model(model)`: a Model, a path engine.load reads, or a zero-argument loader
        returning either (the session calls it only once the switch is allowed, so a refused click
        reads nothing; a loader that fails disarms like any failure). Returns the number of dropped
        edits (all of them: they belong to the old model).

        Raises: Refused when edits would be lost and this target is not armed yet; EngineError /
        OSError / ValueError for anything else (a model that does not load).
        """
        return self._guarded(("model", target),
                             lambda drop: session.set_model(model, drop_edits=drop),
                             lambda: model_pending(session))

    def _guarded(self, target: Hashable, call: Callable[[bool], int], pending: Callable[[], tuple]) -> int:
        # the confirmation is for this target and the edits the label named: more edits meanwhile ask again
        armed, self.armed = self.armed, None
        try:
            return call(armed is not None and armed == (target, pending()))
        except EditsWouldBeLost as err:
            self.armed = (target, (err.applied, err.undone))
            n = err.count
            label = f"Confirm: drop {n} edit{'s' if n != 1 else ''}"
            raise Refused(confirm_text(err.applied, err.undone, target[0], label), label) from err

    def disarm(self) -> None:
        self.armed = None


def confirm_text(applied: int, undone: int, what: str, label: str) -> str:
    """Plain words for the confirmation (no Python, no 'error:'): what would go, what keeps it, what to click.
    Undone edits are named as such: they are only the redo history, nothing the model still holds."""
    kind = "int8/scale " if what == "quantized" else ""
    parts = []
    if applied:
        parts.append(f"{applied} applied {kind}edit{'s' if applied != 1 else ''}")
    if undone:
        parts.append(f"{undone} undone edit{'s' if undone != 1 else ''} (redo history only)")
    keep = "Save keeps the applied ones. " if applied else ""
    target = "quantized model" if what == "quantized" else "model"
    return f"switching the {target} drops {' and '.join(parts)}. {keep}Click '{label}' to switch anyway"


def quantized_pending(session: Any) -> tuple[int, int]:
    """(applied, undone) int8/scale edits now: what a quantized-model confirmation must still match."""
    return session.quantized_edit_counts()


def model_pending(session: Any) -> tuple[int, int]:
    """(applied, undone) edits of any kind now: what a model confirmation must still match."""
    return len(session.journal.done), len(session.journal.undone)


def dropped_text(n: int, float_kept: bool = True) -> str:
    """'' or '; dropped N int8/scale edit(s) (float edits kept)' (a quantized-model switch), or
    '; dropped N edit(s)' (`float_kept=False`: a model switch drops every edit)."""
    if not n:
        return ""
    s = "s" if n != 1 else ""
    return f"; dropped {n} int8/scale edit{s} (float edits kept)" if float_kept else f"; dropped {n} edit{s}"
