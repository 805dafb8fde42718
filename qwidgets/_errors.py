"""The widget boundary for engine errors: a decorator that turns them into a status message.

    class MyView(widgets.VBox):
        status = traitlets.Unicode("")

        @shows_errors
        def _on_step_click(self, _button):
            self.position = self._session.step().index

An `EngineError` (bad model, layer past the end, ...), `ValueError` (an `EditError`, a bad number),
`KeyError` (unknown sample) or `OSError` (a file path) raised inside the handler is logged at debug
level and shown as `status = "error: <message>"`; the handler returns None and the widget keeps
working. Anything else is a bug and propagates.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, TypeVar

from engine.errors import EngineError

log = logging.getLogger("qwidgets")
SHOWN = (EngineError, ValueError, KeyError, OSError)
F = TypeVar("F", bound=Callable[..., Any])


def error_message(err: BaseException) -> str:
    """'error: <message>' (KeyError's repr quotes are dropped)."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else err
    return f"error: {text}"


def shows_errors(method: F) -> F:
    """Wrap a view method: errors in SHOWN go to `self.status`, the method returns None."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except SHOWN as err:
            log.debug("%s.%s failed", type(self).__name__, method.__name__, exc_info=True)
            self.status = error_message(err)
            return None
    return wrapper  # type: ignore[return-value]
