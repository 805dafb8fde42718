"""Calibration statistics of a session's (edited) model, cached per image set and model version,
and the method comparison that runs on them."""
from __future__ import annotations

from typing import Any, Callable


class CalibrationCache:
    """The last |x| histograms computed for a named image set, valid while the model version holds:
    a float edit, undo or redo bumps the version, so statistics never describe weights the model no
    longer has."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._stats = None

    def stats(self, model, images, resize: str, key: str | None, version: int,
              on_image: Callable[[int, int], Any] | None = None, keep=None):
        """`keep`: given the pass's FLOAT outputs when it runs (not on a cache hit), e.g.
        engine.scale.compare.KeptForwards."""
        from engine.calib.collect import collect
        if key is not None and self._key == (key, version):
            return self._stats
        stats = collect(model, images, resize=resize, progress=False, on_image=on_image, keep=keep)
        if key is not None:
            self._key, self._stats = (key, version), stats
        return stats
