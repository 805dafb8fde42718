"""Explorer: opening another model into its session (a workspace model entry, a typed path, or
`Session.set_model` from code). The graph is rebuilt once per model change and never on a step; the
panel, weight editor, quantization view and caches follow; edits ask for a confirming click."""
from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.workspace import Workspace
from helpers import CFG_DIR, TINY_CFG, TINY_WEIGHTS
from qwidgets import Explorer, WorkspaceView


@pytest.fixture(scope="module")
def v2_npz(tmp_path_factory):
    """yolov2-tiny (16 layers) with random weights, as an engine .npz (how model entries store a model)."""
    path = tmp_path_factory.mktemp("v2") / "yolov2-tiny.npz"
    engine.load(CFG_DIR / "yolov2-tiny.cfg", random_weights=0).save(path)
    return path


@pytest.fixture
def ws(tmp_path, v2_npz):
    """A workspace with yolov3-tiny at 320x320 (cfg + official weights) and yolov2-tiny (.npz)."""
    ws = Workspace(tmp_path / "ws")
    cfg = tmp_path / "yolov3-tiny-320.cfg"
    cfg.write_text(TINY_CFG.read_text().replace("width=416", "width=320").replace("height=416", "height=320"))
    ws.import_path(cfg, weights=TINY_WEIGHTS, name="tiny-320")
    ws.import_path(v2_npz, name="v2-tiny", kind="model")
    return ws


def connected(session, ws) -> tuple[Explorer, WorkspaceView]:
    ex, view = Explorer(session), WorkspaceView(ws)
    ex.connect_workspace(view)
    return ex, view


def open_entry(view: WorkspaceView, name: str) -> None:
    view._list.value = name
    view._open.click()


def test_open_model_entry_with_int8_edits_asks_then_switches_to_the_new_input_size(tiny, tiny_q, ws):
    s = engine.Session(tiny, tiny_q, "int")
    ex, view = connected(s, ws)
    ex.controls.step_button.click()
    s.edit_weights(4, (0, 0), np.ones((3, 3)), target="int8")
    before, cells = s.model, ex.graph.cyto.graph.nodes[:]
    open_entry(view, "tiny-320")
    assert view._open.description == "Confirm: drop 1 edit" and s.model is before
    assert ex.status.startswith("confirm: switching the model drops 1 applied edit.")
    assert ex.graph.generation == 1 and ex.graph.cyto.graph.nodes == cells          # nothing rebuilt yet
    view._open.click()
    assert view._open.description == "Open" and s.edits() == [] and s.x.shape == (3, 320, 320)
    assert ex.status == ("opened model 'tiny-320': yolov3-tiny-320, 24 layers, input 3x320x320, FLOAT mode; "
                         "dropped 1 edit. Load a quantized model made for it for HYBRID / INT")
    assert ex.graph.generation == 2 and ex.graph.graph is s.model.graph
    nodes = ex.graph.cyto.graph.nodes
    assert len(nodes) == 25 and not set(map(id, nodes)) & set(map(id, cells))
    assert all(old.comm is None for old in cells)                  # the old elements' widgets are closed
    assert "out 16x320x320" in ex.graph.nodes["0"].data["tooltip"]
    assert ex.graph.current_node == ex.graph.selected_node == ex.panel.node_id == "input"
    assert ex.controls.mode == ex.controls._mode.value == "float" and ex.controls.position == -1
    assert ex.weight_editor.edits == [] and ex.weight_editor.layer == -1
    for _ in range(2):
        ex.controls.step_button.click()
    assert ex.status.startswith("layer 1 [maxpool] ran in float") and ex.panel.node_id == "1"
    assert "16x160x160" in ex.panel.info and ex.graph.current_node == "1"
    assert ex.graph.generation == 2                                  # steps restyle, never rebuild


def test_open_model_with_another_layer_count_changes_the_graph(tiny, ws):
    s = engine.Session(tiny)
    ex, view = connected(s, ws)
    ex.graph.selected_node = "20"
    ex.graph.overlay_values = {"20": 1.0}
    open_entry(view, "v2-tiny")
    assert ex.status.startswith("opened model 'v2-tiny': yolov2-tiny, 16 layers, input 3x416x416, FLOAT mode")
    assert s.num_layers == 16 and ex.graph.generation == 2 and ex.graph.overlay_values == {}
    assert ex.ids == ex.graph.node_ids == ["input"] + [str(i) for i in range(16)]
    assert len(ex.graph.cyto.graph.nodes) == 17 and "20" not in ex.graph.nodes
    ex.graph.selected_node = "15"                                     # the region layer
    ex.controls.run_to_button.click()
    assert s.position == 15 and ex.graph.current_node == "15" and ex.panel.node_id == "15"
    assert ex.controls.current_label.value == "current: 15 (region, float)"
    ex.graph.selected_node = "2"
    assert ex.weight_editor.layer == 2 and ex.weight_editor._w.shape == (32, 16, 3, 3)


def test_open_model_path_button_takes_a_cfg_with_its_weights_and_reports_bad_paths(tiny, tmp_path):
    s = engine.Session(tiny)
    ex = Explorer(s)
    ex.controls._model_path.value = str(tmp_path / "missing.npz")
    ex.controls.open_model_button.click()
    assert ex.status.startswith("error: ") and "missing.npz" in ex.status and s.model.graph.name == "yolov3-tiny"
    lone = tmp_path / "lone.cfg"
    lone.write_text(TINY_CFG.read_text())
    ex.controls._model_path.value = str(lone)
    ex.controls.open_model_button.click()
    assert ex.status.startswith(f"error: {lone}: a cfg needs its weights") and ex.graph.generation == 1
    s.edit_weights(2, (0, 0), np.zeros((3, 3)))
    ex.controls._model_path.value = str(TINY_CFG)                     # yolov3-tiny.weights beside it
    ex.controls.open_model_button.click()
    assert ex.controls.open_model_button.description == "Confirm: drop 1 edit" and len(s.edits()) == 1
    ex.controls._model_path.value = str(lone)                          # another target: the question is void
    assert ex.controls.open_model_button.description == "Open model"
    ex.controls._model_path.value = str(TINY_CFG)
    ex.controls.open_model_button.click()
    assert ex.controls.open_model_button.description == "Confirm: drop 1 edit"
    ex.controls.open_model_button.click()
    assert ex.status.startswith("opened model 'yolov3-tiny.cfg': yolov3-tiny, 24 layers") and s.edits() == []
    assert ex.controls.open_model_button.description == "Open model" and ex.graph.generation == 2


def test_set_model_from_code_rebuilds_the_views_and_forgets_the_old_models_state(tiny, tiny_q, v2_npz):
    s = engine.Session(tiny, tiny_q, "int")
    ex = Explorer(s)
    ex.controls.step_button.click()
    ex.graph.selected_node = "4"
    ex.weight_editor.cells[0].value = 99                               # typed, not applied
    ex.weight_editor.filter = 1                                        # ... and kept for later
    ex.quant_view.sensitivity_ranks = {"4": 1}
    ex.controls.cross_button.click()
    assert len(ex.weight_editor.grid.unapplied) == 1 and ex.controls.cross_result is not None
    s.set_model(v2_npz)
    assert ex.status == ("session opened another model from code: yolov2-tiny, 16 layers, input 3x416x416, "
                         "FLOAT mode. Load a quantized model made for it for HYBRID / INT")
    assert ex.graph.generation == 2 and len(ex.graph.cyto.graph.nodes) == 17
    assert ex.weight_editor.grid.unapplied == [] and ex.quant_view.sensitivity_ranks == {}
    assert ex.controls.cross_result is None and ex.panel.node_id == "input"
    s.step()                                                           # from code too: follows, no rebuild
    assert ex.graph.current_node == "0" and ex.panel.node_id == "0" and ex.graph.generation == 2
    assert ex.status.startswith("session moved from code: at layer 0")
