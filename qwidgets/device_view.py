"""DeviceView: our INT simulation vs FLOAT and vs the profile's runtime, layer by layer.

"Compare with device" runs `engine.quant.device.sim_vs_device` on the session's model, quantized model,
input and FLOAT layers in a `LongTask`: the bar advances per engine step (the FLOAT run, the INT run, the
runtime's run, then one per layer's row) and the text names it ("layer 7 of 24: conv 6"); Cancel stops it
before the next step, or inside the FLOAT and INT runs before the next layer, leaving the last table and the
graph's colours as they were.
The table shows the engine's columns: FLOAT vs our INT (the layer alone: `local_*`; the whole run up to
it: `propagated_*`, SQNR in dB, cosine similarity and max |difference|) and our INT vs the runtime
(mismatched elements, largest difference in output steps, the runtime's SQNR vs FLOAT), or the engine's
note when the device columns were not measured (a profile without a runtime, onnxruntime missing, layers
kept FLOAT). Graph overlays come from the same rows: `device_mismatched`, `propagated_sqnr` (dB, the
scale of the graph's `sqnr` colouring) and `propagated_cos`.
"""
from __future__ import annotations

import html

import ipywidgets as widgets
import traitlets

from engine.quant.device import DeviceTable, sim_vs_device
from engine.quant.profiles import PROFILES, get_profile
from qwidgets._errors import Message, shows_errors
from qwidgets._long_task import LongTask, result_dropped
from qwidgets.layer_panel import TABLE_CSS

OVERLAYS = ("device_mismatched", "propagated_sqnr", "propagated_cos")   # graph colourings (graph_view.OVERLAY_META)
COLS = ("layer", "kind", "precision", "local_sqnr", "local_cos", "local_max", "propagated_sqnr", "propagated_cos",
        "propagated_max", "device_mismatched", "device_steps", "device_sqnr")


def _cell(v, column: str = "") -> str:
    if v is None:
        return "-"
    if column.endswith("_sqnr"):
        return f"{v:.1f} dB"
    return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))


def runtime_hint(profile: str) -> str:
    """How to get device columns when `profile` has no runtime ("" when it has one): the default profile
    has none, and nothing said which profiles do or where to choose one."""
    if profile not in PROFILES.names() or get_profile(profile).exportable is not None:
        return ""
    names = ", ".join(n for n in PROFILES.names() if get_profile(n).exportable is not None)
    return f"to measure one, pick a Profile with a runtime ({names}) in the Quantization tab, Compare, then Adopt"


def device_html(table: DeviceTable) -> str:
    """Every layer's row of the engine's table; the header says whether the runtime was measured."""
    rows = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c), c)}</td>" for c in COLS) + "</tr>" for r in table.rows)
    hint = runtime_hint(table.profile)
    device = (f"runtime <b>{html.escape(table.runtime)}</b>" if table.runtime else
              f"<b>device columns not measured:</b> {html.escape(table.note, quote=False)}"
              + (f"; {html.escape(hint, quote=False)}" if hint else ""))
    return (f"{TABLE_CSS}<div>profile <b>{html.escape(table.profile)}</b>; {device}</div>"
            "<div style='max-height:320px;overflow-y:auto'><table class='qw-table qw-device'><tr><th>layer</th>"
            "<th>kind</th><th>precision</th><th>FLOAT vs INT, layer alone: SQNR (dB, higher is better)</th>"
            "<th>cosine</th><th>max |diff|</th><th>FLOAT vs INT, propagated: SQNR (dB)</th><th>cosine</th>"
            "<th>max |diff|</th><th>INT vs runtime: mismatched elements</th><th>max diff (output steps)</th>"
            "<th>runtime vs FLOAT: SQNR (dB)</th></tr>"
            f"{rows}</table></div>")


class DeviceView(widgets.VBox):
    """Compare with device (LongTask), the per-layer table, overlay values for the graph."""

    overlays = traitlets.Dict(help="overlay name -> {node id: value} from the last table (graph colours)")
    status = Message("", help="last message shown to the user")
    error_details = Message("", help="traceback of the last unexpected error")

    def __init__(self, session, background: bool = True, **kwargs) -> None:
        self._session = session
        self.result: DeviceTable | None = None
        self.run_button = widgets.Button(description="Compare with device", icon="microchip",
                                         button_style="primary", layout=widgets.Layout(width="200px"))
        self.task = LongTask(background=background)
        self.table = widgets.HTML("<small>Runs the session's input through FLOAT, our INT simulation and the "
                                  "quantized model's device runtime (ONNX Runtime, every layer exposed).</small>")
        row = widgets.HBox([self.run_button, self.task], layout=widgets.Layout(flex_flow="row wrap"))
        super().__init__(children=[row, self.table], **kwargs)
        self.add_class("qw-device-view")
        self.run_button.on_click(self._on_run_click)

    @shows_errors
    def _on_run_click(self, _button) -> None:
        s = self._session
        if s.qmodel is None:
            raise ValueError("no quantized model: Compare and Adopt one in the Quantization tab first")
        args = (s.model, s.qmodel, s.x)
        float_layers = sorted(s.executor.float_layers)
        self.run_button.disabled = True

        def work(tick):
            return sim_vs_device(*args, float_layers=float_layers, on_progress=tick, cancel=self.task.cancel_requested)
        self.task.start(work, lambda table: self._done(table, args[:2]), what="simulation vs device")

    def wait(self, timeout: float | None = None) -> None:
        self.task.wait(timeout)

    def _done(self, table, models: tuple | None = None) -> None:
        self.run_button.disabled = False
        failure = self.task.failure(table, "device comparison", self)
        if failure is not None:
            self.status = failure
            return
        dropped = result_dropped(self._session, models, "device comparison", "Compare again")
        if dropped is not None:
            self.status = dropped
            return
        self.show(table)
        if table.runtime:
            bad = [r["layer"] for r in table.rows if r.get("device_mismatched")]
            self.status = (f"device ({table.runtime}, profile {table.profile}): "
                           + (f"layers {bad} differ from our INT" if bad else "bit-exact with our INT"))
        else:
            hint = runtime_hint(table.profile)
            self.status = f"profile {table.profile}: device not measured ({table.note})" + (f"; {hint}" if hint else "")

    def show(self, table: DeviceTable) -> None:
        self.result = table
        self.table.value = device_html(table)
        self.overlays = {name: {str(r["layer"]): r[name] for r in table.rows if r.get(name) is not None}
                         for name in OVERLAYS}

    def model_changed(self) -> None:
        self.result, self.table.value, self.overlays = None, "", {}
