"""GraphView: the Darknet layer graph in ipycytoscape (dagre layout), built once per model, restyled after.

`graph_to_cytoscape(graph)` is a pure function of the engine's `Graph`. The view then only changes
node `classes`: `current` (the layer the session is at), `picked` (the selected layer) and one
colour class per node for the overlay ("type" colours by layer kind; a metric colours by value
on an 8-step ramp, `ov0`..`ov7`, grey `ov-none` for nodes without a value). Only `set_graph` (the
session opened another model) rebuilds the elements; `generation` counts the builds.
"""
from __future__ import annotations

import html
from typing import Callable, Mapping

import ipywidgets as widgets
import numpy as np
import traitlets
from ipycytoscape import CytoscapeWidget

from engine.graph import INPUT, Graph

OVERLAYS = ["type", "sqnr", "saturation", "range_use", "sensitivity_rank"]
SHORT = {"convolutional": "conv", "connected": "fc", "upsample": "up", "shortcut": "shortcut"}
KIND_COLOURS = {"input": "#bdbdbd", "convolutional": "#6baed6", "maxpool": "#fd8d3c", "avgpool": "#fdae6b",
                "route": "#74c476", "shortcut": "#9e9ac8", "upsample": "#fdd0a2", "yolo": "#f768a1",
                "region": "#f768a1", "detection": "#f768a1", "connected": "#9ecae1"}
OTHER_KIND = "#d9d9d9"
# 8-step sequential ramp, low -> high (viridis samples)
RAMP = ["#440154", "#46327e", "#365c8d", "#277f8e", "#1fa187", "#4ac16d", "#a0da39", "#fde725"]
# edges that do not come from the layer just before: route / shortcut inputs
LINK_KINDS = ("route", "shortcut")


def _kind_class(kind: str) -> str:
    return "k-" + "".join(ch if ch.isalnum() else "_" for ch in kind)


def graph_to_cytoscape(graph: Graph) -> dict:
    """Cytoscape JSON of the layer graph: {"nodes": [...], "edges": [...]}.

    Nodes: the "input" node and one per layer, `data` = id, label ("<index> <kind>"), kind,
    tooltip (shape, params, MACs); `classes` = "layer k-<kind>". Edges run producer -> consumer,
    `data` = id "<src>-><dst>", source, target; `classes` = "flow", plus the consumer's kind
    ("route"/"shortcut") for route and shortcut inputs and "skip" when the producer is not the
    previous layer (a long-range connection).
    """
    c, h, w = graph.input_shape
    nodes = [{"data": {"id": INPUT, "label": "input", "kind": "input", "tooltip": f"input {c}x{h}x{w}"},
              "classes": f"layer {_kind_class('input')}"}]
    edges = []
    for n in graph.nodes:
        shape = "x".join(map(str, n.out_shape))
        nodes.append({"data": {"id": n.id, "label": f"{n.index} {SHORT.get(n.kind, n.kind)}", "kind": n.kind,
                               "tooltip": f"{n.index} [{n.kind}] out {shape}, {n.params:,} params, {n.macs:,} MACs"},
                      "classes": f"layer {_kind_class(n.kind)}"})
        for src in n.inputs:
            prev = INPUT if n.index == 0 else str(n.index - 1)
            cls = ["flow"] + ([n.kind] if n.kind in LINK_KINDS else []) + (["skip"] if src != prev else [])
            edges.append({"data": {"id": f"{src}->{n.id}", "source": src, "target": n.id}, "classes": " ".join(cls)})
    return {"nodes": nodes, "edges": edges}


def graph_style() -> list[dict]:
    """The cytoscape stylesheet: kind colours, overlay ramp, current / picked highlights, edge kinds."""
    style = [
        {"selector": "node", "css": {"label": "data(label)", "shape": "round-rectangle", "width": 84, "height": 20,
                                     "font-size": 12, "text-valign": "center", "text-halign": "center",
                                     "background-color": OTHER_KIND, "border-width": 1, "border-color": "#636363"}},
        {"selector": "edge", "css": {"width": 1.5, "line-color": "#969696", "curve-style": "bezier",
                                     "target-arrow-shape": "triangle", "target-arrow-color": "#969696"}},
        {"selector": "edge.route", "css": {"line-color": "#31a354", "target-arrow-color": "#31a354", "width": 2.5}},
        {"selector": "edge.shortcut", "css": {"line-color": "#756bb1", "target-arrow-color": "#756bb1", "width": 2.5}},
        {"selector": "edge.skip", "css": {"line-style": "dashed"}},
    ]
    style += [{"selector": f"node.t-{_kind_class(k)[2:]}", "css": {"background-color": col}}
              for k, col in KIND_COLOURS.items()]
    style += [{"selector": f"node.ov{i}", "css": {"background-color": col, "color": "#ffffff" if i < 4 else "#000000"}}
              for i, col in enumerate(RAMP)]
    style += [
        {"selector": "node.ov-none", "css": {"background-color": "#f0f0f0", "color": "#969696"}},
        {"selector": "node.picked", "css": {"border-width": 3, "border-color": "#08519c"}},
        {"selector": "node.current", "css": {"border-width": 4, "border-color": "#e6550d", "font-weight": "bold",
                                             "underlay-color": "#e6550d", "underlay-opacity": 0.35,
                                             "underlay-padding": 6}},
    ]
    return style


def ramp_classes(values: Mapping[str, float], ids: list[str]) -> dict[str, str]:
    """Overlay class per node id: ov0..ov7 by value between the min and max finite value, else ov-none."""
    finite = {k: float(v) for k, v in values.items() if v is not None and np.isfinite(v)}
    if not finite:
        return {i: "ov-none" for i in ids}
    lo, hi = min(finite.values()), max(finite.values())
    steps = len(RAMP)
    out = {}
    for i in ids:
        if i not in finite:
            out[i] = "ov-none"
        else:
            t = 0.0 if hi == lo else (finite[i] - lo) / (hi - lo)
            out[i] = f"ov{min(steps - 1, int(t * steps))}"
    return out


class GraphView(widgets.VBox):
    """Layer graph with an overlay dropdown; clicking a node sets `selected_node`.

    The cytoscape graph is built in `__init__` and again only by `set_graph` (another model); trait
    changes only rewrite node classes. `on_node_click(cb)` registers `cb(node_id)` for node clicks
    (plain callables, no engine logic).
    """

    selected_node = traitlets.Unicode("", help="id of the node the user picked ('' = none)")
    current_node = traitlets.Unicode("", help="id of the node the session is at, highlighted ('' = none)")
    overlay = traitlets.Unicode("type", help="'type' (colour by layer kind) or a metric name")
    overlay_values = traitlets.Dict(help="node id -> metric value for the current overlay")
    overlay_options = traitlets.List(traitlets.Unicode(), default_value=list(OVERLAYS),
                                     help="choices of the overlay dropdown")
    generation = traitlets.Int(0, help="how many times the elements were built (1 + model changes)")

    def __init__(self, graph: Graph, height: str = "520px", rank_dir: str = "TB", **kwargs) -> None:
        self._click_callbacks: list[Callable[[str], None]] = []
        self.cyto = CytoscapeWidget(layout=widgets.Layout(height=height, width="100%"))
        self._build(graph)
        self.cyto.set_layout(name="dagre", rankDir=rank_dir, nodeSep=10, rankSep=10, padding=8)
        self.cyto.set_style(graph_style())
        self.cyto.on("node", "click", self._on_cyto_node_click)
        self.cyto.add_class("qw-graph-canvas")
        self._overlay = widgets.Dropdown(description="Colour", layout=widgets.Layout(width="260px"))
        self._legend = widgets.HTML()
        super().__init__(children=[widgets.HBox([self._overlay, self._legend]), self.cyto], **kwargs)
        self.add_class("qw-graph-view")
        self._overlay.options = list(self.overlay_options)
        traitlets.link((self, "overlay"), (self._overlay, "value"))
        self._restyle()

    def _build(self, graph: Graph) -> None:
        self.graph = graph
        self.elements = graph_to_cytoscape(graph)
        self.node_ids = [n["data"]["id"] for n in self.elements["nodes"]]
        self._kinds = {n["data"]["id"]: n["data"]["kind"] for n in self.elements["nodes"]}
        self._base = {n["data"]["id"]: n["classes"] for n in self.elements["nodes"]}
        with self.cyto.graph.hold_sync():             # one message, not one per node
            self.cyto.graph.add_graph_from_json(self.elements, directed=True)
        self.nodes = {n.data["id"]: n for n in self.cyto.graph.nodes}
        self.generation += 1

    def set_graph(self, graph: Graph) -> None:
        """Show another model's graph (the session opened another model): the one rebuild of the elements.

        The selection, highlight and overlay values named the old model's nodes: they are cleared (the
        owner selects again). The frontend re-runs the dagre layout when the element lists change.
        """
        self.selected_node = self.current_node = ""
        self.overlay_values = {}
        old = [*self.cyto.graph.nodes, *self.cyto.graph.edges]
        # two messages: on the first the frontend removes the old elements (in promise callbacks, so after
        # the message), then the second adds the new ones, which reuse ids like "input" and "0". In one
        # message the adds would come first and cytoscape refuses a second element with an id.
        with self.cyto.graph.hold_sync():
            self.cyto.graph.clear()
        self._build(graph)
        for element in old:
            element.close()
        self._restyle()

    def on_node_click(self, callback: Callable[[str], None], remove: bool = False) -> None:
        """Register (or remove) `callback(node_id)`, called after `selected_node` is set by a click."""
        if remove:
            self._click_callbacks.remove(callback)
        else:
            self._click_callbacks.append(callback)

    def _on_cyto_node_click(self, event: dict) -> None:
        node_id = str(event.get("data", {}).get("id", ""))
        if node_id not in self.nodes:
            return
        self.selected_node = node_id
        for cb in list(self._click_callbacks):
            cb(node_id)

    @traitlets.observe("overlay_options")
    def _on_overlay_options_change(self, change) -> None:
        keep = self.overlay if self.overlay in change.new else (change.new[0] if change.new else "")
        self._overlay.options = list(change.new)
        self.overlay = keep

    @traitlets.validate("selected_node", "current_node")
    def _validate_node(self, proposal) -> str:
        value = proposal.value
        if value and value not in self._kinds:
            raise traitlets.TraitError(f"{proposal.trait.name}={value!r}: no such node; ids are "
                                       f"'input', '0'..'{len(self.node_ids) - 2}'")
        return value

    @traitlets.observe("selected_node", "current_node", "overlay", "overlay_values")
    def _on_state_change(self, _change) -> None:
        self._restyle()

    def node_classes(self) -> dict[str, str]:
        """The classes each node should have now (what `_restyle` applies)."""
        if self.overlay == "type":
            colour = {i: "t-" + _kind_class(k)[2:] for i, k in self._kinds.items()}
        else:
            colour = ramp_classes(self.overlay_values, self.node_ids)
        out = {}
        for i in self.node_ids:
            cls = [self._base[i], colour[i]]
            if i == self.selected_node:
                cls.append("picked")
            if i == self.current_node:
                cls.append("current")
            out[i] = " ".join(cls)
        return out

    def _restyle(self) -> None:
        # only changed classes are synced: a step touches two nodes, not the whole graph
        for i, cls in self.node_classes().items():
            node = self.nodes[i]
            if node.classes != cls:
                node.classes = cls
        self._legend.value = self._legend_html()

    def _legend_html(self) -> str:
        if self.overlay == "type":
            return ""
        finite = [float(v) for v in self.overlay_values.values() if v is not None and np.isfinite(v)]
        if not finite:
            return f"<small>{html.escape(self.overlay)}: no values yet</small>"
        swatches = "".join(f'<span style="background:{c};display:inline-block;width:12px;height:12px"></span>'
                           for c in RAMP)
        return (f"<small>{html.escape(self.overlay)}: {min(finite):.3g} {swatches} {max(finite):.3g}</small>")
