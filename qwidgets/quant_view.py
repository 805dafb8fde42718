"""QuantizationView: compare calibration methods on the session's model, pick and adopt the best.

Compare = `session.compare_methods(images, methods, key=<image set>, on_progress=...)`: one calibration
pass over the chosen image set (cached by the session per image-set key and model version, so a weight
edit recalibrates), then one quantize + evaluate per method, ranked by the engine (INT mAP@0.5 vs
FLOAT, then HYBRID, then mean SQNR). The bar advances per calibration image, then per unit of the runs
(per image FLOAT, then each method in HYBRID and INT: `on_run`, its total known up front; cached statistics
count as done), and Cancel stops between units (the table shown stays); the status line names the step while
the methods are quantized and refined, then the run unit ("kl: INT, image 3 of 15") (`progress=False`: no
tqdm bars under the tab). The image set is the given images, the bundled photos (with or without
augmentations), a path, or an image set of a connected workspace. The Profile and
Backend dropdowns go to `compare_methods(profile=, backend=)` (INT on ONNX Runtime needs profile onnxruntime;
the engine says so in the status line otherwise), the ticked refinements to `compare_methods(refine=)`.

The view shows the ranked table, a per-layer SQNR chart (one line per method, PNG) and "Adopt best"
(`set_quantized(best.qmodel)` + INT mode; a second click confirms dropping int8 / scale edits). A
second button runs the session's sensitivity sweep (the bar advances per layer) for the graph overlay.
"""
from __future__ import annotations

import html
import os
import threading
import time
import uuid
from typing import TYPE_CHECKING, Sequence

import ipywidgets as widgets
import traitlets

from engine.imaging.augment import augment
from engine.calib import CALIBRATORS
from engine.calib.collect import image_list
from engine.scale.filestamp import image_set_stamp
from engine.quant.profiles import DEFAULT as DEFAULT_PROFILE, PROFILES
from engine.quant.progress import counted
from engine.quant.refine.pipeline import AFTER as REFINE_AFTER
from engine.imaging.samples import sample_images
from qwidgets._confirm import Refused, SwitchGuard, dropped_text
from qwidgets.backend_choice import BackendChoice
from qwidgets._encode import bar_chart_png
from qwidgets._errors import ErrorDetails, Message, report, shows_errors
from qwidgets._long_task import Cancelled, finish_on, main_loop
from qwidgets._sync import holding
from qwidgets._quant_render import SQNR_CAP, ranked_html, sqnr_chart_png
from qwidgets._png_image import PngImage

if TYPE_CHECKING:
    from engine.scale.compare import CompareTable

__all__ = ["QuantizationView", "SQNR_CAP", "augmented_samples", "ranked_html", "sqnr_chart_png"]

DEFAULT_METHODS = ("minmax", "percentile", "kl")
SAMPLES_AUGMENTED = "bundled samples + augmentations"
SAMPLES = "bundled samples"
GIVEN = "given images"
PATH = "folder / file below"
WORKSPACE = "ws:"           # dropdown values of workspace image sets: "ws:<entry name>"


def augmented_samples() -> list:
    """The bundled photos, each as original, rotate, blur, flip and flop (PIL images)."""
    return [im for p in sample_images() for im in augment(p).values()]


class QuantizationView(widgets.VBox):
    """Method comparison with a progress bar, ranked table, SQNR chart, Adopt best; sensitivity sweep."""

    ranking = traitlets.List(traitlets.Unicode(), help="methods of the last comparison, best first")
    adopted = traitlets.Unicode("", help="method of the quantized model last adopted into the session")
    dropped_edits = traitlets.Int(0, help="int8/scale edits the last adoption dropped (confirmed by a 2nd click)")
    sensitivity_ranks = traitlets.Dict(help="node id -> sensitivity rank (1 = hurts most), from the last sweep")
    profile = traitlets.Unicode("", help="device profile of the session's quantized model ('' when none)")
    status = Message("", help="last message shown to the user (repeats notify too)")
    error_details = Message("", help="traceback of the last unexpected error (collapsed section)")

    def __init__(self, session, images: Sequence | None = None, methods: Sequence[str] = DEFAULT_METHODS,
                 workspace=None, background: bool = False, **kwargs) -> None:
        """background: Compare and the sensitivity sweep run in a thread, so Cancel can stop them (the
        Explorer turns it on; False runs them inside the click, as scripts and tests expect)."""
        self._session = session
        self.background = background
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._given = list(images) if images is not None else None
        self._given_key = f"{GIVEN}:{uuid.uuid4().hex}"      # another view's given images are other images
        self.workspace = workspace
        self.table: CompareTable | None = None
        self._image_counts: dict[str, int] = {}      # image-set key -> images seen by its calibration
        self._adopt_guard = SwitchGuard()
        names = CALIBRATORS.names()
        self.method_boxes = {m: widgets.Checkbox(value=m in methods, description=m, indent=False,
                                                 layout=widgets.Layout(width="110px")) for m in names}
        self._per_channel = widgets.Checkbox(value=True, description="per-channel weights", indent=False)
        # the integer rules the compared models follow: qwidgets_asym (uint8 zero points) is the best INT on
        # our validation variants, onnxruntime what ORT runs (docs/quantization.md, docs/profiles.md)
        self.profile_choice = widgets.Dropdown(options=PROFILES.names(), value=DEFAULT_PROFILE, description="Profile",
                                               layout=widgets.Layout(width="230px"))
        # refinements applied to every compared method after calibration (engine.quant.refine.pipeline):
        # gptq + eq + margin under qwidgets_asym is the best INT measured (docs/quantization.md, round 7)
        self.refine_boxes = {r: widgets.Checkbox(value=False, description=r, indent=False,
                                                 layout=widgets.Layout(width="90px")) for r in REFINE_AFTER}
        self._images = widgets.Dropdown(description="Images", layout=widgets.Layout(width="360px"))
        self._path = widgets.Text(placeholder="/path/to/calibration/images", layout=widgets.Layout(width="260px"))
        self.backend = BackendChoice()   # where Compare's FLOAT / INT / HYBRID runs execute
        self.compare_button = widgets.Button(description="Compare", icon="bar-chart", button_style="primary")
        self.adopt_button = widgets.Button(description="Adopt best", icon="check", disabled=True,
                                           layout=widgets.Layout(width="auto", min_width="200px"))
        self.cancel_button = widgets.Button(description="Cancel", icon="stop", disabled=True,
                                            layout=widgets.Layout(width="90px"))
        self.cancel_button.on_click(lambda _b: self._stop.set())
        self.sensitivity_table = widgets.HTML()
        self.sensitivity_chart = PngImage()
        self.sensitivity_button = widgets.Button(description="Sensitivity sweep", icon="sort-amount-desc",
                                                 layout=widgets.Layout(width="160px"))
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="",
                                            layout=widgets.Layout(width="300px"))
        # the 12 columns scroll right under the table: beside the graph (~640 px) the last four (found, extra,
        # mean SQNR, size) were cut off, reachable only by the whole view's scroll bar below the chart
        self._table = widgets.HTML(layout=widgets.Layout(overflow="auto"))
        self.chart = PngImage()
        self._status = widgets.Label()
        self._status.add_class("qw-status")
        self._details = ErrorDetails()
        self.header = widgets.HTML()
        super().__init__(children=[self.header,
            widgets.HBox(list(self.method_boxes.values()), layout=widgets.Layout(flex_flow="row wrap")),
            widgets.HBox([self._per_channel, self.profile_choice, self.backend, self._images, self._path],
                         layout=widgets.Layout(flex_flow="row wrap")),
            widgets.HBox([widgets.Label("Refine every method:")] + list(self.refine_boxes.values()),
                         layout=widgets.Layout(flex_flow="row wrap")),
            widgets.HBox([self.compare_button, self.progress, self.cancel_button, self.adopt_button,
                          self.sensitivity_button], layout=widgets.Layout(flex_flow="row wrap")),
            self._status, self._table, self.chart, self.sensitivity_table, self.sensitivity_chart,
            self._details], **kwargs)
        self.add_class("qw-quant-view")
        self.refresh_image_sets()
        self.refresh_header()
        traitlets.dlink((self, "status"), (self._status, "value"))
        traitlets.dlink((self, "error_details"), (self._details, "text"))
        self.compare_button.on_click(self._on_compare_click)
        self.adopt_button.on_click(self._on_adopt_click)
        self.sensitivity_button.on_click(self._on_sensitivity_click)

    def refresh_header(self) -> None:
        """The header names the session's quantized model and its device profile (the integer rules)."""
        q = self._session.qmodel
        self.profile = "" if q is None else q.profile
        self.header.value = ("<b>quantized model:</b> none (Compare, then Adopt)" if q is None else
                             f"<b>quantized model:</b> {html.escape(q.method)}, <b>device profile:</b> "
                             f"{html.escape(q.profile)}")

    def methods(self) -> list[str]:
        return [m for m, box in self.method_boxes.items() if box.value]

    def refinements(self) -> list[str]:
        """The ticked refinements, in the order they run."""
        return [r for r, box in self.refine_boxes.items() if box.value]

    # ------------------------------------------------------------------ image sets
    @shows_errors
    def refresh_image_sets(self) -> None:
        """Re-list the choices, with the image sets of the connected workspace (if any)."""
        options = ([(GIVEN, GIVEN)] if self._given is not None else []) + [
            (SAMPLES_AUGMENTED, SAMPLES_AUGMENTED), (SAMPLES, SAMPLES), (PATH, PATH)]
        if self.workspace is not None:
            options += [(f"workspace: {e.name} ({counted(len(e.files), 'image')})", WORKSPACE + e.name)
                        for e in self.workspace.list("imageset")]
        keep = self._images.value if self._images.value in [v for _, v in options] else options[0][1]
        self._images.options = options
        self._images.value = keep

    def _image_set(self) -> tuple[str | None, str, list]:
        """(cache key or None, label, images). The key names the set's content, so the session's cached
        calibration statistics are reused only for the same images."""
        choice = self._images.value
        if choice == GIVEN:
            return self._given_key, choice, list(self._given)
        if choice == SAMPLES:
            return choice, choice, list(sample_images())
        if choice == PATH:
            path = self._path.value.strip()
            if not path:
                raise ValueError("type a folder (or file) of calibration images")
            # every image's stamp: a folder's mtime misses an image rewritten in place, a file's its same-tick rewrite
            key = f"path:{path}:{image_set_stamp(image_list(path))}" if os.path.exists(path) else None
            return key, path, [path]
        if choice.startswith(WORKSPACE):
            if self.workspace is None:
                raise ValueError("no workspace connected")
            entry = self.workspace.info(choice[len(WORKSPACE):])
            folder = self.workspace.path_of(entry.name)
            images = [folder / f for f in entry.files] if folder.is_dir() else [folder]
            return f"workspace:{entry.name}:{entry.sha256}", f"workspace set {entry.name!r}", images
        return choice, choice, augmented_samples()

    # ------------------------------------------------------------------ compare, adopt
    @shows_errors
    def _on_compare_click(self, _button) -> None:
        methods = self.methods()
        if not methods:
            raise ValueError("tick at least one calibration method")
        key, label, images = self._image_set()
        from engine.scale.compare import run_units      # here: the tab imports no comparison code until used
        n, t0 = len(methods), time.perf_counter()
        runs_t0: list = []                      # (time, units done) when the first quantized run started
        images_known = self._image_counts.get(key, 0)
        calibrated = [images_known]             # the calibration images, counted done once the runs start
        # the bar: the calibration images, then the runs unit by unit (per image FLOAT, then each method in
        # HYBRID and INT: run_units, the engine's count), so it moves all through the ~minute of runs
        self.progress.max, self.progress.value = max(1, images_known + run_units(images_known, n)), 0
        self.status = f"calibrating on {label} ..."

        def left(done: int, total: int) -> str:
            return f", ~{(time.perf_counter() - t0) / done * (total - done):.0f} s left" if done else ""

        def on_progress(phase: str, done: int, total: int) -> None:
            if self._stop.is_set():
                raise Cancelled()
            if phase == "calibrate":
                if key is not None:
                    self._image_counts[key] = total
                calibrated[0] = total
                self.progress.max, self.progress.value = total + run_units(total, n), done
                self.status = (f"calibrating on {label}: image {done}/{total}"
                               f"{left(self.progress.value, self.progress.max)} ...")
            elif phase == "quantize":     # per method quantized, then refined (seconds each): the bar waits
                self.status = (f"{'quantizing and refining' if refine else 'quantizing'} {counted(n, 'method')}: "
                               f"step {done + 1}/{total} ..." if done < total
                               else f"comparing {counted(n, 'method')} on {label} ...")

        def on_run(done: int, total: int, what: str) -> None:      # the engine's units, named by it
            if self._stop.is_set():
                raise Cancelled()
            images = calibrated[0]          # statistics cached: their part of the bar counts as done
            self.progress.max, self.progress.value = images + total, images + done
            # the estimate counts from the first quantized run: FLOAT references kept from the calibration are
            # units done in no time, and counting them said "~1 s left" through a minute of HYBRID/INT runs
            if not runs_t0 and not what.startswith("FLOAT"):
                runs_t0[:] = [time.perf_counter(), done]
            if what != "done":
                ahead = ""
                if runs_t0 and done > runs_t0[1]:
                    rate = (time.perf_counter() - runs_t0[0]) / (done - runs_t0[1])
                    ahead = f", ~{rate * (total - done):.0f} s left"
                self.status = f"comparing {counted(n, 'method')} on {label}: {what}{ahead} ..."

        refine = self.refinements()

        def work():
            return self._session.compare_methods(images, methods, per_channel=self._per_channel.value, key=key,
                                                 on_progress=on_progress, profile=self.profile_choice.value,
                                                 backend=self.backend.value, refine=refine, progress=False,
                                                 on_run=on_run, cancel=self._stop)

        def done(table) -> None:
            self.show_table(table)
            self.status = (f"compared {counted(n, 'method')} on {counted(len(table.images), 'image')} in "
                           f"{time.perf_counter() - t0:.1f} s: best {table.best.method}")
        self._run(work, done, "compare")

    def _run(self, work, done, what: str) -> None:
        """work() then done(result), in a thread when `background` (Cancel stops it between units)."""
        self._stop.clear()
        self.cancel_button.disabled = False
        self.compare_button.disabled = self.sensitivity_button.disabled = True

        loop = main_loop() if self.background else None

        def finish(result, err) -> None:
            with holding(self._session):
                self.cancel_button.disabled = True
                self.compare_button.disabled = self.sensitivity_button.disabled = False
                if isinstance(err, Cancelled):
                    self.status = f"{what} cancelled"
                elif err is not None:
                    report(self, err, f"QuantizationView.{what}")
                else:
                    try:
                        done(result)
                    except Exception as e:      # noqa: BLE001 - the widget boundary
                        report(self, e, f"QuantizationView.{what}")

        def body() -> None:
            # not `holding` the session here: that would hold its events for the whole run, and the
            # Explorer would stop following Steps and cells until the work is done (the work itself
            # moves no session state)
            result, error = None, None
            try:
                result = work()
            except Exception as err:        # noqa: BLE001 - handed to finish (the widget boundary)
                error = err
            finish_on(loop, finish, result, error)
        if self.background:
            self._thread = threading.Thread(target=body, daemon=True, name=f"qwidgets-{what}")
            self._thread.start()
        else:
            body()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the running Compare or sweep finished (a script without an event loop; in a kernel
        the result is shown once the cell returns)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def show_table(self, table: CompareTable) -> None:
        """Display a CompareTable (also usable with a table computed elsewhere)."""
        self.table = table
        self._adopt_guard.disarm()
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
        try:
            dropped = self._adopt_guard.switch(self._session, best.qmodel, id(best.qmodel))
        except Refused as ask:
            self.adopt_button.description = ask.label
            self.status = f"confirm: {ask.message}"
            return
        self.adopt_button.description = f"Adopt {best.method}"
        if self._session.mode == "float":
            self._session.set_mode("int")
        self.dropped_edits = dropped
        self.adopted = ""          # a second adoption of the same method still notifies
        self.adopted = best.method
        self.refresh_header()
        self.status = (f"adopted {best.method} ({'per-channel' if best.per_channel else 'per-tensor'}); "
                       f"profile {best.qmodel.profile}; mode {self._session.mode.upper()}{dropped_text(dropped)}")

    def model_changed(self) -> None:
        """After the session opened another model: the comparison, its Adopt and the sensitivity ranks were
        the old model's. (Cached calibration statistics are the session's, keyed by its model version.)"""
        self.table = None
        self._adopt_guard.disarm()
        with self.hold_sync():
            self._table.value = ""
            self.chart.value = b""
            self.progress.value = 0
            self.adopt_button.disabled, self.adopt_button.description = True, "Adopt best"
            self.ranking, self.adopted, self.dropped_edits = [], "", 0
            self.sensitivity_ranks = {}
            self.sensitivity_table.value, self.sensitivity_chart.value = "", b""
        self.refresh_header()

    # ------------------------------------------------------------------ sensitivity
    @shows_errors
    def _on_sensitivity_click(self, _button) -> None:
        s = self._session
        self.progress.value, self.progress.max = 0, max(1, s.num_layers)
        self.status = "sensitivity sweep ..."
        t0 = time.perf_counter()

        def tick() -> bool:             # called once per swept layer: advance the bar; True stops the sweep
            self.progress.value = min(self.progress.max, self.progress.value + 1)
            done = self.progress.value
            self.status = (f"sensitivity sweep: layer {done}/{self.progress.max}, "
                           f"~{(time.perf_counter() - t0) / done * (self.progress.max - done):.0f} s left")
            return self._stop.is_set()

        def done(table) -> None:
            if self._stop.is_set():
                self.status = "sensitivity sweep cancelled"
                return
            self.progress.value = self.progress.max
            self.sensitivity_ranks = table.ranks()
            self.show_sensitivity(table)
            worst = ", ".join(f"{r.index} [{r.kind}]" for r in table.rows[:3])
            self.status = f"sensitivity: {counted(len(table.rows), 'layer')} ranked; hurt most when quantized: {worst}"
        self._run(lambda: s.sensitivity(progress=False, cancel=tick), done, "sensitivity")

    def show_sensitivity(self, table) -> None:
        """The sweep as a table (every layer, rank order) and a bar chart of the 10 that hurt most."""
        rows = "".join(f"<tr><td>{r.rank}</td><td>{r.index}</td><td>{html.escape(r.kind)}</td>"
                       f"<td>{r.only_quantized_map50:.3f}</td><td>{r.only_quantized_sqnr:.1f}</td>"
                       f"<td>{r.only_float_map50:.3f}</td></tr>" for r in table.rows)
        self.sensitivity_table.value = (
            "<div style='max-height:260px;overflow-y:auto'><table class='qw-table qw-sensitivity'><tr><th>rank "
            "(1 = hurts most)</th><th>layer</th><th>kind</th><th>mAP@0.5 vs FLOAT, only this layer INT8</th>"
            "<th>head SQNR dB, same run</th><th>mAP@0.5, all but this layer INT8</th></tr>"
            f"{rows}</table></div>")
        top = table.rows[:10]
        self.sensitivity_chart.value = bar_chart_png(
            [f"{r.index} {r.kind[:5]}" for r in top], [1.0 - r.only_quantized_map50 for r in top],
            "sensitivity: the 10 layers that hurt most when quantized alone",
            "mAP@0.5 lost vs FLOAT (1 - agreement; higher = more sensitive)", lo=0.0, hi=1.0)
