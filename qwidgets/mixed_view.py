"""MixedPrecisionView: the fewest layers to keep FLOAT for a target agreement with FLOAT, and the curve.

"Search" runs `engine.quant.mixed.search` (the session's model and quantized model, the chosen image set,
the target mAP@[.5:.95], the session's INT or HYBRID mode) in a `LongTask`: the bar advances per run of the
search (FLOAT, the all-int8 start, one per candidate layer's sensitivity, one per layer kept FLOAT; the
engine's total counts the runs that will run: a greedy run once the one before missed the target, so the
bar never jumps to done nor counts runs that do not come) and the text names the run ("sensitivity, layer 3
of 13: conv 4", "keeping FLOAT 2 of at most 13: conv 15"); Cancel stops it before the next run (inside a run,
between images), leaving the session and the last result as they were. The
Backend dropdown is passed as `search(backend=...)`. The result is the trade-off curve as a table (layers
kept FLOAT -> mAP@[.5:.95], mAP@0.5, lost, extra: the engine's numbers) and a bar chart, and "Keep these
FLOAT" sets the session's FLOAT layers to the result's (`Session.set_mode(mode, float_layers=...)`).
"""
from __future__ import annotations

import html
from typing import Sequence

import ipywidgets as widgets
import traitlets

from engine.imaging.samples import sample_images
from engine.quant.mixed import MixedResult, search
from engine.quant.progress import counted
from qwidgets._encode import bar_chart_png
from qwidgets._errors import Message, shows_errors
from qwidgets._long_task import LongTask, result_dropped
from qwidgets._png_image import PngImage
from qwidgets.backend_choice import BackendChoice
from qwidgets.layer_panel import TABLE_CSS
from qwidgets.quant_view import GIVEN, SAMPLES, SAMPLES_AUGMENTED, augmented_samples


def target_text(result: MixedResult) -> str:
    """The whole target the search met or missed: the mAP and the lost detections. With the mAP alone, a
    start at 0.952 for a target of 0.95 (one detection lost) looked met, and the search's 16 layers absurd."""
    lost = "no FLOAT detection lost" if result.max_lost == 0 else f"at most {result.max_lost} FLOAT detections lost"
    return f"mAP@[.5:.95] \u2265 {result.target} and {lost}"


def curve_html(result: MixedResult) -> str:
    """The search's curve, one row per step (the engine's CurvePoint values), and its verdict."""
    rows = "".join(f"<tr><td>{p.layers_float}</td><td>{'-' if p.added is None else p.added}</td>"
                   f"<td>{p.map50_95:.3f}</td><td>{p.map50:.3f}</td><td>{p.lost}</td><td>{p.extra}</td>"
                   f"<td>{', '.join(map(str, p.added_layers)) or '-'}</td>"
                   f"<td>{'-' if p.float_count is None else p.float_count}</td></tr>"
                   for p in result.curve)
    verdict = "met" if result.met else "NOT met (every candidate tried or the layer limit reached)"
    return (f"{TABLE_CSS}<table class='qw-table qw-mixed'><tr><th>weight layers kept FLOAT</th><th>added</th>"
            "<th>mAP@[.5:.95] vs FLOAT</th><th>mAP@0.5 vs FLOAT</th><th>lost</th><th>extra</th>"
            "<th>layers added (with the maxpool / route / upsample after it)</th><th>all layers FLOAT</th></tr>"
            f"{rows}</table><div>target {html.escape(target_text(result))} ({html.escape(result.mode)}, "
            f"{result.images} images): <b>{verdict}</b>; FLOAT layers {list(result.float_layers)}</div>")


class MixedPrecisionView(widgets.VBox):
    """Target, image set, Search (LongTask), curve table + chart, Keep these FLOAT."""

    float_layers = traitlets.List(traitlets.Int(), help="FLOAT layers of the last search's result")
    status = Message("", help="last message shown to the user")
    error_details = Message("", help="traceback of the last unexpected error")
    revision = traitlets.Int(0, help="bumped when the result's FLOAT layers were applied to the session")

    def __init__(self, session, images: Sequence | None = None, background: bool = True, **kwargs) -> None:
        self._session = session
        self._given = list(images) if images is not None else None
        self.result: MixedResult | None = None
        self.target = widgets.BoundedFloatText(value=0.95, min=0.01, max=1.0, step=0.01,
                                               description="target mAP@[.5:.95]", style={"description_width": "auto"},
                                               layout=widgets.Layout(width="220px"))
        self.max_layers = widgets.BoundedIntText(value=0, min=0, max=10_000, description="max FLOAT (0 = any)",
                                                 style={"description_width": "auto"},
                                                 layout=widgets.Layout(width="200px"))
        options = ([GIVEN] if self._given is not None else []) + [SAMPLES, SAMPLES_AUGMENTED]
        self.images = widgets.Dropdown(options=options, value=options[0], description="Images",
                                       layout=widgets.Layout(width="330px"))
        self.backend = BackendChoice()
        self.search_button = widgets.Button(description="Search", icon="sliders", button_style="primary",
                                            layout=widgets.Layout(width="120px"))
        self.task = LongTask(background=background)
        self.keep_button = widgets.Button(description="Keep these FLOAT", icon="check", disabled=True,
                                          layout=widgets.Layout(width="auto", min_width="200px"))
        self.table = widgets.HTML("<small>Search keeps the most sensitive layers FLOAT, one by one, until the "
                                  "quantized run agrees with FLOAT to the target (COCO mAP@[.5:.95]) and loses no "
                                  "FLOAT detection.</small>")
        self.chart = PngImage()
        super().__init__(children=[widgets.HBox([self.target, self.max_layers, self.images]),
                                   widgets.HBox([self.backend, self.search_button, self.keep_button, self.task],
                                               layout=widgets.Layout(flex_flow="row wrap")),
                                   self.table, self.chart], **kwargs)
        self.add_class("qw-mixed-view")
        self.search_button.on_click(self._on_search_click)
        self.keep_button.on_click(self._on_keep_click)

    def _images(self) -> list:
        if self.images.value == GIVEN:
            return list(self._given)
        return list(sample_images()) if self.images.value == SAMPLES else augmented_samples()

    @shows_errors
    def _on_search_click(self, _button) -> None:
        s = self._session
        if s.qmodel is None:
            raise ValueError("no quantized model: Compare and Adopt one in the Quantization tab first")
        mode = s.mode if s.mode in ("int", "hybrid") else "int"
        args = (s.model, s.qmodel, self._images())
        opts = {"target": float(self.target.value), "mode": mode, "max_layers": self.max_layers.value or None,
                "backend": self.backend.value}
        self.search_button.disabled = self.keep_button.disabled = True

        def work(tick):
            return search(*args, on_progress=tick, cancel=self.task.cancel_requested, **opts)
        self.task.start(work, lambda result: self._done(result, args[:2]), what="mixed-precision search")

    def wait(self, timeout: float | None = None) -> None:
        self.task.wait(timeout)

    def _done(self, result, models: tuple | None = None) -> None:
        self.search_button.disabled = False
        self.keep_button.disabled = self.result is None      # a cancelled or failed search keeps the last result
        failure = self.task.failure(result, "mixed-precision search", self)
        if failure is not None:
            self.status = failure
            return
        dropped = result_dropped(self._session, models, "mixed-precision search", "Search again")
        if dropped is not None:
            self.status = dropped
            return
        self.show(result)
        self.status = (f"mixed precision: {counted(len(result.float_layers), 'layer')} FLOAT -> mAP@[.5:.95] "
                       f"{result.curve[-1].map50_95:.3f}, {result.curve[-1].lost} lost (target "
                       f"{target_text(result)}: "
                       f"{'met' if result.met else 'NOT met'})")

    def show(self, result: MixedResult) -> None:
        """Display a MixedResult (also one computed elsewhere)."""
        self.result = result
        self.table.value = curve_html(result)
        self.chart.value = bar_chart_png(
            [f"{p.layers_float} FLOAT" + ("" if p.added is None else f" +{p.added}") for p in result.curve],
            [p.map50_95 for p in result.curve], f"trade-off: layers kept FLOAT vs agreement (target {result.target})",
            "mAP@[.5:.95] of the quantized run vs FLOAT (higher is better)", lo=0.0, hi=1.0)
        self.float_layers = list(result.float_layers)
        self.keep_button.disabled = False

    @shows_errors
    def _on_keep_click(self, _button) -> None:
        if self.result is None:
            raise ValueError("run Search first")
        s = self._session
        s.set_mode(self.result.mode, float_layers=self.result.float_layers)
        self.revision += 1
        self.status = f"FLOAT layers now {sorted(s.float_layers)}; mode {s.mode.upper()}"

    def model_changed(self) -> None:
        self.result = None
        self.table.value, self.chart.value, self.float_layers = "", b"", []
        self.keep_button.disabled = True
