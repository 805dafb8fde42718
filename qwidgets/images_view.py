"""WorstImagesView: which images of a set the quantized run gets most wrong; a click opens one.

"Rank images" runs `engine.quant.worst_images.rank_images` (FLOAT vs the session's mode and quantized
model, per image: mAP@0.5, mAP@[.5:.95], lost, shifted, extra) in a `LongTask` (progress, estimate,
Cancel), then shows a table and a bar chart, worst first. Picking an image in the list opens it in the
session (`Session.reset(image=...)`). The Backend dropdown (`BackendChoice`) says where FLOAT and the
quantized run execute (`backend=`: numpy, onnxruntime, auto); the engine's refusal shows as status.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import ipywidgets as widgets

from engine.imaging.samples import sample_images
from engine.quant.worst_images import ImageAgreement, rank_images
from engine.quant.progress import counted
from qwidgets._encode import bar_chart_png
from qwidgets._errors import Message, shows_errors
from qwidgets._long_task import LongTask
from qwidgets._png_image import PngImage
from qwidgets.backend_choice import BackendChoice
from qwidgets.layer_panel import TABLE_CSS

SAMPLES = "bundled samples"
PATH = "folder below"


def ranking_html(rows: Sequence[ImageAgreement], run: str = "") -> str:
    """The ranking table; `run` ("HYBRID, minmax") names the quantized run ranked, which the table keeps
    saying after the session moves to another mode or quantized model."""
    body = "".join(f"<tr><td>{k + 1}</td><td>{html.escape(r.name)}</td><td>{r.map50:.3f}</td><td>{r.map50_95:.3f}"
                   f"</td><td>{r.n_float}</td><td>{r.lost}</td><td>{r.shifted}</td><td>{r.extra}</td></tr>"
                   for k, r in enumerate(rows))
    caption = f"<caption>{html.escape(run)} run vs FLOAT, worst first</caption>" if run else ""
    return (f"{TABLE_CSS}<table class='qw-table qw-worst-images'>{caption}<tr><th>#</th><th>image</th>"
            "<th>mAP@0.5 vs FLOAT</th><th>mAP@[.5:.95]</th><th>FLOAT boxes</th><th>lost</th><th>shifted</th>"
            "<th>extra</th></tr>"
            f"{body}</table>")


class WorstImagesView(widgets.VBox):
    """Rank an image set by agreement with FLOAT, worst first; pick one to open it."""

    status = Message("", help="last message shown to the user")
    error_details = Message("", help="traceback of the last unexpected error")

    def __init__(self, session, images: Sequence | None = None, background: bool = True, **kwargs) -> None:
        self._session = session
        self._given = list(images) if images is not None else None
        self.rows: list[ImageAgreement] = []
        self._items: list = []
        self._set = widgets.Dropdown(options=(["given images"] if images is not None else []) + [SAMPLES, PATH],
                                     description="Images", layout=widgets.Layout(width="300px"))
        self._path = widgets.Text(placeholder="/path/to/images", layout=widgets.Layout(width="260px"))
        self.backend = BackendChoice()
        self.rank_button = widgets.Button(description="Rank images", icon="sort-amount-asc", button_style="primary")
        self.task = LongTask(background=background)
        self.table = widgets.HTML("<small>Ranks every image of the set by how well the session's quantized run "
                                  "agrees with FLOAT (worst first); pick one below to open it.</small>")
        self.chart = PngImage()
        self.pick = widgets.Select(rows=6, layout=widgets.Layout(width="420px", display="none"))
        super().__init__(children=[widgets.HBox([self._set, self._path]),
                                   widgets.HBox([self.backend, self.rank_button, self.task],
                                                layout=widgets.Layout(flex_flow="row wrap")),
                                   self.table, self.pick, self.chart], **kwargs)
        self.add_class("qw-images-view")
        self.rank_button.on_click(self._on_rank_click)
        self.pick.observe(self._on_pick, names="value")

    def _images(self) -> list:
        if self._set.value == "given images":
            return list(self._given or [])
        if self._set.value == SAMPLES:
            return list(sample_images())
        from engine.calib.collect import image_list
        if not self._path.value.strip():
            raise ValueError("type a folder of images (or pick the bundled samples)")
        return image_list(self._path.value.strip())

    @shows_errors
    def _on_rank_click(self, _button) -> None:
        s = self._session
        if s.mode == "float" or s.qmodel is None:
            raise ValueError("ranking compares the INT or HYBRID run with FLOAT: pick mode INT or HYBRID first")
        items = self._images()
        args = (s.model, s.qmodel, str(s.mode))
        opts = {"float_layers": sorted(s.float_layers), "resize": s.resize, "thresh": s.thresh, "nms": s.nms,
                "backend": self.backend.value}
        self.rank_button.disabled = True
        # the list the rows index: replaced only with the rows (`_done`), so a row of the table still
        # shown (a ranking that fails, or one that runs) opens its own image
        # which run was ranked: the table outlives a later switch of mode or quantized model, and
        # "mAP@0.5 vs FLOAT" alone did not say whether HYBRID or INT was compared
        run = f"{str(s.mode).upper()}, {s.qmodel.method}"
        self.task.start(lambda tick: rank_images(*args, items, on_progress=tick, **opts),
                        lambda rows: self._done(rows, items, run), what=f"ranking {counted(len(items), 'image')}")

    def wait(self, timeout: float | None = None) -> None:
        self.task.wait(timeout)

    def _done(self, rows, items: list, run: str = "") -> None:
        self.rank_button.disabled = False
        failure = self.task.failure(rows, "ranking", self)
        if failure is not None:
            self.status = failure
            return
        self.rows, self._items = rows, items
        self.table.value = ranking_html(rows, run)
        self.chart.value = bar_chart_png([r.name[:14] for r in rows[:12]], [r.map50 for r in rows[:12]],
                                         "images, worst first", f"mAP@0.5, {run.split(',')[0] or 'quantized'} vs "
                                         "FLOAT (1 = same detections)",
                                         lo=0.0, hi=1.0, colour=(49, 130, 189))
        with self.pick.hold_trait_notifications():
            self.pick.options = [(f"{r.name}: mAP@0.5 {r.map50:.2f}, lost {r.lost}, extra {r.extra}", r.index)
                                 for r in rows]
            self.pick.value = None
        self.pick.layout.display = "flex"
        self.status = (f"ranked {counted(len(rows), 'image')} ({run} vs FLOAT); worst: {rows[0].name} "
                       f"(mAP@0.5 {rows[0].map50:.2f})") if rows else "no images"

    @shows_errors
    def _on_pick(self, change) -> None:
        if change.new is None:
            return
        image = self._items[change.new]
        self._session.reset(image=image)
        name = Path(image).name if isinstance(image, (str, Path)) else f"image {change.new}"
        self.status = f"opened {name} (restarted from the input): Run to compare its detections"
