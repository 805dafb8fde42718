"""DetectionsView: FLOAT detections and the current mode's detections side by side, as PNGs, and their diff.

A pure view: `show(pre, float_dets, dets, label)` draws the boxes with `engine.imaging.draw.draw_detections`
on the session's image and sends PNG bytes. Without the photo the image is recovered from the network
input by the engine (`Preprocessed.to_image`: the letterbox undone), so the view needs no path and
works for every image a session can take (file, upload, array).
"""
from __future__ import annotations

import html
from typing import Sequence

import ipywidgets as widgets
import traitlets
from PIL import Image

from engine.darknet.image import Preprocessed
from engine.imaging.draw import class_colors, draw_detections
from engine.quant.explain import DetectionDiff, match_detections
from engine.quant.progress import counted
from qwidgets._encode import to_png
from qwidgets.layer_panel import TABLE_CSS
from qwidgets._png_image import PngImage

MAX_SIDE = 480          # display size of both pictures (the comm carries the PNG bytes)
FONT = 14               # label text height in pixels at display size


def image_from_input(pre: Preprocessed) -> Image.Image:
    """The original-size RGB image inside a network input (`Preprocessed.to_image`)."""
    return pre.to_image()


def detections_png(image: Image.Image, dets: Sequence, labels: Sequence[str] | None = None,
                   colors: dict | None = None) -> bytes:
    """The photo at display size (longest side MAX_SIDE) with boxes drawn at that size: labels stay
    ~14 px whatever the photo's resolution, and FLOAT and the run come out the same size."""
    scale = MAX_SIDE / max(image.width, image.height)
    small = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.BILINEAR)
    return to_png(draw_detections(small, dets, width=2, scale=scale, font_size=FONT, colors=colors, labels=labels))


def names_text(dets: Sequence) -> str:
    return ", ".join(f"{d.name} {d.score:.2f}" for d in dets) or "none"


STATUS_STYLE = {"matched": "#1a9850", "shifted": "#d08c00", "lost": "#d73027", "extra": "#7b3294"}


def diff_html(diff: DetectionDiff, run_label: str) -> str:
    """The detection diff as a table: # (the number on the boxes), class, FLOAT score, status, IoU,
    the run's score; then the run's extra detections."""
    c = diff.counts()
    head = (f"<b>FLOAT vs {html.escape(run_label)}</b>: {c['matched']} matched (IoU &ge; 0.9), "
            f"{c['shifted']} shifted (0.5 &le; IoU &lt; 0.9), {c['lost']} lost, {c['extra']} extra")
    rows = []
    for m in diff.matches:
        col = STATUS_STYLE[m.status]
        rows.append(f"<tr><td>{m.index + 1}</td><td>{html.escape(m.det.name)}</td><td>{m.det.score:.2f}</td>"
                    f"<td style='color:{col};font-weight:bold'>{m.status}</td><td>{m.iou:.2f}</td>"
                    f"<td>{'-' if m.other is None else f'{m.other.score:.2f}'}</td></tr>")
    for k, d in enumerate(diff.extra):
        rows.append(f"<tr><td>+{k + 1}</td><td>{html.escape(d.name)}</td><td>-</td>"
                    f"<td style='color:{STATUS_STYLE['extra']};font-weight:bold'>extra</td><td>-</td>"
                    f"<td>{d.score:.2f}</td></tr>")
    table = ("<table class='qw-table qw-diff'><tr><th>#</th><th>class</th><th>FLOAT score</th><th>status</th>"
             f"<th>IoU</th><th>{html.escape(run_label)} score</th></tr>{''.join(rows)}</table>")
    return f"{TABLE_CSS}<div>{head}</div>{table}"


def heads_html(rows: Sequence) -> str:
    """Head analysis (engine.quant.heads): per head and anchor, SQNR dB of x/y, w/h, objectness, class
    scores; cells below 10 dB red, 10-20 dB orange (higher is better)."""
    if not rows:
        return ""
    parts = list(dict.fromkeys(r.part for r in rows))
    cells: dict[tuple, dict] = {}
    for r in rows:
        cells.setdefault((r.layer, r.anchor, r.anchor_wh), {})[r.part] = r.sqnr_db

    def cell(v: float) -> str:
        bg = "#f4a582" if v < 10 else ("#fddbc7" if v < 20 else "#ffffff")
        return f"<td style='background:{bg}'>{v:.1f}</td>"
    body = "".join(f"<tr><td>{layer}</td><td>{a} ({wh[0]:g}x{wh[1]:g} px)</td>"
                   + "".join(cell(v[p]) for p in parts) + "</tr>" for (layer, a, wh), v in cells.items())
    head = "".join(f"<th>{html.escape(p)}</th>" for p in parts)
    return (f"{TABLE_CSS}<div><b>Head analysis</b>: SQNR of each part of the head output vs FLOAT, dB "
            "(higher is better; red &lt; 10 dB)</div><table class='qw-table qw-heads'><tr><th>head layer</th>"
            f"<th>anchor</th>{head}</tr>{body}</table>")


class DetectionsView(widgets.VBox):
    """Two images at the same size, FLOAT (left) and the session's mode (right), boxes numbered as in the
    diff table below them (matched / shifted / lost / extra, from `engine.quant.explain`)."""

    float_names = traitlets.List(traitlets.Unicode(), help="class names of the FLOAT detections")
    names = traitlets.List(traitlets.Unicode(), help="class names of the current mode's detections")
    counts = traitlets.Dict(help="matched / shifted / lost / extra counts of the last diff")

    def __init__(self, **kwargs) -> None:
        self.images = [PngImage(layout=widgets.Layout(width=f"{MAX_SIDE}px")) for _ in range(2)]
        self._captions = [widgets.HTML("<small>FLOAT</small>"), widgets.HTML("<small>run to the end (Run) to see "
                                                                                 "this mode's detections</small>")]
        self.table = widgets.HTML()
        self.table.add_class("qw-diff-table")
        self.heads = widgets.HTML()
        self.heads.add_class("qw-heads-table")
        self.diff: DetectionDiff | None = None
        cols = [widgets.VBox([c, i], layout=widgets.Layout(margin="0 8px 0 0", align_items="flex-start",
                                                           flex="0 0 auto"))
                for c, i in zip(self._captions, self.images)]
        super().__init__(children=[widgets.HBox(cols, layout=widgets.Layout(flex_flow="row wrap")), self.table,
                                   self.heads], **kwargs)
        self.add_class("qw-detections")

    def clear(self) -> None:
        """Nothing to compare yet (the run is not complete)."""
        with self.hold_sync():
            for img in self.images:
                img.value = b""
            self._captions[0].value = "<small><b>FLOAT</b></small>"
            self._captions[1].value = "<small>run to the end (Run) to compare this mode's detections</small>"
            self.float_names, self.names, self.counts, self.diff, self.table.value = [], [], {}, None, ""
            self.heads.value = ""

    def show_heads(self, rows: Sequence) -> None:
        """The head analysis table (empty rows: hidden)."""
        self.heads.value = heads_html(rows)

    def show(self, pre: Preprocessed, float_dets: Sequence, dets: Sequence | None, label: str,
             image: Image.Image | None = None) -> None:
        """Draw FLOAT detections and, unless `dets` is None (run not finished), `label`'s detections.

        `image` is the original photo when known (Session.image); else it is rebuilt from the input.
        """
        image = image if image is not None else image_from_input(pre)
        colors = class_colors(float_dets, dets or [])
        with self.hold_sync():
            self._captions[0].value = f"<small><b>FLOAT</b>: {counted(len(float_dets), 'detection')}</small>"
            self.float_names = [d.name for d in float_dets]
            if dets is None:
                self.images[0].value = detections_png(image, float_dets, colors=colors)
                self.images[1].value = b""
                self._captions[1].value = (f"<small><b>{html.escape(label)}</b>: run to the end to see "
                                           "detections</small>")
                self.names, self.counts, self.diff, self.table.value = [], {}, None, ""
                return
            diff = match_detections(float_dets, dets)
            self.diff = diff
            f_labels = [f"{k + 1} {d.name} {d.score:.2f}" for k, d in enumerate(float_dets)]
            partner = {id(m.other): m.index for m in diff.matches if m.other is not None}
            extra = {id(d): k for k, d in enumerate(diff.extra)}
            r_labels = [f"{partner[id(d)] + 1} {d.name} {d.score:.2f}" if id(d) in partner
                        else f"+{extra[id(d)] + 1} {d.name} {d.score:.2f}" for d in dets]
            self.images[0].value = detections_png(image, float_dets, f_labels, colors)
            self.images[1].value = detections_png(image, dets, r_labels, colors)
            self._captions[1].value = f"<small><b>{html.escape(label)}</b>: {counted(len(dets), 'detection')}</small>"
            self.names = [d.name for d in dets]
            self.counts = diff.counts()
            self.table.value = diff_html(diff, label.split(",")[0])
