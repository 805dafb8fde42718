"""WeightEditor on a yolov3-tiny Session: kernel grid, Apply + rerun diff, bulk edits, undo / redo, save."""
from __future__ import annotations

import numpy as np
import pytest

import engine
from qwidgets import WeightEditor


@pytest.fixture
def editor(tiny):
    s = engine.Session(tiny)                       # FLOAT: float cfg weights, FloatText grid
    we = WeightEditor(s)
    we.layer = 2
    return we


def test_grid_shows_the_selected_kernel(editor):
    s = editor._session
    w = s.weights(2)["weights"]
    assert editor.target == "float" and w.shape == (32, 16, 3, 3)
    assert editor._filter.max == 31 and editor._channel.max == 15
    editor.filter, editor.channel = 5, 7
    np.testing.assert_array_equal(editor.grid_values(), w[5, 7])
    editor._filter.value = 6                        # the slider drives the trait
    assert editor.filter == 6
    np.testing.assert_array_equal(editor.grid_values(), w[6, 7])


def test_apply_writes_the_grid_and_shows_the_rerun_diff(editor):
    s = editor._session
    editor.filter, editor.channel = 1, 2
    editor.cells[0].value = 2.5
    editor.apply_button.click()
    assert s.model.params[2]["weights"][1, 2, 0, 0] == np.float32(2.5)
    assert s.position == 2 and editor.last_diff["layer"] == 2 and editor.last_diff["changed"] > 0
    assert editor.heatmap.value[:4] == b"\x89PNG" and editor.revision == 1
    assert editor.edits == ["layer 2 float weights: set weights[(1, 2)]"]
    assert "values changed" in editor.status


def test_bulk_edits_undo_and_redo(editor):
    s = editor._session
    w0 = s.weights(2)["weights"]
    editor.filter = 3
    editor._factor.value = 0.5
    editor.scale_button.click()
    np.testing.assert_allclose(s.weights(2)["weights"][3], w0[3] * 0.5, rtol=1e-6)
    editor.zero_button.click()
    assert not s.weights(2)["weights"][3].any()
    editor._prune.value = 50.0
    editor.prune_button.click()
    assert (s.weights(2)["weights"] == 0).mean() >= 0.5 and len(editor.edits) == 3
    for _ in range(3):
        editor.undo_button.click()
    np.testing.assert_array_equal(s.weights(2)["weights"], w0)
    assert editor.edits == [] and editor.last_diff["changed"] > 0
    editor.redo_button.click()
    np.testing.assert_allclose(s.weights(2)["weights"][3], w0[3] * 0.5, rtol=1e-6)


def test_bad_values_and_layers_without_weights_show_errors(editor):
    s = editor._session
    editor.cells[0].value = float("nan")
    editor.apply_button.click()
    assert editor.status.startswith("error:") and s.edits() == []
    editor._factor.value = float("inf")
    editor.scale_button.click()
    assert editor.status.startswith("error: layer 2: scale factor must be finite")
    editor.layer = 1                                # maxpool
    assert editor.apply_button.disabled and "has no weights" in editor._title.value and editor.cells == []


def test_save_as_writes_new_files_and_refuses_overwrite(editor, tmp_path):
    path = tmp_path / "edited.npz"
    editor._path.value = str(path)
    editor.save_model_button.click()
    assert path.is_file() and editor.status.startswith("saved the customized model")
    editor.save_model_button.click()
    assert editor.status.startswith("error:") and "exists" in editor.status
    editor.save_quantized_button.click()            # FLOAT session: no quantized model
    assert editor.status == "error: this session has no quantized model to save"
    editor._path.value = ""
    editor.save_model_button.click()
    assert editor.status.startswith("error: type a path")


def test_typed_values_survive_slider_moves_until_applied_or_discarded(editor):
    s = editor._session
    w = s.weights(2)["weights"]
    editor.filter, editor.channel = 1, 2
    editor.cells[0].value = 2.5
    editor._filter.value = 3                        # the slider: another kernel in the same cells
    np.testing.assert_array_equal(editor.grid_values(), w[3, 2])
    assert editor.grid.unapplied == [(2, "float", 1, 2)]
    assert editor.status == "kept your unapplied values for layer 2 float filter 1 channel 2: go back to it to " \
                            "Apply or Discard"
    editor.cells[1].value = -1.0
    editor._channel.value = 0
    assert editor.grid.unapplied == [(2, "float", 1, 2), (2, "float", 3, 2)]
    editor._filter.value, editor._channel.value = 1, 2
    assert editor.grid_values()[0, 0] == 2.5 and editor.status.startswith("restored your unapplied values")
    editor.apply_button.click()                     # applies this kernel; the other one stays pending
    assert s.model.params[2]["weights"][1, 2, 0, 0] == np.float32(2.5)
    assert editor.grid.unapplied == [(2, "float", 3, 2)] and "filter 3 channel 2" in editor._notes.value
    editor._filter.value = 3
    assert editor.grid_values()[0, 1] == -1.0
    editor.discard_button.click()
    np.testing.assert_array_equal(editor.grid_values(), w[3, 2])
    assert editor.grid.unapplied == [] and editor._notes.value == "" and len(s.edits()) == 1


def test_the_journal_follows_edits_made_from_code(editor):
    s = editor._session
    assert editor.edits == []
    s.edit_weights(2, (1, 2), np.full((3, 3), 0.25))               # from code, the editor open
    assert editor.edits == s.edits() == ["layer 2 float weights: set weights[(1, 2)]"]
    assert "set weights[(1, 2)]" in editor._journal.value
    editor.filter, editor.channel = 1, 2
    np.testing.assert_array_equal(editor.grid_values(), np.full((3, 3), 0.25))   # and the grid the new weights
    s.zero_filter(2, 3)
    assert len(editor.edits) == 2 and editor.edits[-1].startswith("layer 2 float weights: zero filter 3")
    s.undo()
    s.undo()
    assert editor.edits == [] and "edits: none" in editor._journal.value
    s.redo()
    assert editor.edits == s.edits() and len(editor.edits) == 1


def test_the_journal_follows_an_engine_edit_from_code_in_the_explorer(tiny, tiny_q):
    from qwidgets import Explorer
    s = engine.Session(tiny, tiny_q, "int")
    ex = Explorer(s)
    s.run_to(2)
    s.edit_weights(2, 0, np.zeros(s.weights(2, "int8")["w_q"][0].shape), target="int8")
    assert ex.weight_editor.edits == s.edits() and len(s.edits()) == 1


@pytest.fixture
def int_editor(tiny, tiny_q):
    s = engine.Session(tiny, tiny_q, "int")
    we = WeightEditor(s)
    we.layer = 2
    return we


def test_typed_int8_values_are_not_carried_to_another_quantized_model(int_editor, tiny_kl_pt):
    we, s = int_editor, int_editor._session
    assert we.target == "int8"
    we.cells[0].value = 99                                          # typed for tiny_q, kept on leaving
    we.filter = 1
    we.cells[1].value = -99                                         # typed, shown
    assert we.grid.unapplied == [(2, "int8", 0, 0)]
    s.set_quantized(tiny_kl_pt)                                     # another quantized model, from code
    assert we.grid.unapplied == [] and "discarded your unapplied int8 values of 2 kernels" in we.status
    w_q = s.weights(2, "int8")["w_q"]
    np.testing.assert_array_equal(we.grid_values(), w_q[1, 0])      # model B's weights, not the typed ones
    we.filter = 0
    np.testing.assert_array_equal(we.grid_values(), w_q[0, 0])
    we.apply_button.click()                                         # nothing typed: nothing of A reaches B
    np.testing.assert_array_equal(s.weights(2, "int8")["w_q"], w_q)


def test_apply_before_the_switch_is_heard_of_never_writes_the_old_models_values(int_editor, tiny_kl_pt):
    from qwidgets._sync import holding
    we, s = int_editor, int_editor._session
    we.cells[0].value = 99
    with holding(s):                      # another view's handler switches: events reach the editor after it
        s.set_quantized(tiny_kl_pt)
        w_q = s.weights(2, "int8")["w_q"]
        we.apply_button.click()
    assert we.status.startswith("error: the session's model or quantized model changed") and s.edits() == []
    np.testing.assert_array_equal(s.weights(2, "int8")["w_q"], w_q)
    np.testing.assert_array_equal(we.grid_values(), w_q[0, 0])
    assert we.grid.unapplied == []


def test_typed_float_values_stay_through_a_quantized_model_switch(tiny, tiny_q, tiny_kl_pt):
    s = engine.Session(tiny, tiny_q, "float")
    we = WeightEditor(s)
    we.layer = 2
    we.cells[0].value = 2.5
    we.filter = 1
    s.set_quantized(tiny_kl_pt)                                     # the float weights are the same
    assert we.target == "float" and we.grid.unapplied == [(2, "float", 0, 0)]


def test_save_as_says_what_to_type_for_a_folder_or_a_taken_name(editor, tmp_path):
    # QA round 6 (JupyterLab): a folder or a taken file name said "... exists; pass overwrite=True to replace
    # it": no button passes anything, and a folder is not replaced by a file
    editor._path.value = str(tmp_path)
    editor.save_model_button.click()
    assert editor.status == f"error: {tmp_path} is a folder; expected the path of a new file in it " \
                            f"(e.g. {tmp_path / 'model.npz'})", editor.status
    taken = tmp_path / "taken.npz"
    taken.write_bytes(b"the user's own file")
    editor._path.value = str(taken)
    editor.save_model_button.click()
    assert editor.status == f"error: {taken} exists: type a new file name (Save never replaces a file)"
    assert taken.read_bytes() == b"the user's own file"



def test_save_as_refuses_a_file_name_that_is_not_npz(tiny, tiny_q, tmp_path):
    # QA (JupyterLab): Save quantized to saved.txt wrote an .npz archive named saved.txt without a word
    we = WeightEditor(engine.Session(tiny, tiny_q, "int"))
    for button, what in ((we.save_quantized_button, "a quantized model file"),
                         (we.save_model_button, "an engine model file")):
        we._path.value = str(tmp_path / "saved.txt")
        button.click()
        assert we.status == (f"error: {tmp_path / 'saved.txt'}: Save writes {what}, an .npz archive: type a "
                             f"name ending in .npz (e.g. {tmp_path / 'saved.npz'})"), we.status
    we._path.value = str(tmp_path / "saved")
    we.save_quantized_button.click()
    assert we.status.startswith(f"error: {tmp_path / 'saved'}: Save writes a quantized model file")
    assert list(tmp_path.iterdir()) == []
    we._path.value = str(tmp_path / "saved.NPZ")
    we.save_quantized_button.click()
    assert we.status.startswith("saved the quantized model") and (tmp_path / "saved.NPZ").is_file()
