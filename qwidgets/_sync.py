"""Views follow a Session through its callbacks, whoever drives it: a button or a notebook cell.

`SessionFollower(session, update)` registers `on_step` / `on_edit` / `on_reset` / `on_refresh` and
calls `update(events, from_code)` with the set of event names ("step", "edit", "reset", and "rerun"
for kept outputs re-executed after an edit) that happened:

- while a widget handler drives the session (`holding(session)`, entered by `shows_errors`), events
  are collected and delivered once when the outermost handler returns (`from_code=False`): a Run
  click steps 24 layers but redraws once, after the handler has set its own status. Held per thread:
  in JupyterLab widget messages are handled on a subshell thread while a cell runs on the main one, and
  a cell's `set_model` must not be reported as the hover handler's doing that happened to return meanwhile;
- otherwise the session was driven from code. Without a running event loop (a script, a headless
  test) the update is immediate; in a Jupyter kernel (an asyncio loop runs the cell) it is queued
  with `call_soon`, so `s.run()` in a cell redraws once when the cell returns, not per layer.

The engine stays widget-free: it only calls plain callables.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from typing import Any, Callable, Iterator

Update = Callable[[frozenset, bool], Any]
EVENTS = ("step", "edit", "reset")

# per session, the threads whose widget handlers hold its events, with their nesting depth
_held: "weakref.WeakKeyDictionary[Any, dict[int, int]]" = weakref.WeakKeyDictionary()
# when a widget handler last finished driving each session (background warm-up waits for a quiet user)
_last_active: "weakref.WeakKeyDictionary[Any, float]" = weakref.WeakKeyDictionary()
# WeakSet values: a follower references its session, so a strong value would keep the key alive forever
_followers: "weakref.WeakKeyDictionary[Any, weakref.WeakSet[SessionFollower]]" = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def holding(session: Any) -> Iterator[None]:
    """Hold `session`'s events for its followers until the outermost `holding` block ends."""
    if session is None:
        yield
        return
    me = threading.get_ident()
    depth = _held.setdefault(session, {})
    depth[me] = depth.get(me, 0) + 1
    try:
        yield
    finally:
        depth[me] -= 1
        if depth[me] == 0:
            del depth[me]
            if not depth:
                _held.pop(session, None)
            _last_active[session] = time.monotonic()
            for follower in list(_followers.get(session, ())):
                follower.flush(from_code=False)


def _held_here(session: Any) -> bool:
    return threading.get_ident() in _held.get(session, ())


def idle_for(session: Any) -> float:
    """Seconds since a widget handler last drove `session` (inf if none ever did)."""
    t = _last_active.get(session)
    return float("inf") if t is None else time.monotonic() - t


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class SessionFollower:
    """Deliver a session's step / edit / reset events to `update(events, from_code)` (see the module doc)."""

    def __init__(self, session: Any, update: Update) -> None:
        self._session, self._update = session, update
        self._pending: set[str] = set()          # from code: delivered on the loop
        self._pending_held: set[str] = set()     # under a handler: delivered when it returns
        self._scheduled = False
        self._callbacks = [session.on_step(lambda _r: self.note("step")),
                           session.on_edit(lambda _e: self.note("edit")),
                           session.on_reset(lambda _s: self.note("reset")),
                           # kept outputs re-executed after an edit (refresh / rerun, from code too)
                           session.on_refresh(lambda _first: self.note("rerun"))]
        _followers.setdefault(session, weakref.WeakSet()).add(self)

    def note(self, event: str) -> None:
        """Record an event (the session's own, or one a view knows of, such as "rerun") for delivery."""
        if _held_here(self._session):
            self._pending_held.add(event)
            return                      # the handler driving the session flushes when it returns
        self._pending.add(event)
        loop = running_loop()
        if loop is None:
            self.flush(from_code=True)
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self.flush, True)

    def flush(self, from_code: bool) -> None:
        """Deliver the pending events now (no-op if none, or once closed)."""
        if from_code:
            self._scheduled = False
            events, self._pending = frozenset(self._pending), set()
        else:
            events, self._pending_held = frozenset(self._pending_held), set()
        if events and self._callbacks:
            self._update(events, from_code)

    def close(self) -> None:
        """Stop following (the session keeps no reference to the views)."""
        for cb in self._callbacks:
            self._session.remove_callback(cb)
        self._callbacks, self._pending, self._pending_held = [], set(), set()        # a flush already queued on the loop does nothing
        _followers.get(self._session, weakref.WeakSet()).discard(self)
