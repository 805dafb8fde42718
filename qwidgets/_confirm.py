"""Switching a session's quantized model when that would drop int8 / scale edits: a second click confirms.

`Session.set_quantized(q)` keeps float edits but refuses (EditsWouldBeLost, with the applied and undone
counts) while the session holds int8 or scale edits of the current quantized model, which belong to it. The first click shows the
engine's message and arms the guard for that target; the next click for the same target passes
`drop_edits=True`. Any other target, or a successful switch, disarms it.
"""
from __future__ import annotations

from typing import Any, Hashable

from engine.errors import EditsWouldBeLost


class Refused(Exception):
    """The switch needs a confirming click: `message` for the status line, `label` for the button."""

    def __init__(self, message: str, label: str) -> None:
        super().__init__(message)
        self.message, self.label = message, label


class SwitchGuard:
    """Two-click `set_quantized` for one button (one guard per button)."""

    def __init__(self) -> None:
        self.armed: tuple | None = None         # (target, edits named) the next click confirms

    def switch(self, session: Any, quantized: Any, target: Hashable) -> int:
        """`session.set_quantized(quantized)`; returns the number of dropped edits.

        Raises: Refused when int8/scale edits would be lost and this target is not armed yet (the
        guard is armed by the refusal); EngineError / OSError / ValueError for anything else.
        """
        # the confirmation is for this target and the edits the label named: more edits meanwhile ask again
        armed, self.armed = self.armed, None
        try:
            return session.set_quantized(quantized, drop_edits=armed is not None and armed[0] == target
                                         and armed[1] == self._pending(session))
        except EditsWouldBeLost as err:
            self.armed = (target, (err.applied, err.undone))
            n = err.count
            label = f"Confirm: drop {n} edit{'s' if n != 1 else ''}"
            raise Refused(f"{err}. Click '{label}' to switch anyway", label) from err

    @staticmethod
    def _pending(session: Any) -> tuple[int, int]:
        """(applied, undone) int8/scale edits now: what a confirmation must still match."""
        undone = sum(e.target != "float" for e in session.journal.undone)
        return len(session.quantized_edits()), undone

    def disarm(self) -> None:
        self.armed = None


def dropped_text(n: int) -> str:
    """'' or '; dropped N int8/scale edit(s) (float edits kept)'."""
    return f"; dropped {n} int8/scale edit{'s' if n != 1 else ''} (float edits kept)" if n else ""
