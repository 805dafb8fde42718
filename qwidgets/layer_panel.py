"""LayerPanel: a pure view of one layer, fed with already-computed data.

`show(info, images, stats_rows)` fills an info table, PNG images and a statistics table; it does
no computation (the data comes from `qwidgets._panel_data.layer_panel_data` today, from the
Session in the Explorer later). Image slots without data are hidden, so a FLOAT-only run shows
no empty INT boxes.
"""
from __future__ import annotations

import html
from typing import Any, Mapping, Sequence

import ipywidgets as widgets
import traitlets

# image key -> caption; the order is the display order inside each row
IMAGE_SLOTS = {
    "input": "input channels", "output": "output channels",
    "float": "FLOAT output", "int": "INT output", "heatmap": "error INT - FLOAT",
    "hist_input": "input histogram", "hist_output": "output histogram", "hist_weights": "weights histogram",
    "weights": "weights (columns: filters, rows: input channels)",
}
ROWS = [("input", "output"), ("float", "int", "heatmap"), ("hist_output", "hist_input"), ("hist_weights", "weights")]
TABLE_CSS = ("<style>.qw-table{margin-bottom:6px}.qw-table td,.qw-table th{padding:1px 6px;text-align:right;"
             "font-size:12px;line-height:1.3}.qw-table th{background:#f0f0f0}"
             ".qw-table td:first-child{text-align:left;max-width:150px}</style>")


def fmt_value(v: Any) -> str:
    """Compact text of an info/stat value: 1,234 for ints, 4 significant digits, CxHxW shapes."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, Mapping):
        return ", ".join(f"{k}={fmt_value(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        if v and all(isinstance(x, int) for x in v) and len(v) == 3:
            return "x".join(map(str, v))
        return ", ".join(fmt_value(x) for x in v)
    return str(v)


def info_html(info: Mapping[str, Any], pairs_per_row: int = 2) -> str:
    """HTML table of key | value cells, `pairs_per_row` pairs per row (values escaped)."""
    cells = [f"<th style='text-align:left'>{html.escape(str(k))}</th>"
             f"<td style='text-align:left'>{html.escape(fmt_value(v))}</td>" for k, v in info.items()]
    rows = "".join("<tr>" + "".join(cells[i:i + pairs_per_row]) + "</tr>"
                   for i in range(0, len(cells), pairs_per_row))
    return f"{TABLE_CSS}<table class='qw-table qw-info'>{rows}</table>"


def stats_html(rows: Sequence[Mapping[str, Any]]) -> str:
    """HTML tables of dict rows: one table per run of rows with the same columns (tensor statistics,
    then error rows), so no table carries the union of both and runs off a 780 px panel."""
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
    return TABLE_CSS + "".join(tables)


class LayerPanel(widgets.VBox):
    """Info table, feature-map montages, FLOAT/INT/error images, histograms and a statistics table."""

    node_id = traitlets.Unicode("", help="id of the layer shown ('' = nothing yet)")
    hist_log2 = traitlets.Bool(False, help="ask for log2 (octave) histogram bins; the feeder recomputes")
    hist_log_y = traitlets.Bool(False, help="ask for a log-scale count axis; the feeder recomputes")

    def __init__(self, **kwargs) -> None:
        self._title = widgets.HTML("<b>no layer selected</b>")
        self._info = widgets.HTML()
        self._stats = widgets.HTML()
        self._log2 = widgets.Checkbox(description="log2 bins", indent=False, layout=widgets.Layout(width="110px"))
        self._log_y = widgets.Checkbox(description="log counts", indent=False, layout=widgets.Layout(width="110px"))
        self.images = {k: widgets.Image(format="png", layout=widgets.Layout(max_width="100%")) for k in IMAGE_SLOTS}
        self._boxes = {k: widgets.VBox([widgets.HTML(f"<small>{html.escape(cap)}</small>"), self.images[k]],
                                       # flex-start: show PNGs at their own size, never stretched
                                       layout=widgets.Layout(display="none", margin="0 6px 6px 0",
                                                             align_items="flex-start"))
                       for k, cap in IMAGE_SLOTS.items()}
        rows = [widgets.HBox([self._boxes[k] for k in row], layout=widgets.Layout(flex_flow="row wrap"))
                for row in ROWS]
        # stacked, the statistics table scrolling on its own: side by side it ran off a 782 px panel
        self._stats.layout = widgets.Layout(overflow="auto", max_width="100%")
        tables = widgets.VBox([self._info, self._stats])
        super().__init__(children=[self._title, tables,
                                   widgets.HBox([self._log2, self._log_y]), *rows], **kwargs)
        self.add_class("qw-layer-panel")
        traitlets.link((self, "hist_log2"), (self._log2, "value"))
        traitlets.link((self, "hist_log_y"), (self._log_y, "value"))

    def show(self, info: Mapping[str, Any], images: Mapping[str, bytes],
             stats_rows: Sequence[Mapping[str, Any]]) -> None:
        """Display one layer: `info` (key -> value), `images` (slot key -> PNG bytes), `stats_rows`.

        Keys of `images` must be slots of IMAGE_SLOTS; missing slots are hidden.
        Raises: KeyError for an unknown image key.
        """
        unknown = set(images) - set(IMAGE_SLOTS)
        if unknown:
            raise KeyError(f"LayerPanel.show: unknown image keys {sorted(unknown)}; slots are {list(IMAGE_SLOTS)}")
        nid = str(info.get("id", self.node_id))
        with self.hold_sync():
            kind = info.get("kind", "")
            self._info.value = info_html(info)
            self._stats.value = stats_html(stats_rows)
            for key, img in self.images.items():
                data = images.get(key, b"")
                img.value = data
                self._boxes[key].layout.display = "flex" if data else "none"
            # the title goes last: it never names a layer while the pictures still show the previous one
            self._title.value = ("<b>network input</b>" if kind == "input"
                                 else f"<b>layer {html.escape(nid)}</b> {html.escape(str(kind))}")
            self.node_id = nid

    def clear(self) -> None:
        """Show nothing (e.g. after a model change)."""
        with self.hold_sync():
            self._title.value = "<b>no layer selected</b>"
            self._info.value = self._stats.value = ""
            for key, img in self.images.items():
                img.value = b""
                self._boxes[key].layout.display = "none"
            self.node_id = ""
