"""Keyboard focus kept inside the notebook after a click on the cytoscape canvas (browser latency).

Cytoscape's mousedown blurs the focused element, so after a node click <body> has the focus. JupyterLab
answers the next mousedown anywhere in the notebook by focusing the notebook and then its cell (the main
area widget's capture handler, then the notebook's activation), and each focus change re-styles the whole
notebook: 40-140 ms before cytoscape sees the press at load 10 (docs/browser-latency.md, stop 23). With
the focus inside the cell, that mousedown takes 3 ms.

`FocusKeeper` is a button out of the tab order, made invisible, fixed-positioned (focusing it never
scrolls the notebook) and never under the mouse by `CSS` (the owner's stylesheet). `keep(age)` focuses
it from a click handler only when the click message is fresh: a late focus (a busy kernel) must not take
the keyboard from a field the user went on to type in.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import ipywidgets as widgets

MAX_AGE = 0.5          # seconds from the browser creating the click message to the kernel handling it
CSS = (".qw-focus-keeper{position:fixed !important;left:0;top:0;opacity:0;pointer-events:none;overflow:hidden}"
       ".qw-focus-keeper:focus{outline:none}")


def message_age(parent: dict[str, Any], now: dt.datetime | None = None) -> float | None:
    """Seconds since the frontend stamped `parent` (a Jupyter message; its header's `date`, a datetime or an
    ISO string), by the kernel's clock; None without a date."""
    date = (parent or {}).get("header", {}).get("date")
    if isinstance(date, str):
        try:
            date = dt.datetime.fromisoformat(date.replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(date, dt.datetime):
        return None
    if date.tzinfo is None:
        date = date.replace(tzinfo=dt.timezone.utc)
    return ((now or dt.datetime.now(dt.timezone.utc)) - date).total_seconds()


def request_age() -> float | None:
    """Age of the kernel request being handled (`message_age`); None outside a kernel (scripts, tests)."""
    try:
        from ipykernel.kernelbase import Kernel
        if not Kernel.initialized():
            return None
        return message_age(Kernel.instance().get_parent())
    except Exception:       # an ipykernel without get_parent: no focus keeping, nothing else changes
        return None


class FocusKeeper(widgets.Button):
    """An invisible button the kernel focuses after a canvas click (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(description="", tabbable=False,
                         layout=widgets.Layout(width="1px", height="1px", padding="0", margin="0", border="0"))
        self.add_class("qw-focus-keeper")

    def keep(self, age: float | None) -> bool:
        """Focus the keeper when the click is at most MAX_AGE old (clocks apart by more: never); True if sent."""
        if age is None or abs(age) > MAX_AGE:
            return False
        self.focus()
        return True
