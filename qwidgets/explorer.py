"""Explorer(session): the graph, the controls and the tabs of `TABS` (layer panel, weights, detections, explain,
worst images, quantization, mixed precision, device) composed over one Session. Everything runs in the kernel;
the views only talk to the Session API.

The views follow the *session*, not the buttons: the Explorer registers the session's step / edit /
reset callbacks (`qwidgets._sync.SessionFollower`) and `on_session_events` is the one place that
updates the controls, the graph highlight and selection, the panel, the overlay and the detections (the
weight editor follows the session with a follower of its own: its journal and weights, from code too).
A Step click and `session.step()` in a cell therefore look the same; a click's events are delivered
once, after its handler (a Run click redraws once, not 24 times).

The views are built for one model. When the session opens another (`Session.set_model`: the controls'
Open model, a workspace model entry, or a cell), the reset event finds `session.model` replaced and
`on_model_change` is the one place that rebuilds what depends on it: node ids, the graph elements
(never rebuilt otherwise), the panel caches, the weight editor, the quantization view and the controls'
pending confirmations. Then the usual update selects the new input.

State flow (traitlets):
    graph.selected_node --> controls.selected_node (Run to selected), weight_editor.layer, panel
    weight_editor.layer --> graph.selected_node (Undo shows the layer it restored)
    controls.cross_result --> the panel shows FLOAT vs INT of the CROSS run
    graph.overlay (+ session fitness per executed layer, quant_view.sensitivity_ranks) --> overlay_values
    every view's status / error_details --> the one status line (controls); repeats show again
"""
from __future__ import annotations

from typing import Any, Sequence

import ipywidgets as widgets
import traitlets

from engine.graph import INPUT
from engine.quant.heads import head_errors
from qwidgets._confirm import dropped_text
from qwidgets._errors import Message, shows_errors
from qwidgets._focus import CSS as FOCUS_KEEPER_CSS
from qwidgets._open_model import opened_text
from qwidgets._session_panel import SessionPanelData
from qwidgets._sync import SessionFollower, idle_for, running_loop
from qwidgets.controls import ExplorerControls, stale_note
from qwidgets.detections_view import DetectionsView
from qwidgets.device_view import OVERLAYS as DEVICE_OVERLAYS, DeviceView
from qwidgets.explain_view import ExplainView
from qwidgets.mixed_view import MixedPrecisionView
from qwidgets.images_view import WorstImagesView
from qwidgets.graph_view import GraphView
from qwidgets.layer_panel import LayerPanel
from qwidgets.quant_view import QuantizationView
from qwidgets.weight_editor import WeightEditor

# overlay -> (ErrorStats field, factor to the unit the legend names)
FITNESS_OVERLAYS = {"sqnr": ("sqnr_db", 1.0), "saturation": ("saturation", 100.0), "range_use": ("range_use", 100.0)}
WARM_IDLE = 3.0      # seconds without a click before background warm-up goes on (`_warm_thresholds`)
TABS = ("Layer", "Weights", "Detections", "Explain", "Images", "Quantization", "Mixed precision", "Device")


class Explorer(widgets.VBox):
    """Step / inspect / CROSS / edit / compare one Session in the notebook.

        s = Session(model, quantized=qm, mode="int")
        Explorer(s)          # then click Step (or call s.step()), select layers, CROSS, edit, compare
    """

    status = Message("", help="the status line (engine errors appear here)")
    error_details = Message("", help="traceback of the last unexpected error (collapsed section)")
    follow = traitlets.Bool(False, help="clicking a node also runs the session to that layer")

    def __init__(self, session, workspace=None, calibration_images: Sequence | None = None,
                 graph_height: str | None = None, graph_width: int = 500, background: bool = True,
                 **kwargs) -> None:
        """background: long work (Explain) runs in a thread with a Cancel button; False runs it inline."""
        self.session = session
        self._model = session.model           # the model the views are built for (see on_model_change)
        self.ids = [INPUT] + [n.id for n in session.model.graph.nodes]
        self._fitness: dict[int, Any] = {}
        self._dets_key: tuple | None = None
        self._panel_data = SessionPanelData(session)
        self._panel_stale = False            # a layer was selected while the Layer tab was hidden
        self.controls = ExplorerControls(session, workspace=workspace)
        self.graph = GraphView(session.model.graph, height=graph_height, width_px=graph_width,
                               layout=widgets.Layout(width=f"{graph_width}px"))
        self.panel = LayerPanel()
        self.weight_editor = WeightEditor(session, workspace=workspace)
        self.detections = DetectionsView()
        self.quant_view = QuantizationView(session, images=calibration_images, workspace=workspace,
                                           background=background)
        self.explain_view = ExplainView(session, background=background)
        self.images_view = WorstImagesView(session, images=calibration_images, background=background)
        self.mixed_view = MixedPrecisionView(session, images=calibration_images, background=background)
        self.device_view = DeviceView(session, background=background)
        self._follow = widgets.Checkbox(description="run to clicked layer", indent=False)
        self.graph.overlay_options = [*self.graph.overlay_options, "recovery", *DEVICE_OVERLAYS]
        self.tabs = widgets.Tab(children=[self.panel, self.weight_editor, self.detections, self.explain_view,
                                          self.images_view, self.quant_view, self.mixed_view, self.device_view],
                                titles=TABS, layout=widgets.Layout(flex="1 1 480px", min_width="480px"))
        left = widgets.VBox([self._follow, self.graph], layout=widgets.Layout(flex=f"0 0 {graph_width + 10}px",
                                                                               width=f"{graph_width + 10}px"))
        # labels wrap instead of running off the page (long status and confirmation lines); the status keeps
        # two lines' height, so a one- or two-line message does not move the graph canvas below it
        # (cytoscape maps clicks with the canvas position it measured earlier: `GraphView._legend`)
        # the tab titles keep their whole text and wrap to a second row (lumino shrank each to ~60 px: "Detecti",
        # "Quantizati", "De" below 1600 px); the tabs go below the graph when the two do not fit side by side
        # (JupyterLab at 1280-1400 px with its file browser open cut the tabs' right half off); their flex basis
        # is their minimum, not their content's width, so they wrap only when under 480 px remain
        css = widgets.HTML("<style>.qw-explorer .qw-status{white-space:normal !important;height:auto !important;"
                           "line-height:1.35;min-height:2.7em}.qw-explorer .widget-button{overflow:visible}"
                           ".qw-explorer .widget-tab > .lm-TabBar .lm-TabBar-content{flex-wrap:wrap}"
                           ".qw-explorer .widget-tab > .lm-TabBar .lm-TabBar-tab{flex:0 0 auto}"
                           # the hover line is rewritten on every mouseover: strict containment keeps that
                           # change from dirtying the page's layout before cytoscape's mousedown reads it
                           f".qw-hover{{contain:strict}}{FOCUS_KEEPER_CSS}</style>")
        body = widgets.HBox([left, self.tabs], layout=widgets.Layout(flex_flow="row wrap"))
        super().__init__(children=[css, self.controls, body], **kwargs)
        self.add_class("qw-explorer")
        traitlets.link((self, "follow"), (self._follow, "value"))
        traitlets.link((self, "status"), (self.controls, "status"))
        traitlets.dlink((self, "error_details"), (self.controls, "error_details"))
        for view in (self.weight_editor, self.quant_view, self.explain_view, self.images_view, self.mixed_view,
                     self.device_view):
            traitlets.dlink((view, "error_details"), (self.controls, "error_details"))
        for view in (self.graph, self.weight_editor, self.quant_view, self.explain_view, self.images_view,
                     self.mixed_view, self.device_view):      # the graph's: Find's "no such layer, type 0..23"
            traitlets.dlink((view, "status"), (self.controls, "status"))
        traitlets.dlink((self.graph, "selected_node"), (self.controls, "selected_node"))
        self.controls.observe(self._on_cross_result_change, names="cross_result")
        self.controls.observe(self._on_continue_result_change, names="continue_result")
        self.graph.observe(self._on_selected_node_change, names="selected_node")
        self.graph.observe(self._on_overlay_change, names=["overlay"])
        self.graph.on_node_click(self._on_node_click)
        self.tabs.observe(self._on_tab_change, names="selected_index")
        self.weight_editor.active = self.tabs.selected_index == TABS.index("Weights")
        self.panel.observe(self._on_hist_options_change, names=["hist_log2", "hist_log_y"])
        self.weight_editor.observe(self._on_editor_layer_change, names="layer")
        self.quant_view.observe(self._on_adopted_change, names="adopted")
        self.quant_view.observe(self._on_ranking_change, names="ranking")
        self.quant_view.observe(self._on_overlay_change, names="sensitivity_ranks")
        self.explain_view.observe(self._on_recoveries_change, names="recoveries")
        traitlets.dlink((self.explain_view, "recoveries_gone"), (self.graph, "overlay_hints"),
                        transform=lambda why: {"recovery": why} if why else {})
        # after the editor's own handler (registered first): a model saved into the workspace is listed in
        # the Quantized picker and the connected workspace views at once (they showed it after a Compare)
        self._workspace_views: list = []
        for button in (self.weight_editor.save_model_button, self.weight_editor.save_quantized_button):
            button.on_click(self._after_save)
        self.device_view.observe(self._on_overlay_change, names="overlays")
        # edits since the last update, so the panel forgets only those layers (registered before the
        # follower: without an event loop it delivers at once, and the edit must be listed by then)
        self._edits: list = []
        self._edit_cb = session.on_edit(self._edits.append)
        self._follower = SessionFollower(session, self.on_session_events)
        # Rerun (and Continue, which re-executes stale outputs first) change kept outputs without a
        # session event: the same update, batched with the handler's own events
        self.weight_editor.observe(lambda _c: self._follower.note("rerun"), names="revision")
        self._closed, self._background, self._warm_generation = False, background, 0
        self.refresh()
        self.status = (f"{session.model.graph.name}: {session.num_layers} layers, mode {session.mode}; "
                       "Step runs the next layer")
        if background:
            self._warm_thresholds()

    def _warm_thresholds(self) -> None:
        """Work a click would otherwise wait for, done one piece per turn of the kernel's event loop while
        the user looks at the graph: every calibration method's threshold per tensor (a property of the
        quantized model, tens of ms each), then the FLOAT reference forward, then per layer, in execution
        order, its FLOAT output picture, statistics and histogram and its weights part
        (`SessionPanelData.warm`). A Step or a click finds them cached (a miss computes in place; the
        panel is the same either way). Not in a thread: engine code shares its kernel thread pool. A piece
        waits while a widget handler ran in the last WARM_IDLE seconds, so clicks in a row never queue
        behind it. Another model starts it again; after an edit it goes on where it was (what it already
        did for other layers stays valid; an edited layer is computed when shown)."""
        loop = running_loop()
        if loop is None:                      # a script or a test: computed when first shown
            return
        self._warm_generation += 1
        data, gen, n = self._panel_data, self._warm_generation, self.session.num_layers
        tasks = ([lambda t=t: data.thresholds(t) for t in [INPUT] + [str(i) for i in range(n)]]
                 + [lambda i=i: data.warm(str(i), log2=self.panel.hist_log2, log_y=self.panel.hist_log_y)
                    for i in range(n)])

        def warm(k: int) -> None:
            if self._closed or gen != self._warm_generation or k >= len(tasks):
                return
            wait = WARM_IDLE - idle_for(self.session)
            if wait > 0:
                loop.call_later(wait, warm, k)
                return
            try:
                tasks[k]()
            except Exception:                 # noqa: BLE001 - the panel computes (and reports) it in place
                return
            loop.call_later(0.01, warm, k + 1)
        loop.call_later(1.0, warm, 0)         # after the browser has drawn the Explorer

    def connect_workspace(self, view) -> None:
        """Use a `WorkspaceView`'s workspace here: its quantized models and image sets in the pickers, its
        Open button, and Save into it."""
        ws = view.workspace
        self.controls.workspace = self.weight_editor.workspace = self.quant_view.workspace = ws
        self.controls.refresh_quantized()
        self.quant_view.refresh_image_sets()
        view.on_open(self.controls.open_entry)
        self._workspace_views.append(view)
        # a confirmation asked by Open is for the entry then selected (the view relabels its button too)
        view.observe(lambda _c: self.controls.disarm_open(), names="selected")

    def _after_save(self, _button) -> None:
        if self.weight_editor.status.startswith("saved into the workspace"):
            self.controls.refresh_quantized()
            for view in self._workspace_views:
                view.refresh()

    def close(self) -> None:
        """Stop following the session, then close the widgets."""
        self._closed = True
        self._follower.close()
        self.session.remove_callback(self._edit_cb)
        self.weight_editor.close()            # it follows the session too
        super().close()

    # ------------------------------------------------------------------ helpers
    def _node_of(self, position: int) -> str:
        return self.ids[position + 1]

    @property
    def position(self) -> int:
        return self.session.position

    def _index(self, node_id: str) -> int:
        return -1 if node_id in ("", INPUT) else int(node_id)

    def thresholds(self, node_id: str) -> dict[str, float] | None:
        """Every calibration method's threshold for a tensor (cached per quantized model)."""
        return self._panel_data.thresholds(node_id)

    # ------------------------------------------------------------------ the session moved
    @shows_errors
    def on_session_events(self, events: frozenset, from_code: bool) -> None:
        """Follow the session after `events` ("step", "edit", "reset"): from a click's handler (its status
        is already set) or from code (then the status line says what happened)."""
        s = self.session
        new_model = s.model is not self._model
        if new_model:
            self.on_model_change()
        if events & {"reset", "edit", "rerun"}:
            self._fitness, self._dets_key = {}, None
        edits, self._edits[:] = list(self._edits), []
        if "edit" in events:
            self._panel_data.invalidate(edits or None)      # none listed: forget everything
        elif "reset" in events:
            self._panel_data.memo.clear()        # another image or mode: those tensors are gone, free their results
        self._fitness = {k: v for k, v in self._fitness.items() if k <= s.position}
        with self.controls.hold_sync():
            if events & {"reset", "edit", "step"}:
                # a CROSS pair and a Continue run describe the state before the event: the Detections tab
                # must show the session's own detections after a Run, not the earlier CROSS continuation
                self.controls.cross_result = None
                self.controls.continue_result = None
        self.update_views(follow=bool(events & {"step", "reset"}))
        self.explain_view.sync()                 # its fix and colours describe the run it explained
        if from_code:
            self.status = (f"session opened another model from code: {opened_text(s)}" if new_model
                           else self._from_code_text(events))

    def on_model_change(self) -> None:
        """The session opened another model: rebuild or forget everything that belonged to the old one.
        The caller (`on_session_events`) then updates the views, which selects the new input."""
        s = self.session
        self._model = s.model
        self.ids = [INPUT] + [n.id for n in s.model.graph.nodes]
        self._fitness, self._dets_key = {}, None
        self._panel_data = SessionPanelData(s)       # weights / thresholds cached per layer index
        if self._background:
            self._warm_thresholds()
        self.controls.model_changed()
        self.weight_editor.model_changed()
        self.quant_view.model_changed()
        self.explain_view.model_changed()
        self.mixed_view.model_changed()
        self.device_view.model_changed()
        self.graph.set_graph(s.model.graph)          # clears the selection: the panel empties until then

    def _from_code_text(self, events: frozenset) -> str:
        s = self.session
        if "edit" in events:
            n = len(s.edits())
            return f"weights changed from code ({n} edit{'s' if n != 1 else ''} applied){stale_note(s)}"
        where = "no layer has run yet" if s.position < 0 else f"at layer {s.position}"
        verb = "restarted" if "reset" in events and s.position < 0 else "moved"
        return f"session {verb} from code: {where} ({s.mode})"

    # ------------------------------------------------------------------ reactions
    def _on_adopted_change(self, change) -> None:
        if change.new:
            self.controls.restarted(f"adopted {change.new}: {self.session.mode.upper()} mode, restarted from "
                                    f"the input{dropped_text(self.quant_view.dropped_edits)}")

    @shows_errors
    def _on_tab_change(self, change) -> None:
        self.weight_editor.active = change.new == TABS.index("Weights")
        if change.new == TABS.index("Detections"):
            self.update_detections()
        elif change.new == TABS.index("Layer") and self._panel_stale:
            self.show_node(self.graph.selected_node)

    def _on_ranking_change(self, _change) -> None:
        table = self.quant_view.table
        models = {} if table is None else {f"compared: {r.method}": r.qmodel for r in table.results}
        self.controls.offer_quantized(models)

    def _on_node_click(self, node_id: str) -> None:
        if self.follow and node_id != INPUT:
            self.controls.run_to_button.click()

    def _on_selected_node_change(self, change) -> None:
        # the visible view first: its message is not queued behind the other tab's
        self.show_node(change.new)
        self.weight_editor.layer = self._index(change.new)

    def _on_editor_layer_change(self, change) -> None:
        if change.new >= 0 and self.graph.selected_node != str(change.new):
            self.graph.selected_node = str(change.new)

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
            self._follower.note("rerun")
            self.update_detections(force=True)
            self.tabs.selected_index = TABS.index("Detections")

    def _on_overlay_change(self, _change) -> None:
        self.update_overlay()

    def _on_recoveries_change(self, change) -> None:
        if change.new:
            self.graph.overlay = "recovery"          # the culprits in graph colours
        self.update_overlay()

    # ------------------------------------------------------------------ updates
    def refresh(self) -> None:
        """Everything from the session state, as after a restart."""
        self._fitness, self._dets_key = {}, None
        self.update_views()

    def update_views(self, follow: bool = True) -> None:
        """Detections, controls, then highlight the session's layer; with `follow`, select it too (the
        panel and the weight editor follow a step), else re-show the selected layer (after an edit);
        then the overlay. Detections go first: on a finished run they re-execute outputs an edit made
        stale (`Session.detections`), and everything after should show that."""
        self.update_detections()
        self.controls.sync()
        self.quant_view.refresh_header()
        node = self._node_of(self.session.position)
        # the selection follows the session only while it was on the session's layer (or empty): a layer the
        # user picked stays picked through Step, so "Run to selected" still means that layer
        tracking = self.graph.selected_node in ("", self.graph.current_node) or self.graph.current_node == ""
        with self.graph.hold_sync():
            self.graph.current_node = node
            if follow and tracking and self.graph.selected_node != node:
                self.graph.selected_node = node        # -> weight editor layer + panel
            else:
                self.show_node(self.graph.selected_node)   # (the weight editor follows the session itself)
        self.update_overlay()

    @shows_errors
    def show_node(self, node_id: str) -> None:
        """Fill the layer panel for `node_id` (FLOAT reference + this mode's run; `_session_panel`)."""
        if not node_id:
            self.panel.clear()
            return
        if self.tabs.selected_index != TABS.index("Layer"):
            # encode only what is visible: the panel is drawn when its tab is shown (`_on_tab_change`)
            self._panel_stale = True
            return
        self._panel_stale = False
        data, images, rows = self._panel_data.data(node_id, cross=self.controls.cross_result,
                                                   log2=self.panel.hist_log2, log_y=self.panel.hist_log_y)
        self.panel.show(data, images, rows)

    @shows_errors
    def update_overlay(self) -> None:
        """Overlay values for the graph: session fitness per executed layer, or sensitivity ranks."""
        overlay = self.graph.overlay
        if overlay == "sensitivity_rank":
            self.graph.overlay_values = dict(self.quant_view.sensitivity_ranks)
            return
        if overlay == "recovery":
            self.graph.overlay_values = dict(self.explain_view.recoveries)
            return
        if overlay in DEVICE_OVERLAYS:
            self.graph.overlay_values = dict(self.device_view.overlays.get(overlay, {}))
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
        attr, factor = FITNESS_OVERLAYS[overlay]
        self.graph.overlay_values = {str(i): float(getattr(f, attr)) * factor for i, f in self._fitness.items()
                                     if f is not None}

    @shows_errors
    def update_detections(self, force: bool = False) -> None:
        """FLOAT vs this mode's detections (when the run is complete, or from Continue)."""
        s = self.session
        cont = self.controls.continue_result
        key = (self.controls.revision, self.weight_editor.revision, s.done, id(cont))    # None after events
        if key == self._dets_key and not force:
            return
        self._dets_key = key
        if cont is None and not s.done and self.tabs.selected_index != TABS.index("Detections"):
            # nothing to compare yet: FLOAT detections (a whole FLOAT forward + NMS) wait until the tab is
            # shown or the run is complete, so Explorer(s) and Steps do not pay for them
            self._dets_key = None
            if self.detections.names or self.detections.float_names:
                self.detections.clear()
            return
        if cont is not None:
            src = "CROSS result" if cont.source == "other" else "layer output"
            label = f"{s.mode.upper()}, continued from layer {cont.index} ({src})"
            self.detections.show(s.pre, s.float_detections(), cont.detections, label, getattr(s, "image", None))
        else:
            self.detections.show(s.pre, s.float_detections(), s.detections() if s.done else None, s.mode.upper(),
                                 getattr(s, "image", None))
        heads = []
        if s.done and cont is None and s.mode != "float":
            outs = {i: s.output(i) for i, layer in enumerate(s.model.layers) if getattr(layer, "is_head", False)}
            heads = head_errors(s.model, s.float_reference(), outs)
        self.detections.show_heads(heads)
