"""Explorer + workspace: switching quantized models with int8 edits (two clicks), image sets, and saving
the customized model into the workspace with its lineage (model entries: test_explorer_model.py)."""
from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.quant.qmodel import QuantizedModel
from engine.imaging.samples import sample
from engine.workspace import Workspace
from helpers import IMAGES, TINY_CFG, TINY_WEIGHTS
from qwidgets import Explorer, WorkspaceView


@pytest.fixture
def ws(tmp_path, tiny_q):
    ws = Workspace(tmp_path / "ws")
    tiny_q.save(tmp_path / "q.npz")
    ws.import_path(tmp_path / "q.npz", name="tiny-minmax", kind="quantized")
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("dog", "horses"):
        (folder / f"{name}.jpg").write_bytes(sample(name).read_bytes())
    ws.import_path(folder, name="photos")
    return ws


def connected(session, ws) -> tuple[Explorer, WorkspaceView]:
    ex, view = Explorer(session), WorkspaceView(ws)
    ex.connect_workspace(view)
    return ex, view


def test_load_with_int8_edits_asks_for_a_second_click(tiny, tiny_q, ws):
    s = engine.Session(tiny, tiny_q, "int")
    ex, _ = connected(s, ws)
    s.edit_weights(4, (0, 0), np.ones((3, 3)), target="int8")
    before = s.qmodel
    ex.controls._qm_pick.value = str(ws.path_of("tiny-minmax"))
    ex.controls.load_qm_button.click()
    assert ex.status.startswith("confirm: switching the quantized model drops 1 applied int8/scale edit") and s.qmodel is before
    assert ex.controls.load_qm_button.description == "Confirm: drop 1 edit"
    ex.controls.load_qm_button.click()
    assert s.qmodel is not before and s.edits() == [] and ex.controls.load_qm_button.description == "Load"
    assert ex.status == "quantized model q.npz loaded (int); dropped 1 int8/scale edit (float edits kept)"


def test_open_quantized_with_int8_edits_relabels_the_open_button(tiny, tiny_q, ws):
    s = engine.Session(tiny, tiny_q, "int")
    ex, view = connected(s, ws)
    s.edit_weights(4, (0, 0), np.ones((3, 3)), target="int8")
    view._list.value = "tiny-minmax"
    view._open.click()
    assert view._open.description == "Confirm: drop 1 edit" and ex.status.startswith("confirm: switching the quantized model drops 1 applied int8/scale edit")
    view._list.value = "photos"
    view._list.value = "tiny-minmax"                      # selected again: the confirmation was forgotten
    view._open.click()
    assert view._open.description == "Confirm: drop 1 edit" and len(s.edits()) == 1
    s.edit_weights(4, (1, 0), np.ones((3, 3)), target="int8")
    view._open.click()                                    # one more edit since the question: asked again
    assert view._open.description == "Confirm: drop 2 edits" and len(s.edits()) == 2
    view._open.click()
    assert view._open.description == "Open" and s.edits() == []
    assert ex.status.startswith("opened quantized 'tiny-minmax' (int); dropped 2 int8/scale edits")


def test_open_image_set_offers_its_images(tiny, tiny_q, ws):
    s = engine.Session(tiny, tiny_q, "int")
    ex, view = connected(s, ws)
    s.step()
    view._list.value = "photos"
    view._open.click()
    assert ("photos/horses.jpg", str(ws.path_of("photos") / "horses.jpg")) in ex.controls._image_pick.options
    assert ex.controls._image_pick.value.endswith("dog.jpg") and s.position == 0     # offered, not run
    assert ex.status.startswith("image set 'photos': 2 images added to the Image picker")
    ex.controls._image_pick.value = str(ws.path_of("photos") / "horses.jpg")
    ex.controls.load_image_button.click()
    assert s.pre.image_w == 773 and ex.controls.image_name == "horses.jpg"


def test_save_into_the_workspace_keeps_lineage_and_reloads_bit_for_bit(tiny_q, ws):
    ws.import_path(TINY_CFG, weights=TINY_WEIGHTS, name="tiny")
    model = engine.load(ws.path_of("tiny", "yolov3-tiny.cfg"), weights=ws.path_of("tiny", "yolov3-tiny.weights"))
    s = engine.Session(model, tiny_q, "int")
    ex, _ = connected(s, ws)
    we = ex.weight_editor
    s.edit_weights(2, (0, 0), np.full((3, 3), 0.5), target="float")
    s.run_to(4)
    we.cells[4].value = 100
    we.apply_button.click()
    we._path.value = "tiny-edited"
    we.save_model_button.click()
    assert ex.status == ("saved into the workspace: model 'tiny-edited' (parent 'tiny'), "
                         "quantized 'tiny-edited-int8' (parent 'tiny-edited')")
    meta = ws.info("tiny-edited-int8").meta
    assert len(meta["edits"]) == 2 and ws.info("tiny-edited").method == "customize"
    reloaded = engine.Session(engine.load(ws.path_of("tiny-edited")),
                              QuantizedModel.load(ws.path_of("tiny-edited-int8")), "int")
    for session in (reloaded, s):
        session.run()
    for i in range(s.num_layers):
        assert np.array_equal(reloaded.output(i), s.output(i)), f"layer {i}"
    assert all(np.array_equal(a, b) for a, b in zip(reloaded.float_reference(), s.float_reference()))
    we.save_model_button.click()                          # never half a pair, never over an entry
    assert ex.status == "error: workspace entry 'tiny-edited' exists; pick another name"


def test_a_model_saved_into_the_workspace_is_offered_at_once(tiny, tiny_q, ws):
    """qa4: after Save model / Save quantized into the workspace, the Quantized picker and the connected
    workspace view did not list the new entries (until a Compare, or a kind filter change, re-listed them)."""
    s = engine.Session(tiny, tiny_q, "int")
    ex, view = connected(s, ws)
    we = ex.weight_editor
    assert [label for label, _ in ex.controls._qm_pick.options] == ["tiny-minmax", "(path below)"]
    we._path.value = "mine"
    we.save_quantized_button.click()
    assert ex.status.startswith("saved into the workspace: quantized 'mine'")
    assert [label for label, _ in ex.controls._qm_pick.options] == ["mine", "tiny-minmax", "(path below)"]
    assert "mine" in view.entries
    ex.controls._qm_pick.value = str(ws.path_of("mine"))
    ex.controls.load_qm_button.click()
    assert "loaded" in ex.status and s.qmodel is not tiny_q
    we.save_quantized_button.click()                       # refused: nothing new to list
    assert ex.status == "error: workspace entry 'mine' exists; pick another name"
    assert [label for label, _ in ex.controls._qm_pick.options] == ["mine", "tiny-minmax", "(path below)"]


def test_an_opened_image_stays_open_and_shown_through_an_image_set_and_a_quantized_model(tiny, tiny_q, ws):
    # QA round 6 (tutorial 05 in JupyterLab): Open 'scream', Open an image set, Open a quantized model: the
    # picker still said 'dog' after the first Open; once it showed the opened image, the image set's new
    # options moved its value to the first option, which opened dog.jpg behind the user's back
    ws.import_path(IMAGES / "scream.jpg", name="scream")
    s = engine.Session(tiny, tiny_q, "int")
    ex, _ = connected(s, ws)
    pick = ex.controls._image_pick
    ex.controls.open_entry(ws.info("scream"))
    assert s.image_name == "scream.jpg" and pick.value == str(ws.path_of("scream"))
    assert pick.label == "scream/scream.jpg"
    ex.controls.open_entry(ws.info("photos"))
    assert s.image_name == "scream.jpg" and pick.value == str(ws.path_of("scream")), (s.image_name, pick.value)
    assert ex.status.startswith("image set 'photos': 2 images added")
    ex.controls.open_entry(ws.info("tiny-minmax"))
    assert s.image_name == "scream.jpg" and pick.value == str(ws.path_of("scream"))
    assert ex.status.startswith("opened quantized 'tiny-minmax'")
    pick.value = str(ws.path_of("photos") / "horses.jpg")           # picking an offered image opens it
    assert s.image_name == "horses.jpg" and s.position == -1
