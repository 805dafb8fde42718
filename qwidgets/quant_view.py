"""QuantizationView: compare calibration methods on the session's model, pick and adopt the best.

Compare = one calibration pass (`engine.calib.collect.collect`) over the chosen image set, then
`engine.quant.compare.compare` once per method so the `IntProgress` advances per method; the
per-method results are ranked with the engine's own `MethodResult.key()` (INT mAP@0.5 vs FLOAT,
then HYBRID, then mean SQNR). The view shows the ranked table, a per-layer SQNR chart (one line
per method, PNG) and "Adopt best" (`session.set_quantized(best.qmodel)` + INT mode). A second
button runs the session's sensitivity sweep (the bar advances per layer) for the graph overlay.
"""
from __future__ import annotations

import html
import time
from typing import Sequence

import ipywidgets as widgets
import numpy as np
import traitlets
from PIL import Image, ImageDraw

from engine.augment import augment
from engine.calib import CALIBRATORS
from engine.calib.collect import collect
from engine.quant.compare import CompareTable, compare
from engine.samples import sample_images
from qwidgets._encode import SERIES_COLOURS, to_png
from qwidgets._errors import shows_errors
from qwidgets.layer_panel import TABLE_CSS

DEFAULT_METHODS = ("minmax", "percentile", "kl")
SAMPLES_AUGMENTED = "bundled samples + augmentations"
SAMPLES = "bundled samples"
GIVEN = "given images"
PATH = "folder / file below"
SQNR_CAP = 80.0             # dB; identical tensors (inf) are drawn at the cap


def augmented_samples() -> list:
    """The bundled photos, each as original, rotate, blur, flip and flop (PIL images)."""
    return [im for p in sample_images() for im in augment(p).values()]


def ranked_html(table: CompareTable) -> str:
    """HTML table: rank, method, INT / HYBRID agreement with FLOAT, mean SQNR, int8 size."""
    head = ("<tr><th>rank</th><th>method</th><th>INT mAP50</th><th>HYBRID mAP50</th><th>INT found</th>"
            "<th>extra</th><th>mean INT SQNR</th><th>int8 MB</th></tr>")
    rows = []
    for k, r in enumerate(table.results, 1):
        a, h = r.agreement["int"], r.agreement["hybrid"]
        rows.append(f"<tr><td>{k}</td><td>{html.escape(r.method)}</td><td>{a.map50:.3f}</td><td>{h.map50:.3f}</td>"
                    f"<td>{a.matched}/{a.matched + a.missed}</td><td>{a.extra}</td><td>{r.mean_sqnr:.1f} dB</td>"
                    f"<td>{r.size['int8_bytes'] / 1e6:.2f}</td></tr>")
    return f"{TABLE_CSS}<table class='qw-table qw-ranking'>{head}{''.join(rows)}</table>"


def sqnr_chart_png(series: dict[str, Sequence[float]], width: int = 640, height: int = 220,
                   title: str = "INT SQNR per layer (dB, propagated)") -> bytes:
    """Line chart PNG: x = layer index, y = SQNR dB, one line per method; NaN gaps, inf at SQNR_CAP."""
    im = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    left, right, top, bottom = 34, width - 90, 16, height - 18
    vals = {k: np.minimum(np.asarray(v, np.float64), SQNR_CAP) for k, v in series.items()}
    finite = np.concatenate([v[np.isfinite(v)] for v in vals.values()] + [np.zeros(0)])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    lo, hi = np.floor(lo / 10) * 10, max(np.ceil(hi / 10) * 10, np.floor(lo / 10) * 10 + 10)
    n = max(len(v) for v in vals.values()) if vals else 1
    px = lambda i: left + i * (right - left) / max(1, n - 1)           # noqa: E731
    py = lambda v: bottom - (v - lo) * (bottom - top) / (hi - lo)     # noqa: E731
    for tick in np.arange(lo, hi + 1e-9, 10):
        y = py(tick)
        draw.line([(left, y), (right, y)], fill=(230, 230, 230))
        draw.text((2, y - 6), f"{tick:.0f}", fill=(0, 0, 0))
    draw.line([(left, bottom), (right, bottom)], fill=(0, 0, 0))
    for i in range(0, n, max(1, n // 12)):
        draw.text((px(i) - 4, bottom + 3), str(i), fill=(0, 0, 0))
    for k, (label, v) in enumerate(vals.items()):
        colour = SERIES_COLOURS[k % len(SERIES_COLOURS)]
        pts = [(px(i), py(y)) if np.isfinite(y) else None for i, y in enumerate(v)]
        for a, b in zip(pts, pts[1:]):
            if a is not None and b is not None:
                draw.line([a, b], fill=colour, width=2)
        for p in pts:
            if p is not None:
                draw.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=colour)
        draw.rectangle([right + 8, top + 14 * k + 3, right + 16, top + 14 * k + 10], fill=colour)
        draw.text((right + 20, top + 14 * k), label, fill=(0, 0, 0))
    draw.text((left, 2), title, fill=(0, 0, 0))
    return to_png(im)


class QuantizationView(widgets.VBox):
    """Method comparison with a progress bar, ranked table, SQNR chart, Adopt best; sensitivity sweep."""

    ranking = traitlets.List(traitlets.Unicode(), help="methods of the last comparison, best first")
    adopted = traitlets.Unicode("", help="method of the quantized model last adopted into the session")
    sensitivity_ranks = traitlets.Dict(help="node id -> sensitivity rank (1 = hurts most), from the last sweep")
    status = traitlets.Unicode("", help="last message shown to the user")

    def __init__(self, session, images: Sequence | None = None, methods: Sequence[str] = DEFAULT_METHODS,
                 **kwargs) -> None:
        self._session = session
        self._given = list(images) if images is not None else None
        self.table: CompareTable | None = None
        self._stats_cache: tuple[str, object] | None = None
        names = CALIBRATORS.names()
        self.method_boxes = {m: widgets.Checkbox(value=m in methods, description=m, indent=False,
                                                 layout=widgets.Layout(width="110px")) for m in names}
        self._per_channel = widgets.Checkbox(value=True, description="per-channel weights", indent=False)
        options = ([GIVEN] if self._given is not None else []) + [SAMPLES_AUGMENTED, SAMPLES, PATH]
        self._images = widgets.Dropdown(options=options, value=options[0], description="Images",
                                        layout=widgets.Layout(width="360px"))
        self._path = widgets.Text(placeholder="/path/to/calibration/images", layout=widgets.Layout(width="260px"))
        self.compare_button = widgets.Button(description="Compare", icon="bar-chart", button_style="primary")
        self.adopt_button = widgets.Button(description="Adopt best", icon="check", disabled=True)
        self.sensitivity_button = widgets.Button(description="Sensitivity sweep", icon="sort-amount-desc",
                                                 layout=widgets.Layout(width="160px"))
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="",
                                            layout=widgets.Layout(width="300px"))
        self._table = widgets.HTML()
        self.chart = widgets.Image(format="png")
        self._status = widgets.Label()
        super().__init__(children=[
            widgets.HBox(list(self.method_boxes.values()), layout=widgets.Layout(flex_flow="row wrap")),
            widgets.HBox([self._per_channel, self._images, self._path]),
            widgets.HBox([self.compare_button, self.progress, self.adopt_button, self.sensitivity_button]),
            self._table, self.chart, self._status], **kwargs)
        self.add_class("qw-quant-view")
        traitlets.dlink((self, "status"), (self._status, "value"))
        self.compare_button.on_click(self._on_compare_click)
        self.adopt_button.on_click(self._on_adopt_click)
        self.sensitivity_button.on_click(self._on_sensitivity_click)

    def methods(self) -> list[str]:
        return [m for m, box in self.method_boxes.items() if box.value]

    def _image_set(self) -> tuple[str, list]:
        choice = self._images.value
        if choice == GIVEN:
            return choice, list(self._given)
        if choice == SAMPLES:
            return choice, list(sample_images())
        if choice == PATH:
            path = self._path.value.strip()
            if not path:
                raise ValueError("type a folder (or file) of calibration images")
            return f"{PATH}:{path}", [path]
        return choice, augmented_samples()

    @shows_errors
    def _on_compare_click(self, _button) -> None:
        methods = self.methods()
        if not methods:
            raise ValueError("tick at least one calibration method")
        key, images = self._image_set()
        model, t0 = self._session.model, time.perf_counter()
        self.progress.max, self.progress.value = len(methods) + 1, 0
        self.status = f"calibrating on {key} ..."
        if self._stats_cache is None or self._stats_cache[0] != key:
            self._stats_cache = (key, collect(model, images, progress=False))
        stats = self._stats_cache[1]
        self.progress.value = 1
        def advance(result, done, total) -> None:
            self.progress.value = 1 + done
            self.status = f"compared {result.method} ({done}/{total}) ..."
        self.table = compare(model, stats, images, methods, per_channel=self._per_channel.value, progress=False,
                             on_method=advance)
        self.show_table(self.table)
        self.status = (f"compared {len(methods)} methods on {stats.images} images in "
                       f"{time.perf_counter() - t0:.1f} s: best {self.table.best.method}")

    def show_table(self, table: CompareTable) -> None:
        """Display a CompareTable (also usable with a table computed elsewhere)."""
        self.table = table
        with self.hold_sync():
            self._table.value = ranked_html(table)
            self.chart.value = sqnr_chart_png({r.method: [row["int_sqnr"] for row in r.layers]
                                               for r in table.results})
            self.ranking = [r.method for r in table.results]
            self.adopt_button.disabled = False
            self.adopt_button.description = f"Adopt {table.best.method}"

    @shows_errors
    def _on_adopt_click(self, _button) -> None:
        if self.table is None:
            raise ValueError("run Compare first")
        best = self.table.best
        self._session.set_quantized(best.qmodel)
        if self._session.mode == "float":
            self._session.set_mode("int")
        self.adopted = ""          # a second adoption of the same method still notifies
        self.adopted = best.method
        self.status = f"adopted {best.method} ({'per-channel' if best.per_channel else 'per-tensor'}); mode INT"

    @shows_errors
    def _on_sensitivity_click(self, _button) -> None:
        s = self._session
        self.progress.value, self.progress.max = 0, max(1, s.num_layers)
        self.status = "sensitivity sweep ..."

        def tick() -> bool:             # called once per swept layer: advance the bar, never cancel
            self.progress.value = min(self.progress.max, self.progress.value + 1)
            return False
        table = s.sensitivity(progress=False, cancel=tick)
        self.progress.value = self.progress.max
        self.sensitivity_ranks = table.ranks()
        worst = ", ".join(f"{r.index} [{r.kind}]" for r in table.rows[:3])
        self.status = f"sensitivity: {len(table.rows)} layers ranked; hurt most when quantized: {worst}"
