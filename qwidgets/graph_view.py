"""GraphView: the Darknet layer graph in ipycytoscape (dagre layout), built once per model, restyled after.

`graph_to_cytoscape(graph)` is a pure function of the engine's `Graph`. The view then only changes
node `classes`: `current` (the layer the session is at), `picked` (the selected layer), `found` (the
layer typed in Find) and one colour class per node for the overlay ("type" colours by layer kind; a
metric colours by value on an 8-step ramp from good `ov0` to bad `ov7`, grey `ov-none` for nodes
without a value; how each metric is scaled, written and explained: `graph_overlays.py`), and the label of
nodes whose metric changed (index, kind and the metric value).
Only `set_graph` (the session opened another model) rebuilds the elements; `generation` counts them.

Layout: layers in execution order on a grid as wide as the panel (`grid_shape`), so a 107-layer yolov3
reads at zoom ~1 instead of a 3000 px tall dagre column squeezed to zoom 0.12; the canvas height grows
with the rows. The wheel zoom is bounded (MIN_ZOOM..MAX_ZOOM) and gentle (WHEEL).
"""
from __future__ import annotations

import html
import re
from typing import Callable

import ipywidgets as widgets
import numpy as np
import traitlets
from ipycytoscape import CytoscapeWidget

from engine.graph import INPUT, Graph
from qwidgets._errors import Message, report
from qwidgets._focus import FocusKeeper, request_age
from qwidgets.graph_overlays import (OVERLAY_META, RAMP, OverlayMeta, finite_values, metric_legend_html,  # noqa: F401
                                     ramp_classes, worst)

OVERLAYS = ["type", "sqnr", "saturation", "range_use", "sensitivity_rank"]
MIN_ZOOM, MAX_ZOOM, WHEEL = 0.4, 3.0, 0.15
NODE_W, NODE_H, CELL_W, CELL_H = 104, 30, 118, 44


SHORT = {"convolutional": "conv", "connected": "fc", "upsample": "up", "shortcut": "shortcut"}
KIND_COLOURS = {"input": "#bdbdbd", "convolutional": "#6baed6", "maxpool": "#fd8d3c", "avgpool": "#fdae6b",
                "route": "#74c476", "shortcut": "#9e9ac8", "upsample": "#fdd0a2", "yolo": "#f768a1",
                "region": "#f768a1", "detection": "#f768a1", "connected": "#9ecae1"}
OTHER_KIND = "#d9d9d9"
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


def grid_shape(n_nodes: int, width_px: int) -> tuple[int, int]:
    """(cols, rows) of the execution-order grid that fits `width_px` at zoom 1."""
    cols = max(2, min(n_nodes, (width_px - 16) // CELL_W))
    return cols, -(-n_nodes // cols)


def canvas_rule(height: str) -> tuple[str, str]:
    """(classes, style sheet) setting the canvas `height` by a class; none unless it is a number and a unit.
    ipycytoscape lays the grid out when displayed, before ipywidgets applies the Layout's height: fitted to
    its stylesheet's 400 px, a 332 px canvas hid its last row (layer 23, a head) until Fit."""
    if not re.fullmatch(r"\d+(\.\d+)?(px|vh|em|rem)", height):
        return (), ""
    cls = "qw-canvas-h" + height.replace(".", "_")
    return (cls,), f"<style>.{cls}.custom-widget{{height:{height}}}</style>"


def canvas_height(rows: int, max_px: int = 1100) -> int:
    """Pixels for `rows` grid rows at zoom 1 (bounded: taller graphs pan)."""
    return max(240, min(max_px, rows * CELL_H + 24))


def graph_style() -> list[dict]:
    """The cytoscape stylesheet: kind colours, overlay ramp, current / picked / found highlights, edge kinds.

    Text is black with a white outline on every fill, so it reads on the darkest ramp step too."""
    style = [
        {"selector": "node", "css": {"label": "data(label)", "shape": "round-rectangle", "width": NODE_W,
                                     "height": NODE_H, "font-size": 12, "text-valign": "center",
                                     "text-halign": "center", "text-wrap": "wrap", "color": "#000000",
                                     "text-outline-color": "#ffffff", "text-outline-width": 2,
                                     "background-color": OTHER_KIND, "border-width": 1, "border-color": "#636363"}},
        {"selector": "edge", "css": {"width": 1.5, "line-color": "#969696", "curve-style": "bezier",
                                     "target-arrow-shape": "triangle", "target-arrow-color": "#969696"}},
        {"selector": "edge.route", "css": {"line-color": "#31a354", "target-arrow-color": "#31a354", "width": 2.5}},
        {"selector": "edge.shortcut", "css": {"line-color": "#756bb1", "target-arrow-color": "#756bb1", "width": 2.5}},
        {"selector": "edge.skip", "css": {"line-style": "dashed"}},
    ]
    style += [{"selector": f"node.t-{_kind_class(k)[2:]}", "css": {"background-color": col}}
              for k, col in KIND_COLOURS.items()]
    style += [{"selector": f"node.ov{i}", "css": {"background-color": col}} for i, col in enumerate(RAMP)]
    style += [
        {"selector": "node.ov-none", "css": {"background-color": "#f0f0f0", "color": "#737373"}},
        {"selector": "node.picked", "css": {"border-width": 4, "border-color": "#08519c"}},
        {"selector": "node.current", "css": {"border-width": 4, "border-color": "#000000", "font-weight": "bold",
                                             "underlay-color": "#2171b5", "underlay-opacity": 0.5,
                                             "underlay-padding": 5}},
        {"selector": "node.found", "css": {"underlay-color": "#31a354", "underlay-opacity": 0.7,
                                           "underlay-padding": 8}},
    ]
    return style


class GraphView(widgets.VBox):
    """Layer graph with an overlay dropdown; clicking a node sets `selected_node`.

    The cytoscape graph is built in `__init__` and again only by `set_graph` (another model); trait changes
    only rewrite node classes. `on_node_click(cb)` registers `cb(node_id)` for node clicks (plain callables)."""

    selected_node = traitlets.Unicode("", help="id of the node the user picked ('' = none)")
    current_node = traitlets.Unicode("", help="id of the node the session is at, highlighted ('' = none)")
    overlay = traitlets.Unicode("type", help="'type' (colour by layer kind) or a metric name")
    overlay_values = traitlets.Dict(help="node id -> metric value for the current overlay")
    overlay_hints = traitlets.Dict(help="overlay -> why it has no values now, said instead of its standing hint")
    overlay_options = traitlets.List(traitlets.Unicode(), default_value=list(OVERLAYS),
                                     help="choices of the overlay dropdown")
    generation = traitlets.Int(0, help="how many times the elements were built (1 + model changes)")
    found_node = traitlets.Unicode("", help="id of the node typed in Find ('' = none), highlighted")
    status = Message("", help="what Find could not find, naming the valid range (the Explorer's status line)")

    def __init__(self, graph: Graph, height: str | None = None, width_px: int = 560, **kwargs) -> None:
        """height: the canvas height (default: what the grid needs at zoom 1, at most 1100 px);
        width_px: the width the grid is laid out for (the panel's)."""
        self._click_callbacks: list[Callable[[str], None]] = []
        self._labels: dict[str, str] = {}
        self.width_px = width_px
        cols, rows = grid_shape(len(graph.nodes) + 1, width_px)
        height = height or f"{canvas_height(rows)}px"
        canvas_classes, self._canvas_css = canvas_rule(height)
        self.cyto = CytoscapeWidget(layout=widgets.Layout(height=height, width="100%"), _dom_classes=canvas_classes)
        self.cyto.min_zoom, self.cyto.max_zoom, self.cyto.wheel_sensitivity = MIN_ZOOM, MAX_ZOOM, WHEEL
        # nodes stay where the grid put them: a grabbable node sent `grabbed` true / false to the kernel on
        # every click (two requests and their echoes, the first queued before the click's own message)
        self.cyto.auto_ungrabify = True
        self._build(graph)
        self.cyto.set_style(graph_style())
        self.cyto.on("node", "click", self._on_cyto_node_click)
        # ipycytoscape's own tooltip opens on click and stays until the next click, over the neighbours:
        # off (no data key is named ""); the hovered node's text goes to a fixed-height line above the
        # canvas instead, written on mouseover and cleared on mouseout (it never covers a node)
        self.cyto.tooltip_source = ""
        self.cyto.on("node", "mouseover", self._on_cyto_hover)
        self.cyto.on("node", "mouseout", self._on_cyto_unhover)
        # stretched, not width="100%" (plus 2 px margins: a scroll bar under the canvas)
        self.hover = widgets.HTML("", layout=widgets.Layout(height="20px", overflow="hidden"))
        self.hover.add_class("qw-hover")
        self.hovered_node = ""
        self.cyto.add_class("qw-graph-canvas")
        self._overlay = widgets.Dropdown(description="Colour", layout=widgets.Layout(width="230px"))
        self._find = widgets.Text(placeholder="layer #", description="Find", continuous_update=False,
                                  layout=widgets.Layout(width="150px"))
        self._fit = widgets.Button(description="Fit", icon="expand", layout=widgets.Layout(width="64px"),
                                   tooltip="lay the graph out again to fit the canvas")
        # the legend keeps one height (3 lines, then it scrolls) whatever the colouring: cytoscape maps
        # clicks with the page position of its canvas measured earlier (it re-measures on resize and scroll
        # only), so anything above the canvas that changed height made a click select another node
        self._legend = widgets.HTML(layout=widgets.Layout(height="64px", overflow="hidden auto"))
        self._legend.add_class("qw-legend")
        self.focus_keeper = FocusKeeper()      # the keyboard focus after a node click (qwidgets._focus)
        self.worst_list = widgets.Select(rows=5, layout=widgets.Layout(width="auto", display="none"))
        self.worst_list.add_class("qw-worst")
        self._worst_title = widgets.HTML()
        # the worst list appears with a metric colouring: below the canvas, so it never moves it (see _legend)
        super().__init__(children=[widgets.HBox([self._overlay, self._find, self._fit]),
                                   self._legend, self.hover, self.cyto, self._worst_title, self.worst_list,
                                   self.focus_keeper], **kwargs)
        self.add_class("qw-graph-view")
        self._overlay.options = list(self.overlay_options)
        traitlets.link((self, "overlay"), (self._overlay, "value"))
        self._find.observe(self._on_find, names="value")
        self._fit.on_click(lambda _b: self.cyto.relayout())
        self.worst_list.observe(self._on_worst_pick, names="value")
        self._restyle()

    def _grid_layout(self) -> None:
        cols, rows = grid_shape(len(self.node_ids), self.width_px)
        self.cyto.set_layout(name="grid", cols=cols, rows=rows, fit=True, padding=10, avoidOverlap=True,
                             condense=False)

    def find(self, text: str | int) -> str:
        """Select and highlight the layer with this index ('input' too); returns its node id.
        Raises: ValueError naming the valid range for anything else."""
        t = str(text).strip()
        if t not in self._kinds:
            raise ValueError(f"find {t!r}: no such layer; type 'input' or an index 0..{len(self.node_ids) - 2}")
        self.found_node = t
        self.selected_node = t
        return t

    def _on_find(self, change) -> None:
        if not change.new.strip():
            return
        try:
            self.find(change.new)
            self._find.description = "Find"
        except ValueError as err:       # the box says so, the status line says what exists
            self._find.description = "no such"
            report(self, err, "GraphView.find")

    def _on_worst_pick(self, change) -> None:
        if change.new:
            self.selected_node = change.new

    def node_label(self, node_id: str) -> str:
        """The text on a node: index + kind, and the coloured metric's value when it has one."""
        base = self._base_labels[node_id]
        v = self.overlay_values.get(node_id) if self.overlay in OVERLAY_META else None
        if v is None or not np.isfinite(v):
            return base
        return f"{base}\n{OVERLAY_META[self.overlay].text(float(v))}"

    def _build(self, graph: Graph) -> None:
        self.graph = graph
        self.elements = graph_to_cytoscape(graph)
        self.node_ids = [n["data"]["id"] for n in self.elements["nodes"]]
        self._kinds = {n["data"]["id"]: n["data"]["kind"] for n in self.elements["nodes"]}
        self._base = {n["data"]["id"]: n["classes"] for n in self.elements["nodes"]}
        self._base_labels = {n["data"]["id"]: n["data"]["label"] for n in self.elements["nodes"]}
        self._base_tips = {n["data"]["id"]: n["data"]["tooltip"] for n in self.elements["nodes"]}
        self._labels = dict(self._base_labels)
        self._grid_layout()
        with self.cyto.graph.hold_sync():             # one message, not one per node
            self.cyto.graph.add_graph_from_json(self.elements, directed=True)
        self.nodes = {n.data["id"]: n for n in self.cyto.graph.nodes}
        self.generation += 1

    def set_graph(self, graph: Graph) -> None:
        """Show another model's graph (the session opened another model): the one rebuild of the elements.

        The selection, highlight and overlay values named the old model's nodes: they are cleared (the
        owner selects again). The frontend re-runs the dagre layout when the element lists change.
        """
        self.selected_node = self.current_node = self.found_node = ""
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
        self.focus_keeper.keep(request_age())      # first: it lands one round trip after the click
        self.selected_node = node_id
        for cb in list(self._click_callbacks):
            cb(node_id)

    def tooltip(self, node_id: str) -> str:
        """The hover text of a node: shape, params, MACs, and the coloured metric when it has a value."""
        label = self._labels.get(node_id, "")
        extra = f"; {self.overlay}: {label.split(chr(10))[-1]}" if "\n" in label else ""
        return self._base_tips[node_id] + extra

    def _on_cyto_hover(self, event: dict) -> None:
        node_id = str(event.get("data", {}).get("id", ""))
        if node_id in self.nodes:
            self.hovered_node = node_id
            self.hover.value = f"<small style='white-space:nowrap'>{html.escape(self.tooltip(node_id))}</small>"

    def _on_cyto_unhover(self, event: dict) -> None:
        node_id = str(event.get("data", {}).get("id", ""))
        if node_id == self.hovered_node or node_id not in self.nodes:
            self.hovered_node = ""
            self.hover.value = ""

    @traitlets.observe("overlay_options")
    def _on_overlay_options_change(self, change) -> None:
        keep = self.overlay if self.overlay in change.new else (change.new[0] if change.new else "")
        self._overlay.options = list(change.new)
        self.overlay = keep

    @traitlets.validate("selected_node", "current_node", "found_node")
    def _validate_node(self, proposal) -> str:
        value = proposal.value
        if value and value not in self._kinds:
            raise traitlets.TraitError(f"{proposal.trait.name}={value!r}: no such node; ids are "
                                       f"'input', '0'..'{len(self.node_ids) - 2}'")
        return value

    @traitlets.observe("selected_node", "current_node", "found_node", "overlay", "overlay_values", "overlay_hints")
    def _on_state_change(self, _change) -> None:
        self._restyle()

    def node_classes(self) -> dict[str, str]:
        """The classes each node should have now (what `_restyle` applies)."""
        if self.overlay == "type":
            colour = {i: "t-" + _kind_class(k)[2:] for i, k in self._kinds.items()}
        else:
            colour = ramp_classes(self.overlay_values, self.node_ids, OVERLAY_META.get(self.overlay))
        out = {}
        for i in self.node_ids:
            cls = [self._base[i], colour[i]]
            if i == self.selected_node:
                cls.append("picked")
            if i == self.current_node:
                cls.append("current")
            if i == self.found_node:
                cls.append("found")
            out[i] = " ".join(cls)
        return out

    def _restyle(self) -> None:
        # only changed classes and labels are synced: a step touches two nodes, not the whole graph
        for i, cls in self.node_classes().items():
            node = self.nodes[i]
            if node.classes != cls:
                node.classes = cls
            label = self.node_label(i)
            if self._labels.get(i) != label:
                self._labels[i] = label
                node.data = {**node.data, "label": label, "tooltip": self.tooltip(i)}
                if i == self.hovered_node:
                    self.hover.value = f"<small style='white-space:nowrap'>{html.escape(self.tooltip(i))}</small>"
        self._legend.value = self._canvas_css + self._legend_html()     # displayed before the canvas: canvas_rule
        self._update_worst()

    def _update_worst(self) -> None:
        meta = OVERLAY_META.get(self.overlay)
        items = worst(self.overlay_values, meta) if meta else []
        options = [(f"{k} {self._kinds[k]}: {meta.text(v)}", k) for k, v in items]
        with self.worst_list.hold_trait_notifications():
            if list(self.worst_list.options) != options:
                self.worst_list.options = options
                self.worst_list.value = None
        self.worst_list.layout.display = "flex" if options else "none"
        self._worst_title.value = (f"<small><b>worst {len(options)}</b> (click to select)</small>" if options else "")

    def _legend_html(self) -> str:
        if self.overlay == "type":
            kinds = sorted({k for k in self._kinds.values()})
            return "<small>" + " ".join(
                f'<span style="background:{KIND_COLOURS.get(k, OTHER_KIND)};padding:0 4px;border:1px solid #999">'
                f"{html.escape(SHORT.get(k, k))}</span>" for k in kinds) + "</small>"
        return metric_legend_html(self.overlay, self.overlay_values, self.overlay_hints.get(self.overlay, ""))
