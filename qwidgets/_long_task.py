"""LongTask: progress bar + 'done / total, ~N s left' + Cancel for work that takes seconds to minutes.

The work runs in a background thread so the kernel keeps handling widget messages (the Cancel click
arrives while it runs); the work calls `tick(done, total)`, or `tick(done, total, what)` naming the unit
("layer 7 of 23: conv 12"), at each unit and stops with `Cancelled` when Cancel was clicked. `tick` has the
signature of the engine's `on_progress` (`engine.quant.progress`) and raises the engine's own
`engine.errors.Cancelled`, so it is handed to an engine function as is. The estimate is the mean time per
unit so far times the units left.
`background=False` runs inline (headless tests, scripts): same ticks, no thread. The result is handed to
`on_done` on the kernel's main thread (`finish_on`).
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable

import ipywidgets as widgets
import traitlets

from engine.errors import Cancelled

__all__ = ["Cancelled", "LongTask", "finish_on", "main_loop", "result_dropped"]


def main_loop() -> asyncio.AbstractEventLoop | None:
    """The kernel's event loop when called from its main thread (a Jupyter kernel), else None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def finish_on(loop: asyncio.AbstractEventLoop | None, fn: Callable[..., Any], *args: Any) -> None:
    """Run fn(*args) on the kernel's loop (the main thread) when there is one, else here. Results change
    many views that observe each other; doing that from the worker thread while the main thread handles
    a frontend message mixed two states (a graph coloured by one metric and labelled by another)."""
    if loop is not None and loop.is_running():
        loop.call_soon_threadsafe(fn, *args)
    else:
        fn(*args)


def result_dropped(session: Any, models: tuple | None, what: str, again: str) -> str | None:
    """The status line when work started on `models` (the session's (model, qmodel) then) ends after the
    session opened another model or adopted another quantized model, else None. The work runs on its own
    thread while other tabs drive the session: its result (a curve, a table, graph colours, layers to Keep)
    belongs to the models it ran on, not to the session's new ones, so the view drops it and says so."""
    if models is None or (models[0] is session.model and models[1] is session.qmodel):
        return None
    return f"{what}: result dropped, the session's model or quantized model changed while it ran: {again}"


class LongTask(widgets.HBox):
    """`start(work, on_done)`: work(tick) -> result runs, then on_done(result) (or on_done(None) when
    cancelled; `cancelled` tells which). `running` is True in between."""

    running = traitlets.Bool(False)
    cancelled = traitlets.Bool(False)
    text = traitlets.Unicode("")

    def __init__(self, background: bool = True, **kwargs) -> None:
        self.background = background
        # bar and Cancel never shrink, the text gives way down to its minimum, and the task itself is never
        # narrower than the three (+ 2 px margins): squeezed in a row beside other controls, the box (a scroll
        # container) took all the row's shrinking, its bar went to 0 px and Cancel was clipped out of sight;
        # the views put it in a wrapping row, where it moves to a line of its own instead
        self.progress = widgets.IntProgress(value=0, min=0, max=1,
                                            layout=widgets.Layout(width="150px", flex="0 0 auto"))
        self._label = widgets.Label(layout=widgets.Layout(width="auto", min_width="240px", flex="1 1 auto"))
        self.cancel_button = widgets.Button(description="Cancel", icon="stop", disabled=True,
                                            layout=widgets.Layout(width="90px", flex="0 0 auto"))
        kwargs.setdefault("layout", widgets.Layout(flex="1 1 auto", min_width="496px"))
        super().__init__(children=[self.progress, self._label, self.cancel_button], **kwargs)
        self.add_class("qw-long-task")
        self.cancel_button.on_click(lambda _b: self.cancel())
        traitlets.dlink((self, "text"), (self._label, "value"))
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def cancel(self) -> None:
        self._stop.set()

    def cancel_requested(self) -> bool:
        """Cancel was clicked since the work started (an engine function's `cancel` hook)."""
        return self._stop.is_set()

    def start(self, work: Callable[[Callable[..., None]], Any], on_done: Callable[[Any], None],
              what: str = "working") -> None:
        if self.running:
            raise RuntimeError("a long task is already running: wait for it or click Cancel")
        self._stop.clear()
        self.cancelled, self.running, self.error = False, True, None
        self.cancel_button.disabled = False
        self.progress.value, self.progress.max = 0, 1
        self.text = f"{what} ..."
        t0 = time.perf_counter()
        loop = main_loop() if self.background else None

        def tick(done: int, total: int, unit: str = "") -> None:
            if self._stop.is_set():
                raise Cancelled(f"{what} cancelled")
            elapsed = time.perf_counter() - t0
            left = elapsed / done * (total - done) if done else float("nan")
            self.progress.max, self.progress.value = max(1, total), min(done, max(1, total))
            timing = f"{elapsed:.0f} s" + (f", ~{left:.0f} s left" if done else "")
            self.text = f"{what}: {unit} ({done} / {total} done, {timing})" if unit else \
                f"{what}: {done} / {total}, {timing}"

        def run() -> None:
            result = None
            try:
                result = work(tick)
                # full when done: work with no unit to count (Explain with every detection matched) ran 14 s
                # and then said "done" beside an empty bar
                self.progress.value = self.progress.max
                self.text = f"{what}: done in {time.perf_counter() - t0:.1f} s"
            except Cancelled:
                self.cancelled = True
                self.text = f"{what}: cancelled after {time.perf_counter() - t0:.0f} s"
            except BaseException as err:          # shown by on_done's caller through `error`
                self.error = err
                self.text = f"{what}: error: {err}"
            finally:
                self.running = False
                self.cancel_button.disabled = True
            finish_on(loop, on_done, result)

        if self.background:
            self.thread = threading.Thread(target=run, daemon=True, name="qwidgets-long-task")
            self.thread.start()
        else:
            run()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the work finished (tests, scripts; not from a kernel cell while the loop must run
        `on_done`: there the result arrives after the cell)."""
        if self.thread is not None:
            self.thread.join(timeout)

    def failure(self, result: Any, what: str, view: Any = None) -> str | None:
        """The status line for a run that did not produce `result` (its error, or "<what> cancelled"),
        or None when it did: every view's `on_done` starts with this. The error is reported as a click
        handler's would be (`qwidgets._errors.report`): an unexpected one is named by its class, logged
        with its traceback and kept in `view.error_details`."""
        if self.error is not None:
            from qwidgets._errors import error_message, report
            if view is not None and isinstance(self.error, Exception):
                report(view, self.error, f"{type(view).__name__}.{what}")
            return error_message(self.error)
        if result is None:
            return f"{what} cancelled"
        return None
