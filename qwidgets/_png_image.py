"""PngImage: an ipywidgets.Image that is hidden while it has no bytes (a browser draws an empty <img> as a
broken-image icon, issue 18 item 10)."""
from __future__ import annotations

import ipywidgets as widgets
import traitlets


class PngImage(widgets.Image):
    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("format", "png")
        super().__init__(**kwargs)
        self._sync_display()

    @traitlets.observe("value")
    def _on_value(self, _change) -> None:
        self._sync_display()

    def _sync_display(self) -> None:
        want = "" if self.value else "none"
        if self.layout.display != want:
            self.layout.display = want
