"""ModelView: a FLOAT-only preview of the Explorer (GraphView + LayerPanel + Step), no Session needed.

The FLOAT forward runs once in `__init__`; Step moves `current_node` along the layers and the
panel follows; clicking a node shows its panel without moving the current layer. The real
`Explorer(session)` keeps the same composition and replaces `_outs` / the Step handler with
Session calls.
"""
from __future__ import annotations

import time

import ipywidgets as widgets
import numpy as np
import traitlets

from engine.graph import INPUT
from engine.darknet.image import ImageLike
from engine.imaging.samples import sample
from qwidgets._errors import report
from qwidgets._panel_data import layer_panel_data
from qwidgets.graph_view import GraphView
from qwidgets.layer_panel import LayerPanel


class ModelView(widgets.VBox):
    """Graph + layer panel of one model on one image, FLOAT run; Step / Reset walk the layers."""

    position = traitlets.Int(-1, help="index of the current layer; -1 = the input node")
    status = traitlets.Unicode("", help="last message shown to the user")

    def __init__(self, model, image: ImageLike | None = None, graph_height: str = "560px", **kwargs) -> None:
        self.model = model
        self.x = model.preprocess(image if image is not None else sample("dog")).x
        t = time.perf_counter()
        self._outs = model.forward(self.x)
        forward_s = time.perf_counter() - t
        self.ids = [INPUT] + [n.id for n in model.graph.nodes]
        self.graph = GraphView(model.graph, height=graph_height, layout=widgets.Layout(width="360px"))
        self.panel = LayerPanel(layout=widgets.Layout(flex="1 1 auto", min_width="400px"))
        self.step_button = widgets.Button(description="Step", icon="forward", button_style="primary")
        self.reset_button = widgets.Button(description="Reset", icon="undo")
        self.current_label = widgets.Label()
        self.current_label.add_class("qw-current")
        self._status = widgets.Label()
        controls = widgets.HBox([self.step_button, self.reset_button, self.current_label])
        super().__init__(children=[controls, widgets.HBox([self.graph, self.panel]), self._status], **kwargs)
        self.add_class("qw-model-view")
        traitlets.dlink((self, "status"), (self._status, "value"))
        self.step_button.on_click(self._on_step_click)
        self.reset_button.on_click(self._on_reset_click)
        self.graph.observe(self._on_selected_node_change, names="selected_node")
        self.panel.observe(self._on_hist_options_change, names=["hist_log2", "hist_log_y"])
        self._on_position_change(None)
        self.status = f"{model.graph.name}: FLOAT forward of {len(self._outs)} layers in {forward_s:.2f} s"

    @property
    def current_node(self) -> str:
        return self.ids[self.position + 1]

    @traitlets.validate("position")
    def _validate_position(self, proposal) -> int:
        if not -1 <= proposal.value < len(self.ids) - 1:
            raise traitlets.TraitError(f"position={proposal.value}: expected -1..{len(self.ids) - 2}")
        return proposal.value

    def _on_step_click(self, _button) -> None:
        # past the last layer, Step starts again from the input
        self.position = self.position + 1 if self.position < len(self.ids) - 2 else -1

    def _on_reset_click(self, _button) -> None:
        self.position = -1

    @traitlets.observe("position")
    def _on_position_change(self, _change) -> None:
        nid = self.current_node
        kind = "input" if nid == INPUT else self.model.graph.node(nid).kind
        self.graph.current_node = nid
        self.graph.selected_node = nid     # the panel follows the session
        self.current_label.value = f"current: {nid} ({kind})"

    def _on_selected_node_change(self, change) -> None:
        if change.new:
            self.show_node(change.new)

    def _on_hist_options_change(self, _change) -> None:
        if self.graph.selected_node:
            self.show_node(self.graph.selected_node)

    def show_node(self, node_id: str) -> None:
        """Fill the panel for `node_id` from the FLOAT run (errors go to the status line)."""
        try:
            info, images, rows = layer_panel_data(self.model, self._outs, node_id, self.x,
                                                  log2=self.panel.hist_log2, log_y=self.panel.hist_log_y)
        except Exception as err:     # noqa: BLE001 - the widget boundary (qwidgets._errors)
            report(self, err, f"ModelView.show_node({node_id!r})")
            self.status = f"error: layer {node_id}: {self.status.removeprefix('error: ')}"
            return
        self.panel.show(info, images, rows)

    def outputs(self) -> list[np.ndarray]:
        """The FLOAT outputs the view shows (read-only arrays, one per layer)."""
        return list(self._outs)
