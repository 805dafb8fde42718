"""PngImage: an ipywidgets.Image that is hidden while it has no bytes (a browser draws an empty <img> as a
broken-image icon, issue 18 item 10)."""
from __future__ import annotations

import ipywidgets as widgets
import traitlets


class PngImage(widgets.Image):
    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("format", "png")
        # its own size (shrunk to a narrower panel), not stretched: a box as wide as the tab blew the 480 px
        # charts up ~2x, blurred, once the tabs sat below the graph at full width
        kwargs.setdefault("layout", widgets.Layout(align_self="flex-start", max_width="100%"))
        super().__init__(**kwargs)
        self._sync_display()

    @traitlets.observe("value")
    def _on_value(self, _change) -> None:
        self._sync_display()

    def _sync_display(self) -> None:
        want = "" if self.value else "none"
        if self.layout.display != want:
            self.layout.display = want
