"""Explorer(session): the graph, layer panel, controls, weight editor, detections and quantization views
composed over one Session. Everything runs in the kernel; the views only talk to the Session API.

State flow (traitlets):
    controls.position --(id)--> graph.current_node --> graph.selected_node (the panel follows a step)
    graph.selected_node --> controls.selected_node (Run to selected), weight_editor.layer, panel
    controls.revision / weight_editor.revision / quant_view.adopted --> full refresh (new run state)
    controls.cross_result --> the panel shows FLOAT vs INT of the CROSS run
    graph.overlay (+ session fitness per executed layer, quant_view.sensitivity_ranks) --> overlay_values
    every view's status --> the one status line (controls)
"""
from __future__ import annotations

from typing import Any, Sequence

import ipywidgets as widgets
import numpy as np
import traitlets

from engine.graph import INPUT
from qwidgets._errors import shows_errors
from qwidgets._panel_data import layer_panel_data
from qwidgets.controls import ExplorerControls
from qwidgets.detections_view import DetectionsView
from qwidgets.graph_view import GraphView
from qwidgets.layer_panel import LayerPanel
from qwidgets.quant_view import QuantizationView
from qwidgets.weight_editor import WeightEditor

FITNESS_OVERLAYS = {"sqnr": "sqnr_db", "saturation": "saturation", "range_use": "range_use"}
TABS = ("Layer", "Weights", "Detections", "Quantization")


class _Outputs(Sequence):
    """A lazy list of a session's executed outputs (float views), with optional overrides by index."""

    def __init__(self, session, override: dict[int, np.ndarray] | None = None) -> None:
        self._s, self._override = session, override or {}

    def __getitem__(self, i):
        return self._override[i] if i in self._override else self._s.output(i)

    def __len__(self) -> int:
        return self._s.position + 1


class Explorer(widgets.VBox):
    """Step / inspect / CROSS / edit / compare one Session in the notebook.

        s = Session(model, quantized=qm, mode="int")
        Explorer(s)          # then click Step, select layers, CROSS, edit weights, compare methods
    """

    status = traitlets.Unicode("", help="the status line (engine errors appear here)")
    follow = traitlets.Bool(False, help="clicking a node also runs the session to that layer")

    def __init__(self, session, workspace=None, calibration_images: Sequence | None = None,
                 graph_height: str = "620px", **kwargs) -> None:
        self.session = session
        self.ids = [INPUT] + [n.id for n in session.model.graph.nodes]
        self._fitness: dict[int, Any] = {}
        self._dets_key: tuple | None = None
        self._thresholds: dict[str, dict] = {}
        self._thresholds_of = session.qmodel
        self._busy = False
        self.controls = ExplorerControls(session, workspace=workspace)
        self.graph = GraphView(session.model.graph, height=graph_height, layout=widgets.Layout(width="340px"))
        self.panel = LayerPanel()
        self.weight_editor = WeightEditor(session)
        self.detections = DetectionsView()
        self.quant_view = QuantizationView(session, images=calibration_images)
        self._follow = widgets.Checkbox(description="run to clicked layer", indent=False)
        self.tabs = widgets.Tab(children=[self.panel, self.weight_editor, self.detections, self.quant_view],
                                titles=TABS, layout=widgets.Layout(flex="1 1 auto", min_width="480px"))
        left = widgets.VBox([self._follow, self.graph], layout=widgets.Layout(flex="0 0 350px", width="350px"))
        super().__init__(children=[self.controls, widgets.HBox([left, self.tabs])], **kwargs)
        self.add_class("qw-explorer")
        traitlets.link((self, "follow"), (self._follow, "value"))
        traitlets.link((self, "status"), (self.controls, "status"))
        for view in (self.weight_editor, self.quant_view):
            traitlets.dlink((view, "status"), (self.controls, "status"))
        traitlets.dlink((self.graph, "selected_node"), (self.controls, "selected_node"))
        traitlets.dlink((self.controls, "position"), (self.graph, "current_node"), transform=self._node_of)
        self.controls.observe(self._on_position_change, names="position")
        self.controls.observe(self._on_revision_change, names="revision")
        self.controls.observe(self._on_cross_result_change, names="cross_result")
        self.controls.observe(self._on_continue_result_change, names="continue_result")
        self.graph.observe(self._on_selected_node_change, names="selected_node")
        self.graph.observe(self._on_overlay_change, names=["overlay"])
        self.graph.on_node_click(self._on_node_click)
        self.panel.observe(self._on_hist_options_change, names=["hist_log2", "hist_log_y"])
        self.weight_editor.observe(self._on_edit_revision_change, names="revision")
        self.quant_view.observe(self._on_adopted_change, names="adopted")
        self.quant_view.observe(self._on_overlay_change, names="sensitivity_ranks")
        self.refresh()
        self.status = (f"{session.model.graph.name}: {session.num_layers} layers, mode {session.mode}; "
                       "Step runs the next layer")

    def connect_workspace(self, view) -> None:
        """Open a `WorkspaceView`'s quantized models and images here (its Open button)."""
        self.controls.workspace = view.workspace
        self.controls.refresh_quantized()
        view.on_open(self.controls.open_entry)

    # ------------------------------------------------------------------ helpers
    def _node_of(self, position: int) -> str:
        return self.ids[position + 1]

    @property
    def position(self) -> int:
        return self.controls.position

    def _index(self, node_id: str) -> int:
        return -1 if node_id in ("", INPUT) else int(node_id)

    # ------------------------------------------------------------------ reactions
    def _on_position_change(self, change) -> None:
        if self._busy:
            return
        self._fitness = {k: v for k, v in self._fitness.items() if k <= change.new}
        self.update_views()

    def _on_revision_change(self, _change) -> None:
        self.refresh()

    def _on_edit_revision_change(self, _change) -> None:
        self.refresh()

    def _on_adopted_change(self, change) -> None:
        if change.new:
            self.controls.restarted(f"adopted {change.new}: INT mode, restarted from the input")

    def _on_node_click(self, node_id: str) -> None:
        if self.follow and node_id != INPUT:
            self.controls.run_to_button.click()

    def _on_selected_node_change(self, change) -> None:
        self.weight_editor.layer = self._index(change.new)
        self.show_node(change.new)

    def _on_hist_options_change(self, _change) -> None:
        self.show_node(self.graph.selected_node)

    def _on_cross_result_change(self, change) -> None:
        if change.new is not None:
            node = self._node_of(change.new.index)
            if self.graph.selected_node != node:
                self.graph.selected_node = node      # shows the panel, with the CROSS images
            else:
                self.show_node(node)

    def _on_continue_result_change(self, change) -> None:
        if change.new is not None:
            self.update_detections(force=True)
            self.tabs.selected_index = TABS.index("Detections")

    def _on_overlay_change(self, _change) -> None:
        self.update_overlay()

    # ------------------------------------------------------------------ updates
    def refresh(self) -> None:
        """Everything from the session state (after reset, a new image / mode / model, or an edit)."""
        self._busy = True
        try:
            self.controls.sync()
        finally:
            self._busy = False
        self._fitness = {}
        self._dets_key = None
        self.update_views()

    def thresholds(self, node_id: str) -> dict[str, float] | None:
        """The calibration threshold of every method for a tensor (cached: a pure function of the
        quantized model's histograms, which only change with a new quantized model)."""
        if self.session.qmodel is not self._thresholds_of:
            self._thresholds, self._thresholds_of = {}, self.session.qmodel
        if node_id not in self._thresholds:
            self._thresholds[node_id] = self.session.thresholds(node_id)
        return self._thresholds[node_id] or None

    def update_views(self) -> None:
        """After the session moved: highlight, selection (the panel follows), overlay, detections."""
        node = self._node_of(self.session.position)
        with self.graph.hold_sync():
            self.graph.current_node = node
            if self.graph.selected_node != node:
                self.graph.selected_node = node        # -> weight editor layer + panel
            else:
                self.weight_editor.refresh()
                self.show_node(node)
        self.update_overlay()
        self.update_detections()

    @shows_errors
    def show_node(self, node_id: str) -> None:
        """Fill the layer panel for `node_id` from the session (FLOAT reference + this mode's outputs)."""
        s = self.session
        if not node_id:
            self.panel.clear()
            return
        ref = s.float_reference()
        i = self._index(node_id)
        kw: dict[str, Any] = {"log2": self.panel.hist_log2, "log_y": self.panel.hist_log_y}
        extra_rows: list[dict] = []
        if i >= 0:
            info = s.layer_info(i)
            kw["scales"] = {k: info[k] for k in ("in_scale", "out_scale", "weight_scale") if info.get(k) is not None}
            kw["thresholds"] = self.thresholds(node_id)
            cross = self.controls.cross_result
            if cross is not None and cross.index == i:
                y_float, y_int = cross.float_and_int
                ref = _Override(ref, i, y_float)
                kw["int_outs"] = _Override(ref, i, y_int)
            elif s.mode != "float" and i <= s.position:
                kw["int_outs"] = _Outputs(s)
            if info.get("record"):
                extra_rows.append({"tensor": f"record ({info['precision']})", **info["record"]})
        else:
            kw["thresholds"] = self.thresholds(INPUT)
        data, images, rows = layer_panel_data(s.model, ref, node_id, s.x, **kw)
        if i >= 0:
            data["precision"] = s.precision(i) + (" (ran)" if i <= s.position else " (not run yet)")
            if self.controls.cross_result is not None and self.controls.cross_result.index == i:
                data["CROSS"] = f"{self.controls.cross_result.precision} vs {self.controls.cross_result.other}"
        self.panel.show(data, images, rows + extra_rows)

    @shows_errors
    def update_overlay(self) -> None:
        """Overlay values for the graph: session fitness per executed layer, or sensitivity ranks."""
        overlay = self.graph.overlay
        if overlay == "sensitivity_rank":
            self.graph.overlay_values = dict(self.quant_view.sensitivity_ranks)
            return
        if overlay not in FITNESS_OVERLAYS:
            return
        s = self.session
        if s.mode == "float":
            self.graph.overlay_values = {}
            return
        for i in range(s.position + 1):
            if i not in self._fitness:
                self._fitness[i] = s.fitness(i, local=False)["propagated"]
        attr = FITNESS_OVERLAYS[overlay]
        self.graph.overlay_values = {str(i): float(getattr(f, attr)) for i, f in self._fitness.items()
                                     if f is not None}

    @shows_errors
    def update_detections(self, force: bool = False) -> None:
        """FLOAT vs this mode's detections (when the run is complete, or from Continue)."""
        s = self.session
        cont = self.controls.continue_result
        key = (self.controls.revision, self.weight_editor.revision, s.done, id(cont))
        if key == self._dets_key and not force:
            return
        self._dets_key = key
        if cont is not None:
            src = "CROSS result" if cont.source == "other" else "layer output"
            label = f"{s.mode.upper()}, continued from layer {cont.index} ({src})"
            self.detections.show(s.pre, s.float_detections(), cont.detections, label, getattr(s, "image", None))
        else:
            self.detections.show(s.pre, s.float_detections(), s.detections() if s.done else None, s.mode.upper(),
                                 getattr(s, "image", None))


class _Override(Sequence):
    """`base` with element `index` replaced by `value` (for CROSS images in the panel)."""

    def __init__(self, base: Sequence, index: int, value: np.ndarray) -> None:
        self._base, self._index, self._value = base, index, value

    def __getitem__(self, i):
        return self._value if i == self._index else self._base[i]

    def __len__(self) -> int:
        return len(self._base)
