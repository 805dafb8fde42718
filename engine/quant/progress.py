"""Progress and cancellation of long engine work, one unit at a time (method comparison, mixed-precision search,
simulation vs device).

    steps = Steps(total, on_progress, cancel)
    for i in layers:
        steps.start(f"layer {k} of {n}: conv {i}")      # Cancelled here when cancel() says so
        ...one unit of work...
    steps.finish()

`on_progress(done, total, what)` is called before each unit (`done` units finished, `what` the unit
starting) and once at the end as (n, n, "done"): `done` grows by one per call, `total` is the number of
units that will run as far as the work knows. Work whose length depends on its own results counts what it
is sure of and raises the total with `revise` as more becomes certain (the mixed-precision search: each
further greedy run once the one before missed the target); a unit counted but then not needed is dropped
by `finish` (the bar fills at once). The bar never goes backwards: `done / total` never decreases between
two calls as long as the total grows only with the unit starting (`revise(done + 1)`). The callback may raise
`engine.errors.Cancelled` itself (a widget's Cancel does). `cancel`: an event (`threading.Event`,
`multiprocessing.Event`, anything with `is_set()`) or a callable returning True to stop, as
`engine.quant.sensitivity.sensitivity` takes (`stop_hook`; anything else is refused when `Steps` is made);
it is asked before each unit, and by work that can stop inside one (a scored run, between images).
Work that stops this way has changed nothing it was given: it builds its result on the side.
Units may start on several threads (a comparison's images side by side): `start` reports one unit at a
time, so the calls stay in order and `done` still grows by one per call (it then counts the units started
before this one: at most one per other thread may still be running).
"""
from __future__ import annotations

import threading
from typing import Callable

from engine.errors import ArgumentError, Cancelled

Progress = Callable[[int, int, str], object]
CancelHook = threading.Event | Callable[[], bool] | None    # or any object with a callable is_set()


def stop_hook(cancel: CancelHook) -> Callable[[], bool]:
    """`cancel` as a callable answering "stop now?" (never, for None). An event is any object with a callable
    `is_set` (`threading.Event`, `multiprocessing.Event()`, a Manager's Event proxy): its `is_set` is the
    answer; anything else must be callable. Call this when the work starts, so a wrong hook is refused
    before any work rather than when it is first asked.

    Raises:
        ArgumentError: `cancel` is neither None, an event nor callable."""
    if cancel is None:
        return lambda: False
    is_set = getattr(cancel, "is_set", None)
    if callable(is_set):
        return is_set
    if callable(cancel):
        return cancel
    raise ArgumentError(f"cancel={cancel!r} ({type(cancel).__name__}): expected None, an event (an object with "
                        "is_set(), e.g. threading.Event or multiprocessing.Event) or a callable returning True to stop")


def unit_name(layer) -> str:
    """A layer as the progress text names it: "conv 12", "maxpool 11", "yolo 16"."""
    return f"{'conv' if layer.kind == 'convolutional' else layer.kind} {layer.index}"


def counted(n: int, noun: str) -> str:
    """`n` and the noun, plural unless n == 1: "1 image", "4 images"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


class Steps:
    """Counts units, reports them to `on_progress` and stops with Cancelled when `cancel` asks (module doc).

    Raises:
        ArgumentError: `cancel` is neither None, an event nor callable (when made, before any unit)."""

    def __init__(self, total: int, on_progress: Progress | None = None, cancel: CancelHook = None) -> None:
        self.done, self.total = 0, total
        self._report, self._stop = on_progress, stop_hook(cancel)
        self._lock = threading.Lock()       # units started on several threads are reported one by one

    def start(self, what: str) -> None:
        """Before a unit: raises Cancelled if asked to stop, else reports (units done, total, what).

        Raises:
            Cancelled: `cancel` answered True (or `on_progress` raised it)."""
        with self._lock:
            self._start(what)

    def _start(self, what: str) -> None:
        if self._stop():
            raise Cancelled(f"cancelled before {what} ({self.done} of {self.total} steps done)")
        self.total = max(self.total, self.done + 1)
        if self._report is not None:
            self._report(self.done, self.total, what)
        self.done += 1

    def revise(self, total: int) -> None:
        """The total as now known (reported with the next unit): never below the units already started."""
        self.total = max(total, self.done)

    def finish(self) -> None:
        """After the last unit: reports (done, done, "done") (the bar full, the total now exact)."""
        self.total = self.done
        if self._report is not None:
            self._report(self.done, self.total, "done")


class StepsBar:
    """A tqdm bar over an on_progress callback `(done, total, what)`, naming the unit that runs;
    made at the first call, closed at the final (n, n, "done") or by `close()`."""

    def __init__(self, desc: str, unit: str) -> None:
        self.desc, self.unit, self.bar = desc, unit, None

    def __call__(self, done: int, total: int, what: str) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit)
        self.bar.total, self.bar.n = total, done
        self.bar.set_postfix_str("" if what == "done" else what)     # and redraws: the count and the unit at once
        if what == "done":
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def fan_out(*reports: Progress | None) -> Progress | None:
    """One on_progress callback calling each given one in turn (None when none is given)."""
    given = [r for r in reports if r is not None]
    if not given:
        return None

    def report(done: int, total: int, what: str) -> None:
        for r in given:
            r(done, total, what)
    return report
