"""LayerPanel: a pure view of one layer, fed with already-computed data.

`show(info, images, stats_rows)` fills an info table, PNG images and a statistics table; it does
no computation (the data comes from `qwidgets._panel_data.layer_panel_data`, or from the Session in
the Explorer: `qwidgets._session_panel`). Image slots without data are left out, so a FLOAT-only run
shows no empty INT boxes.

A panel update is one widget message: one HTML widget carries the title, the info and statistics
tables and the pictures (PNGs as data: URIs). Each widget message is a hop through the kernel's IOPub
thread, the Jupyter server and the page, with a view update and a frame each: with an Image widget
per picture a Step sent ~30 messages and the last one reached the page 80-160 ms after the kernel sent
it (docs/browser-latency.md, round 5). The style sheet is a widget of its own, sent once: a <style>
element in an updated value makes the page recompute the style of the whole document.
"""
from __future__ import annotations

import base64
import html
from typing import Any, Mapping, Sequence

import ipywidgets as widgets
import traitlets

from qwidgets._encode import fmt_number

# image key -> caption; the order is the display order inside each row
IMAGE_SLOTS = {
    "input": "input channels", "output": "output channels",
    "float": "FLOAT output", "int": "INT output", "heatmap": "error INT - FLOAT",
    "hist_input": "input histogram", "hist_output": "output histogram", "hist_weights": "weights histogram",
    "weights": "weights (columns: filters, rows: input channels)",
}
ROWS = [("input", "output"), ("float", "int", "heatmap"), ("hist_output", "hist_input"), ("hist_weights", "weights")]
PANEL_CSS = ("<style>.qw-layer-panel .qw-row{display:flex;flex-flow:row wrap;line-height:1.3}"
             ".qw-layer-panel .qw-pic{display:flex;flex-direction:column;align-items:flex-start;margin:0 6px 6px 0;"
             "max-width:100%}.qw-layer-panel .qw-pic img{max-width:100%;height:auto}"
             ".qw-layer-panel .qw-stats-scroll{overflow:auto;max-width:100%}</style>")
TABLE_CSS = ("<style>.qw-table{margin-bottom:6px}.qw-table td,.qw-table th{padding:1px 6px;text-align:right;"
             "font-size:12px;line-height:1.3}.qw-table th{background:#f0f0f0}"
             ".qw-table td:first-child{text-align:left;max-width:150px}</style>")


def fmt_value(v: Any) -> str:
    """Compact text of an info/stat value: 1,234 for ints, 4 significant digits (`fmt_number`: a zero
    never signed), CxHxW shapes."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return fmt_number(v)
    if isinstance(v, Mapping):
        return ", ".join(f"{k}={fmt_value(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        if v and all(isinstance(x, int) for x in v) and len(v) == 3:
            return "x".join(map(str, v))
        return ", ".join(fmt_value(x) for x in v)
    return str(v)


def info_html(info: Mapping[str, Any], pairs_per_row: int = 2) -> str:
    """HTML table of key | value cells, `pairs_per_row` pairs per row (values escaped); styled by TABLE_CSS."""
    cells = [f"<th style='text-align:left'>{html.escape(str(k))}</th>"
             f"<td style='text-align:left'>{html.escape(fmt_value(v))}</td>" for k, v in info.items()]
    rows = "".join("<tr>" + "".join(cells[i:i + pairs_per_row]) + "</tr>"
                   for i in range(0, len(cells), pairs_per_row))
    return f"<table class='qw-table qw-info'>{rows}</table>"


def stats_html(rows: Sequence[Mapping[str, Any]]) -> str:
    """HTML tables of dict rows: one table per run of rows with the same columns (tensor statistics,
    then error rows), so no table carries the union of both and runs off a 780 px panel; styled by TABLE_CSS."""
    if not rows:
        return ""
    groups: list[list[Mapping[str, Any]]] = []
    for r in rows:
        if groups and list(groups[-1][0]) == list(r):
            groups[-1].append(r)
        else:
            groups.append([r])
    tables = []
    for group in groups:
        cols = list(group[0])
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt_value(r.get(c, '')))}</td>" for c in cols) + "</tr>"
                       for r in group)
        tables.append(f"<table class='qw-table qw-stats'><tr>{head}</tr>{body}</table>")
    return "".join(tables)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk.
    Raises: ValueError when `data` is not a PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError(f"LayerPanel: picture is not a PNG (starts with {data[:8]!r})")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def pictures_html(images: Mapping[str, bytes]) -> str:
    """The slots of `images` that hold bytes, in ROWS order with their captions, as <img> tags with data:
    URIs. Width and height are written on each tag, so the panel keeps its height while they decode."""
    rows = []
    for row in ROWS:
        cells = []
        for key in row:
            data = images.get(key, b"")
            if data:
                w, h = png_size(data)
                cells.append(f"<div class='qw-pic qw-pic-{key}'><small>{html.escape(IMAGE_SLOTS[key])}</small>"
                             f"<img width='{w}' height='{h}' alt='{html.escape(IMAGE_SLOTS[key])}' "
                             f"src='data:image/png;base64,{base64.b64encode(data).decode('ascii')}'></div>")
        if cells:
            rows.append(f"<div class='qw-row'>{''.join(cells)}</div>")
    return "".join(rows)


class LayerPanel(widgets.VBox):
    """Info table, feature-map montages, FLOAT/INT/error images, histograms and a statistics table.

    `images` holds the PNG bytes of each slot shown (b"" when left out); `title`, `info`, `stats` and
    `pictures` the HTML of the parts that the one content widget carries (`content_html()`)."""

    node_id = traitlets.Unicode("", help="id of the layer shown ('' = nothing yet)")
    hist_log2 = traitlets.Bool(False, help="ask for log2 (octave) histogram bins; the feeder recomputes")
    hist_log_y = traitlets.Bool(False, help="ask for a log-scale count axis; the feeder recomputes")

    def __init__(self, **kwargs) -> None:
        self.images: dict[str, bytes] = {k: b"" for k in IMAGE_SLOTS}
        self.title, self.info, self.stats, self.pictures = "<b>no layer selected</b>", "", "", ""
        # a style element applies wherever it sits: hidden, it takes no line
        self._css = widgets.HTML(TABLE_CSS + PANEL_CSS, layout=widgets.Layout(display="none"))
        self._content = widgets.HTML(self.content_html(), layout=widgets.Layout(max_width="100%"))
        self._log2 = widgets.Checkbox(description="log2 bins", indent=False, layout=widgets.Layout(width="110px"))
        self._log_y = widgets.Checkbox(description="log counts", indent=False, layout=widgets.Layout(width="110px"))
        # the histogram options above the content: between the tables and the pictures they would split the
        # content into two widgets, two messages per update
        options = widgets.HBox([widgets.HTML("<small>histograms:</small>"), self._log2, self._log_y])
        super().__init__(children=[self._css, options, self._content], **kwargs)
        self.add_class("qw-layer-panel")
        traitlets.link((self, "hist_log2"), (self._log2, "value"))
        traitlets.link((self, "hist_log_y"), (self._log_y, "value"))

    def content_html(self) -> str:
        """Title, info table, statistics tables (scrolling on their own: side by side with the info they ran
        off a 782 px panel), then the pictures."""
        return (f"<div class='qw-panel-title'>{self.title}</div>{self.info}"
                f"<div class='qw-stats-scroll'>{self.stats}</div>{self.pictures}")

    def show(self, info: Mapping[str, Any], images: Mapping[str, bytes],
             stats_rows: Sequence[Mapping[str, Any]]) -> None:
        """Display one layer: `info` (key -> value), `images` (slot key -> PNG bytes), `stats_rows`.

        Keys of `images` must be slots of IMAGE_SLOTS; missing slots are left out.
        Raises: KeyError for an unknown image key; ValueError for bytes that are not a PNG.
        """
        unknown = set(images) - set(IMAGE_SLOTS)
        if unknown:
            raise KeyError(f"LayerPanel.show: unknown image keys {sorted(unknown)}; slots are {list(IMAGE_SLOTS)}")
        nid = str(info.get("id", self.node_id))
        kind = info.get("kind", "")
        self.pictures = pictures_html(images)
        self.images = {k: images.get(k, b"") for k in IMAGE_SLOTS}
        self.info, self.stats = info_html(info), stats_html(stats_rows)
        self.title = ("<b>network input</b>" if kind == "input"
                      else f"<b>layer {html.escape(nid)}</b> {html.escape(str(kind))}")
        self._update(nid)

    def _update(self, nid: str) -> None:
        # one value: the title never names a layer while the pictures still show another
        with self.hold_sync():
            self._content.value = self.content_html()
            self.node_id = nid

    def clear(self) -> None:
        """Show nothing (e.g. after a model change)."""
        self.images = {k: b"" for k in IMAGE_SLOTS}
        self.title, self.info, self.stats, self.pictures = "<b>no layer selected</b>", "", "", ""
        self._update("")
