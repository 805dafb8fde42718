"""Explorer(session) headless on yolov3-tiny INT: buttons via .click(), traits + Session state checked."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import engine
from qwidgets import Explorer


def is_png(data: bytes) -> bool:
    return bool(data) and Image.open(io.BytesIO(data)).format == "PNG"


def click_node(ex: Explorer, node_id: str) -> None:
    """What a browser click on a graph node sends to the kernel."""
    ex.graph.cyto._handle_interaction(ex.graph.cyto, {"widget": "node", "event": "click",
                                                      "data": {"data": {"id": node_id}}}, None)


@pytest.fixture(scope="module")
def ex(tiny, tiny_q):
    return Explorer(engine.Session(tiny, tiny_q, "int"))


@pytest.fixture
def explorer(ex):
    """The shared Explorer, reset, INT mode, no follow, no edits."""
    ex.follow = False
    ex.graph.overlay = "type"
    ex.tabs.selected_index = 0                   # the Layer tab: the panel is drawn only while it is shown
    ex.graph.selected_node = ""                  # no pick left by a test: the selection follows the session
    if ex.session.mode != "int":
        ex.controls.mode = "int"
    ex.controls.reset_button.click()
    yield ex
    while ex.session.edits():
        ex.session.undo()


def test_step_moves_position_highlight_and_panel(explorer):
    ex, s = explorer, explorer.session
    assert s.position == -1 and ex.graph.current_node == "input" and ex.controls.position == -1
    ex.controls.step_button.click()
    ex.controls.step_button.click()
    assert s.position == 1 and ex.controls.position == 1
    assert ex.graph.current_node == "1" and ex.graph.selected_node == "1" and ex.panel.node_id == "1"
    assert "current" in ex.graph.nodes["1"].classes.split()
    assert "current" not in ex.graph.nodes["0"].classes.split()
    assert ex.controls.current_label.value == "current: 1 (maxpool, int8)"
    assert ex.status.startswith("layer 1 [maxpool] ran in int8")
    for key in ("input", "output", "float", "int", "heatmap", "hist_output"):   # INT mode: FLOAT vs INT shown
        assert is_png(ex.panel.images[key]), key
    assert "SQNR dB" in ex.panel.stats


def test_cross_shows_the_other_precision_of_the_current_layer(explorer):
    ex = explorer
    for _ in range(3):
        ex.controls.step_button.click()
    ex.controls.cross_button.click()
    c = ex.controls.cross_result
    assert c.index == 2 and c.precision == "int8" and c.other == "float"
    assert ex.status.startswith("CROSS layer 2: ran int8, other float: SQNR")
    assert "int8 vs float" in ex.panel.info and ex.panel.node_id == "2"
    y_float, y_int = c.float_and_int
    assert not np.array_equal(y_float, y_int)
    ex.controls.continue_button.click()                     # the rest of the network from the FLOAT result
    assert ex.controls.continue_result.source == "other" and ex.session.position == 2   # session unchanged
    assert "dog" in ex.detections.names and ex.tabs.selected_index == 2     # Detections tab


def test_apply_edits_int8_weights_reruns_and_undo_restores(explorer):
    ex, s, we = explorer, explorer.session, explorer.weight_editor
    ex.controls.step_button.click()
    ex.graph.selected_node = "4"
    assert we.layer == 4 and we.target == "int8" and len(we.cells) == 9
    old = s.weights(4, "int8")["w_q"][0, 0].copy()
    we.cells[4].value = int(old[1, 1]) + 60 if old[1, 1] < 60 else int(old[1, 1]) - 60
    we.apply_button.click()
    new = s.weights(4, "int8")["w_q"][0, 0]
    assert new[1, 1] == we.cells[4].value and s.position == 4 and ex.controls.position == 4
    assert we.last_diff["layer"] == 4 and we.last_diff["changed"] > 0 and np.isfinite(we.last_diff["sqnr_db"])
    assert is_png(we.heatmap.value) and len(we.edits) == 1 and we.edits == s.edits()
    assert ex.graph.current_node == "4" and ex.panel.node_id == "4"
    we.undo_button.click()
    np.testing.assert_array_equal(s.weights(4, "int8")["w_q"][0, 0], old)
    assert s.edits() == [] and we.edits == [] and we.cells[4].value == int(old[1, 1])
    assert ex.status.startswith("undo: layer 4 int8 w_q")
    we.redo_button.click()
    assert s.weights(4, "int8")["w_q"][0, 0][1, 1] == new[1, 1] and len(s.edits()) == 1


def test_the_panel_is_drawn_only_while_its_tab_is_shown(explorer):
    ex, s = explorer, explorer.session
    ex.controls.step_button.click()
    assert ex.panel.node_id == "0"
    ex.tabs.selected_index = 1                                      # Weights: the panel is hidden
    hist = ex.panel.images["hist_output"]
    ex.controls.step_button.click()
    ex.controls.step_button.click()
    assert s.position == 2 and ex.weight_editor.layer == 2          # the visible tab follows
    assert ex.panel.node_id == "0" and ex.panel.images["hist_output"] == hist     # nothing encoded
    assert "layer 2" in ex.weight_editor._title.value and len(ex.weight_editor.grid.cells) == 9    # shown
    ex.tabs.selected_index = 0
    assert ex.panel.node_id == "2" and "layer 2" in ex.panel.title
    # drawn now, from the same engine numbers as a panel drawn at once
    from qwidgets._session_panel import SessionPanelData
    _, images, rows = SessionPanelData(s).data("2")
    assert ex.panel.images["hist_output"] == images["hist_output"]
    assert ex.panel.stats.count("<tr>") >= len(rows)
    # and the other way round: the hidden Weights tab's grid waits, and is filled when the tab is shown
    ex.graph.selected_node = "4"
    shown = [c.value for c in ex.weight_editor.grid.cells]
    assert ex.weight_editor.layer == 4 and ex.weight_editor._pending_show is not None
    ex.tabs.selected_index = 1
    k = s.weights(4, "int8")["w_q"][0, 0].reshape(-1)
    assert [c.value for c in ex.weight_editor.grid.cells] == k.tolist() != shown
    ex.tabs.selected_index = 0


def test_run_draws_detections_and_reset_goes_back_to_the_input(explorer):
    ex, s = explorer, explorer.session
    ex.controls.run_button.click()
    assert s.done and ex.controls.position == 23 and ex.graph.current_node == "23"
    assert "dog" in ex.detections.names and "dog" in ex.detections.float_names
    assert all(is_png(im.value) for im in ex.detections.images)
    ex.controls.reset_button.click()
    assert s.position == -1 and ex.graph.current_node == "input" and ex.panel.node_id == "input"
    assert ex.detections.names == [] and ex.detections.images[1].value == b""


def test_mode_change_restarts_the_session(explorer):
    ex, s = explorer, explorer.session
    ex.controls.step_button.click()
    rev = ex.controls.revision
    ex.controls.mode = "hybrid"
    assert s.mode == "hybrid" and s.position == -1 and ex.controls.revision == rev + 1
    ex.controls.step_button.click()
    assert ex.controls.current_label.value.startswith("current: 0 (convolutional, ")
    ex.controls.mode = "float"
    ex.controls.step_button.click()
    assert s.mode == "float" and ex.panel.images["int"] == b""       # FLOAT: no INT images
    ex.controls._mode.value = "int"                                         # the dropdown, as a user picks it
    assert s.mode == "int" and ex.controls.mode == "int" and s.position == -1


def test_engine_errors_show_in_the_status_line_and_do_not_raise(explorer):
    ex, s, we = explorer, explorer.session, explorer.weight_editor
    ex.controls.run_to_button.click()                                   # the input node is selected
    assert ex.status.startswith("error: select a layer")
    ex.controls.run_button.click()
    ex.controls.step_button.click()
    assert ex.status == "error: all 24 layers have run; reset() to start again" and s.position == 23
    ex.graph.selected_node = "0"
    we.cells[0].value = 300                                             # outside int8
    we.apply_button.click()
    assert ex.status.startswith("error: layer 0 [convolutional] int8 weights: int8 values must be in [-127, 127]")
    assert s.edits() == []
    we.undo_button.click()
    assert ex.status == "error: nothing to undo"


def test_overlay_colours_executed_layers_by_sqnr(explorer):
    ex = explorer
    for _ in range(3):
        ex.controls.step_button.click()
    ex.graph.overlay = "sqnr"
    assert set(ex.graph.overlay_values) == {"0", "1", "2"}
    assert all(np.isfinite(v) for v in ex.graph.overlay_values.values())
    assert "ov-none" in ex.graph.nodes["5"].classes.split()
    ex.controls.step_button.click()
    assert "3" in ex.graph.overlay_values
    ex.graph.overlay = "saturation"
    assert all(0 <= v <= 1 for v in ex.graph.overlay_values.values())


def test_node_click_selects_and_with_follow_runs_to_it(explorer):
    ex, s = explorer, explorer.session
    click_node(ex, "13")
    assert ex.graph.selected_node == "13" and ex.panel.node_id == "13" and s.position == -1
    assert "not run yet" in ex.panel.info
    ex.follow = True
    click_node(ex, "5")
    assert s.position == 5 and ex.graph.current_node == "5" and ex.panel.node_id == "5"


def test_float_session_refuses_int_mode_in_the_status(tiny):
    ex = Explorer(engine.Session(tiny))
    ex.controls.mode = "int"
    assert ex.status.startswith("error:") and ex.session.mode == "float" and ex.controls.mode == "float"
    ex.controls.step_button.click()
    ex.controls.cross_button.click()
    assert ex.status.startswith("error:") and "quantized model" in ex.status


def test_workspace_entries_open_in_the_explorer(tiny, tiny_q, tmp_path):
    from engine.imaging.samples import sample
    from engine.workspace import Workspace
    from qwidgets import WorkspaceView
    ws = Workspace(tmp_path / "ws")
    tiny_q.save(tmp_path / "q.npz")
    ws.import_path(tmp_path / "q.npz", name="tiny-minmax", kind="quantized")
    ws.import_path(sample("horses"), name="horses", kind="image")
    ex = Explorer(engine.Session(tiny))
    view = WorkspaceView(ws)
    ex.connect_workspace(view)
    assert ("tiny-minmax", str(ws.path_of("tiny-minmax"))) in ex.controls._qm_pick.options
    ex.controls._qm_pick.value = str(ws.path_of("tiny-minmax"))
    ex.controls.load_qm_button.click()
    assert ex.session.qmodel is not None and ex.status.startswith("quantized model")
    ex.controls.mode = "int"
    view.selected = "horses"
    view._open.click()
    assert ex.status == "opened image 'horses' (int)" and ex.session.pre.image_w == 773   # horses.jpg
    assert ex.session.position == -1 and ex.controls.image_name == "horses"


def test_sensitivity_ranks_and_log2_histograms_reach_the_views(explorer):
    ex = explorer
    ex.graph.overlay = "sensitivity_rank"
    assert ex.graph.overlay_values == {}
    ex.quant_view.sensitivity_ranks = {"0": 2.0, "4": 1.0}        # what the sweep button sets
    assert ex.graph.overlay_values == {"0": 2.0, "4": 1.0}
    assert "ov-none" not in ex.graph.nodes["4"].classes.split() and "ov-none" in ex.graph.nodes["2"].classes.split()
    ex.controls.step_button.click()
    before = ex.panel.images["hist_output"]
    ex.panel.hist_log2 = True
    assert is_png(ex.panel.images["hist_output"]) and ex.panel.images["hist_output"] != before
    ex.panel.hist_log2 = False
