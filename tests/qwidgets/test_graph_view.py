"""GraphView, headless: cytoscape JSON of yolov3-tiny, highlight/selection classes, overlays."""
from __future__ import annotations

import pytest
import traitlets

from qwidgets._focus import MAX_AGE, message_age
from qwidgets.graph_view import (CELL_H, CELL_W, MAX_ZOOM, MIN_ZOOM, OVERLAY_META, RAMP, GraphView, canvas_rule,
                                 graph_to_cytoscape, ramp_classes)


def click(view: GraphView, node_id: str) -> None:
    """What the frontend sends for a node click (ipycytoscape's interaction message)."""
    view.cyto._handle_interaction(view.cyto, {"widget": "node", "event": "click",
                                              "data": {"data": {"id": node_id}}}, None)


@pytest.fixture(scope="module")
def view(tiny):
    return GraphView(tiny.graph)


def test_cytoscape_json_has_every_layer_and_the_route_edges(tiny):
    d = graph_to_cytoscape(tiny.graph)
    ids = [n["data"]["id"] for n in d["nodes"]]
    assert len(ids) == 25 and ids[0] == "input" and ids[1:] == [str(i) for i in range(24)]
    assert d["nodes"][1]["data"]["label"] == "0 conv" and d["nodes"][17]["data"]["kind"] == "yolo"
    edges = {e["data"]["id"]: e["classes"].split() for e in d["edges"]}
    assert len(edges) == 25                                 # 23 chain edges + 20 <- 8 + input -> 0
    assert "input->0" in edges
    assert set(edges["13->17"]) == {"flow", "route", "skip"}
    assert set(edges["19->20"]) == {"flow", "route"}
    assert set(edges["8->20"]) == {"flow", "route", "skip"}
    assert edges["3->4"] == ["flow"]


def test_view_builds_the_graph_once_on_a_grid_that_fits_the_panel_width(view):
    lay = view.cyto.cytoscape_layout
    assert lay["name"] == "grid" and lay["cols"] == 4 and lay["rows"] == 7      # 25 nodes, 560 px / 118 px
    assert len(view.cyto.graph.nodes) == 25 and len(view.cyto.graph.edges) == 25
    assert view.cyto.layout.height == f"{7 * 44 + 24}px"          # every row at zoom 1


def test_yolov3_grid_reads_at_zoom_one_and_the_wheel_is_bounded(shared):
    """Issue 18 item 16: yolov3 opened at zoom 0.12 and 12 wheel notches reached 3e13."""
    from engine.darknet.cfg import read_cfg
    from engine.darknet.build import build_graph, build_layers
    graph = build_graph("yolov3", (3, 416, 416), build_layers(read_cfg(shared / "models" / "cfg" / "yolov3.cfg")))
    v = GraphView(graph)
    cols, rows = v.cyto.cytoscape_layout["cols"], v.cyto.cytoscape_layout["rows"]
    assert cols * rows >= 108 and cols * CELL_W <= 560
    height = int(v.cyto.layout.height[:-2])
    # the fitted zoom is bounded by the canvas height over the grid's height: no smaller than 0.75
    assert height / (rows * CELL_H) >= 0.75
    assert (v.cyto.min_zoom, v.cyto.max_zoom) == (MIN_ZOOM, MAX_ZOOM) and 0 < MIN_ZOOM < 1 < MAX_ZOOM <= 4
    assert v.cyto.wheel_sensitivity <= 0.2
    assert v.find(80) == "80" and v.selected_node == "80" and "found" in v.nodes["80"].classes.split()
    with pytest.raises(ValueError, match="0..106"):
        v.find("107")


def test_current_node_moves_the_highlight_class(view):
    view.current_node = "3"
    assert "current" in view.nodes["3"].classes.split()
    view.current_node = "4"
    assert "current" not in view.nodes["3"].classes.split()
    assert "current" in view.nodes["4"].classes.split()
    with pytest.raises(traitlets.TraitError, match="no such node"):
        view.current_node = "99"


def test_node_click_sets_selected_node_and_calls_hooks(view):
    seen = []
    view.on_node_click(seen.append)
    click(view, "17")
    assert view.selected_node == "17" and seen == ["17"]
    assert "picked" in view.nodes["17"].classes.split()
    view.on_node_click(seen.append, remove=True)
    click(view, "input")
    assert view.selected_node == "input" and seen == ["17"]


def test_overlay_values_restyle_without_rebuilding(view):
    graph, nodes = view.cyto.graph, list(view.cyto.graph.nodes)
    assert "t-convolutional" in view.nodes["0"].classes.split()
    with view.hold_trait_notifications():
        view.overlay = "sqnr"
        view.overlay_values = {str(i): float(i) for i in range(24)}
    # SQNR: low is bad, so layer 0 (0 dB) is the worst ramp step and layer 23 the best
    assert f"ov{len(RAMP) - 1}" in view.nodes["0"].classes.split() and "ov0" in view.nodes["23"].classes.split()
    assert "ov-none" in view.nodes["input"].classes.split()
    assert view._overlay.value == "sqnr" and "dB (higher is better)" in view._legend.value
    assert view.node_label("4") == "4 conv\n4.0 dB" and view.nodes["4"].data["label"] == "4 conv\n4.0 dB"
    assert "sqnr: 4.0 dB" in view.nodes["4"].data["tooltip"]
    assert [o[1] for o in view.worst_list.options] == ["0", "1", "2", "3", "4"]       # worst first
    view.worst_list.value = "2"
    assert view.selected_node == "2"
    view.overlay = "type"
    assert "t-convolutional" in view.nodes["0"].classes.split()
    assert view.cyto.graph is graph and list(view.cyto.graph.nodes) == nodes


def test_ramp_classes_ignore_missing_and_nan():
    got = ramp_classes({"a": 0.0, "b": 1.0, "c": float("nan")}, ["a", "b", "c", "d"])
    assert got == {"a": "ov0", "b": f"ov{len(RAMP) - 1}", "c": "ov-none", "d": "ov-none"}


def test_shortcut_edges_get_their_class(shared):
    from engine.darknet.cfg import read_cfg
    from engine.darknet.build import build_graph, build_layers
    cfg = read_cfg(shared / "models" / "cfg" / "darknet53.cfg")
    graph = build_graph("darknet53", (3, 256, 256), build_layers(cfg))
    d = graph_to_cytoscape(graph)
    shortcuts = [n for n in graph.nodes if n.kind == "shortcut"]
    assert shortcuts
    classes = {e["data"]["id"]: set(e["classes"].split()) for e in d["edges"]}
    for n in shortcuts:
        assert all("shortcut" in classes[f"{src}->{n.id}"] for src in n.inputs)
        assert any("skip" in classes[f"{src}->{n.id}"] for src in n.inputs)


def test_saturation_legend_has_units_and_a_fixed_scale():
    """Issue 18 item 5: a rate of 7e-7 was auto-scaled to the brightest colour."""
    meta = OVERLAY_META["saturation"]
    got = ramp_classes({"a": 7.22e-05, "b": 0.0}, ["a", "b"], meta)      # percent
    assert got == {"a": "ov0", "b": "ov0"}
    assert ramp_classes({"a": 2.0}, ["a"], meta) == {"a": f"ov{len(RAMP) - 1}"}
    assert "%" in meta.title and "lower is better" in meta.title
    assert "1 = " in OVERLAY_META["sensitivity_rank"].title


def test_legend_without_values_says_how_to_get_them(view):
    view.overlay = "sensitivity_rank"
    view.overlay_values = {}
    assert "sensitivity sweep" in view._legend.value
    view.overlay = "type"


def test_hover_line_follows_the_mouse_and_no_click_tooltip_lingers(view):
    # the frontend sends {"event", "widget", "data": node json} for the registered node events
    def send(event: str, node: str) -> None:
        view.cyto._handle_interaction(view.cyto, {"widget": "node", "event": event, "data": {"data": {"id": node}}}, [])
    # ipycytoscape opens its tooltip on click from the data key named by tooltip_source and never hides it
    # on mouseout: no node has a data key "" (the default source "tooltip" showed it)
    assert view.cyto.tooltip_source == "" and all("" not in n.data for n in view.cyto.graph.nodes)
    view.overlay = "sqnr"
    view.overlay_values = {"4": 21.25}
    send("mouseover", "4")
    assert view.hovered_node == "4" and "4 [convolutional] out" in view.hover.value
    assert "sqnr: 21.2 dB" in view.hover.value
    send("mouseover", "5")
    send("mouseout", "4")                    # the late mouseout of the previous node keeps the new one
    assert view.hovered_node == "5" and "5 [maxpool]" in view.hover.value
    send("mouseout", "5")
    assert view.hovered_node == "" and view.hover.value == ""


def test_nothing_above_the_canvas_changes_height_with_the_colouring(view):
    # cytoscape maps clicks with the canvas position it measured earlier (the browser test clicks after a
    # colouring change): above the canvas only fixed-height rows; the worst list (shown for metrics) is below
    above = view.children[:view.children.index(view.cyto)]
    assert view.worst_list not in above and view._worst_title not in above
    assert view._legend in above and view._legend.layout.height and view.hover.layout.height
    view.overlay = "sqnr"
    view.overlay_values = {"0": 10.0, "1": 30.0}
    assert view.worst_list.layout.display == "flex"
    assert view.children.index(view.worst_list) > view.children.index(view.cyto)


def test_a_fresh_node_click_keeps_the_keyboard_focus_in_the_graph(view, monkeypatch):
    # cytoscape's mousedown leaves <body> focused and JupyterLab then refocuses the notebook and its cell on
    # the next mousedown (three whole-notebook restyles): the click handler focuses the keeper instead,
    # only when the click message is fresh (a late focus would take the keyboard from another field)
    import datetime as dt
    import qwidgets.graph_view as gv
    sent = []
    monkeypatch.setattr(view.focus_keeper, "send", sent.append)
    assert view.focus_keeper.tabbable is False and "qw-focus-keeper" in view.focus_keeper._dom_classes
    assert view.cyto.auto_ungrabify is True          # no grabbed true / false messages around each click
    now = dt.datetime(2026, 12, 3, 22, 0, 0, tzinfo=dt.timezone.utc)
    header = {"header": {"date": "2026-12-03T21:59:59.900Z"}}
    assert message_age(header, now) == pytest.approx(0.1)
    assert message_age({"header": {"date": now - dt.timedelta(seconds=2)}}, now) == pytest.approx(2.0)
    assert message_age({}, now) is None and message_age({"header": {"date": "no date"}}, now) is None
    for age, focused in ((0.1, True), (MAX_AGE + 0.5, False), (-(MAX_AGE + 0.5), False), (None, False)):
        sent.clear()
        monkeypatch.setattr(gv, "request_age", lambda age=age: age)
        click(view, "9")
        assert view.selected_node == "9"
        assert sent == ([{"do": "focus"}] if focused else []), (age, sent)


def test_the_canvas_height_reaches_the_page_as_a_class_rule_before_the_layout_runs(tiny):
    """ipycytoscape lays the grid out when its view is displayed, before ipywidgets applies the Layout's
    height: the grid was fitted to ipycytoscape's stylesheet height (400 px) and on the 332 px canvas
    yolov3-tiny's last row (layer 23, a head) lay below the bottom edge until Fit. The height is also a
    class rule, sent with the legend (displayed before the canvas), whatever the colouring."""
    v = GraphView(tiny.graph)
    assert v.cyto.layout.height == "332px"
    classes = [c for c in v.cyto._dom_classes if c.startswith("qw-canvas-h")]
    assert classes == ["qw-canvas-h332px"]
    rule = "<style>.qw-canvas-h332px.custom-widget{height:332px}</style>"
    assert v._legend.value.startswith(rule)
    v.overlay = "sqnr"
    v.overlay_values = {"0": 10.0}
    assert v._legend.value.startswith(rule) and "dB" in v._legend.value
    assert canvas_rule("50.5vh") == (("qw-canvas-h50_5vh",),
                                     "<style>.qw-canvas-h50_5vh.custom-widget{height:50.5vh}</style>")
    # anything but a number and a unit stays out of the style sheet (the Layout still applies it)
    assert canvas_rule("calc(100% - 2px)") == ((), "") and canvas_rule("1px}</style><b>") == ((), "")
    v2 = GraphView(tiny.graph, height="calc(100vh - 10px)")
    assert not [c for c in v2.cyto._dom_classes if c.startswith("qw-canvas-h")]
    assert "<style>" not in v2._legend.value and v2.cyto.layout.height == "calc(100vh - 10px)"


def test_find_with_a_bad_layer_number_says_which_numbers_exist_in_the_explorer_status_line(tiny):
    # qa8: typing 99 in Find only turned the box's label to "no such"; the message naming the range was dropped
    import engine
    from qwidgets import Explorer
    ex = Explorer(engine.Session(tiny))
    ex.graph._find.value = "99"
    assert ex.graph._find.description == "no such"
    expected = "error: find '99': no such layer; type 'input' or an index 0..23"
    assert ex.graph.status == expected and ex.controls.status == expected
    ex.graph._find.value = "7"                       # a good number still finds the layer
    assert ex.graph._find.description == "Find" and ex.graph.selected_node == "7"
    ex.graph._find.value = "x"                       # not a number either: the same range
    assert ex.controls.status == "error: find 'x': no such layer; type 'input' or an index 0..23"
