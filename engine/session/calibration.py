"""Calibration statistics of a session's (edited) model, cached per image set and model version,
and the method comparison that runs on them."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from engine.errors import Cancelled
from engine.quant.progress import CancelHook, StepsBar, stop_hook


class CalibrationCache:
    """The last |x| histograms computed for a named image set, valid while the model version holds:
    a float edit, undo or redo bumps the version, so statistics never describe weights the model no
    longer has."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._stats = None

    def stats(self, model, images, resize: str, key: str | None, version: int,
              on_image: Callable[[int, int], Any] | None = None, keep=None, progress: bool = False):
        """`keep`: given the pass's FLOAT outputs when it runs (not on a cache hit), e.g.
        engine.scale.compare.KeptForwards. `progress`: a "calibrating" bar while the pass runs."""
        from engine.calib.collect import collect
        if key is not None and self._key == (key, version):
            return self._stats
        stats = collect(model, images, resize=resize, progress=progress, on_image=on_image, keep=keep)
        if key is not None:
            self._key, self._stats = (key, version), stats
        return stats


def compare_methods(session, images, methods: list[str], *, key: str | None,
                    on_progress: Callable[[str, int, int], Any] | None, progress: bool,
                    backend: str, refine: Sequence[str], cancel: CancelHook = None, **options):
    """`Session.compare_methods` (its docstring): the calibration pass (cached per `key` and model version;
    its FLOAT outputs are the comparison's reference), then engine.scale.compare, every phase reported:
    a tqdm bar each when `progress` ("calibrating", "quantizing" or "quantizing + refining" with the unit
    running, "comparing"), and `on_progress(phase, done, total)`."""
    from engine.calib.collect import image_list
    from engine.scale.compare import KeptForwards, compare
    items = image_list(images)
    stop = stop_hook(cancel)

    def on_image(done: int, total: int) -> None:
        if stop():
            raise Cancelled(f"cancelled while calibrating ({done} of {total} images done)")
        if on_progress is not None:
            on_progress("calibrate", done, total)
    on_method = (lambda _result, done, total: on_progress("compare", done, total)) if on_progress else None
    bar = StepsBar("quantizing + refining" if refine else "quantizing", "step") if progress else None

    def on_quantize(done: int, total: int, what: str) -> None:
        if bar is not None:
            bar(done, total, what)
        if on_progress is not None:
            on_progress("quantize", done, total)
    # the calibration pass runs FLOAT on the same images: its outputs are the comparison's reference
    keep = KeptForwards() if backend == "numpy" else None
    stats = session._calibration.stats(session.model, items, session.resize, key, session.model_version,
                                       on_image, keep, progress)
    try:
        return compare(session.model, stats, items, methods, resize=session.resize, progress=progress,
                       on_method=on_method, backend=backend, float_outputs=keep, refine=refine,
                       on_quantize=on_quantize, cancel=cancel, **options)
    finally:
        if bar is not None:
            bar.close()
