"""The widget boundary: status messages, and a decorator that turns any error into one.

    class MyView(widgets.VBox):
        status = Message("")
        error_details = Message("")          # optional: the traceback of the last unexpected error

        @shows_errors
        def _on_step_click(self, _button):
            self.position = self._session.step().index

An `EngineError` (bad model, layer past the end, ...), `ValueError` (an `EditError`, a bad number),
`KeyError` (unknown sample) or `OSError` (a file path) is an expected, user-facing error: it is
logged at debug level and shown as `status = "error: <message>"`. Any other exception (TypeError,
IndexError, MemoryError, ...) is a bug or an exhausted machine, but a traceback in the middle of a
widget helps nobody: it is shown as `"error: <ClassName>: <message>"`, logged at ERROR level with its
traceback (logger "qwidgets"), and the traceback goes to the view's `error_details` trait when it
has one (views show it in a collapsed `ErrorDetails` accordion). Nothing is raised out of a
callback; KeyboardInterrupt and SystemExit still propagate.

The decorator also holds the view's Session events while the handler runs (`qwidgets._sync`), so a
Run click that steps 24 layers redraws the Explorer once, after the handler, not 24 times.
"""
from __future__ import annotations

import functools
import html
import logging
import traceback
from typing import Any, Callable, TypeVar

import ipywidgets as widgets
import traitlets

from engine.errors import EngineError
from qwidgets._sync import holding

log = logging.getLogger("qwidgets")
SHOWN = (EngineError, ValueError, KeyError, OSError)
F = TypeVar("F", bound=Callable[..., Any])


class Message(traitlets.Unicode):
    """A Unicode trait that notifies observers on every assignment, also of the text it already has.

    Status lines are linked one-way into the Explorer's main status: with a plain Unicode trait the
    same error twice (two bad Apply clicks) would not notify, and the main status would keep showing
    whatever came in between.
    """

    def set(self, obj: traitlets.HasTraits, value: Any) -> None:
        repeated = obj.trait_has_value(self.name) and self.get(obj) == value
        super().set(obj, value)
        if repeated:
            v = self.get(obj)
            obj.notify_change(traitlets.Bunch(name=self.name, old=v, new=v, owner=obj, type="change"))


def error_message(err: BaseException) -> str:
    """'error: <message>' for expected errors (KeyError's repr quotes dropped), else
    'error: <ClassName>: <message>'."""
    if isinstance(err, SHOWN):
        text = err.args[0] if isinstance(err, KeyError) and err.args else err
        return f"error: {text}"
    return f"error: {type(err).__name__}: {err}"


def report(view: Any, err: Exception, where: str) -> None:
    """Show `err` in `view.status`; log it (unexpected ones with their traceback, also kept in
    `view.error_details` if the view has that trait)."""
    if isinstance(err, SHOWN):
        log.debug("%s failed", where, exc_info=err)
    else:
        log.error("%s failed", where, exc_info=err)
        if isinstance(view, traitlets.HasTraits) and view.has_trait("error_details"):
            view.error_details = f"{where}:\n" + "".join(traceback.format_exception(err))
    view.status = error_message(err)


def shows_errors(method: F) -> F:
    """Wrap a view method: any Exception goes to `self.status` (see `report`), the method returns None."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        session = getattr(self, "_session", None)
        session = getattr(self, "session", None) if session is None else session
        with holding(session):
            try:
                return method(self, *args, **kwargs)
            except Exception as err:     # noqa: BLE001 - the widget boundary: nothing escapes a callback
                report(self, err, f"{type(self).__name__}.{method.__name__}")
                return None
    return wrapper  # type: ignore[return-value]


class ErrorDetails(widgets.Accordion):
    """A collapsed "error details" section with the last unexpected error's traceback (hidden until then)."""

    text = traitlets.Unicode("", help="the traceback shown")

    def __init__(self, **kwargs) -> None:
        self._pre = widgets.HTML()
        super().__init__(children=[self._pre], titles=("error details (traceback)",), selected_index=None,
                         layout=widgets.Layout(display="none"), **kwargs)
        self.add_class("qw-error-details")

    @traitlets.observe("text")
    def _on_text_change(self, change) -> None:
        self._pre.value = f"<pre style='font-size:11px'>{html.escape(change.new)}</pre>"
        self.layout.display = "flex" if change.new else "none"
