"""Explorer follows its Session whoever drives it (clicks or code), shows stale outputs and any error."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

import engine
from qwidgets import Explorer


@pytest.fixture(scope="module")
def ex(tiny, tiny_q):
    return Explorer(engine.Session(tiny, tiny_q, "int"))


@pytest.fixture
def explorer(ex):
    """The shared Explorer, reset, nothing selected (so Step selects what it runs), no edits, no typed values."""
    ex.controls.reset_button.click()
    ex.graph.selected_node = ""
    ex.weight_editor.grid.discard_all(ex.weight_editor.target)
    yield ex
    while ex.session.edits():
        ex.session.undo()
    ex.weight_editor.grid.discard_all(ex.weight_editor.target)


def count_panel_shows(ex, monkeypatch) -> list:
    calls = []
    show = ex.panel.show
    monkeypatch.setattr(ex.panel, "show", lambda *a, **k: (calls.append(a[0].get("id")), show(*a, **k)))
    return calls


def view_state(ex) -> tuple:
    return (ex.controls.position, ex.controls.current_label.value, ex.graph.current_node, ex.graph.selected_node,
            ex.panel.node_id, ex.weight_editor.layer)


def test_code_driven_step_updates_views_like_a_click(explorer):
    ex, s = explorer, explorer.session
    ex.controls.step_button.click()
    ex.controls.step_button.click()
    clicked = view_state(ex)
    ex.controls.reset_button.click()
    s.step()
    s.step()
    assert view_state(ex) == clicked == (1, "current: 1 (maxpool, int8)", "1", "1", "1", 1)
    assert "current" in ex.graph.nodes["1"].classes.split() and "current" not in ex.graph.nodes["0"].classes.split()
    assert ex.status == "session moved from code: at layer 1 (int)"
    s.run_to(5)
    assert view_state(ex)[:5] == (5, "current: 5 (maxpool, int8)", "5", "5", "5")
    s.reset()
    assert ex.graph.current_node == "input" and ex.panel.node_id == "input" and ex.controls.position == -1
    assert ex.status == "session restarted from code: no layer has run yet (int)"


def test_a_cell_is_from_code_while_a_handler_on_another_thread_holds_the_session(explorer):
    # JupyterLab handles widget messages on a subshell thread while a cell runs on the main one: a hover
    # handler returning meanwhile delivered the cell's step as its own (from_code=False), so the status
    # never said "session moved from code" (the browser test's set_model from a cell, every run)
    import threading
    from qwidgets._sync import holding
    ex, s = explorer, explorer.session
    inside, release = threading.Event(), threading.Event()

    def handler() -> None:
        with holding(s):
            inside.set()
            release.wait(30)
    t = threading.Thread(target=handler)
    t.start()
    assert inside.wait(30)
    try:
        s.step()                                  # the cell, on this thread
        assert ex.status == "session moved from code: at layer 0 (int)" and ex.controls.position == 0
    finally:
        release.set()
        t.join()
    assert ex.status == "session moved from code: at layer 0 (int)"


def test_a_click_redraws_once_and_keeps_its_own_status(explorer, monkeypatch):
    ex = explorer
    calls = count_panel_shows(ex, monkeypatch)
    ex.controls.run_button.click()                     # 24 session steps, one redraw after the handler
    assert calls == ["23"] and ex.status.startswith("ran to the end")
    assert ex.detections.names                         # detections follow the finished run


def test_code_driven_run_in_an_event_loop_redraws_once_when_the_cell_returns(explorer, monkeypatch):
    ex, s = explorer, explorer.session
    calls = count_panel_shows(ex, monkeypatch)

    async def cell() -> tuple:
        s.run_to(6)                                    # a notebook cell runs inside the kernel's loop
        during = (list(calls), ex.controls.position)
        await asyncio.sleep(0)                         # the cell returned: queued callbacks run
        return during
    during = asyncio.run(cell())
    assert during == ([], -1)
    assert calls == ["6"] and ex.controls.position == 6 and ex.graph.current_node == "6"


def test_rejected_edit_leaves_views_at_the_sessions_real_position(explorer):
    ex, s, we = explorer, explorer.session, explorer.weight_editor
    ex.controls.step_button.click()
    ex.graph.selected_node = "4"
    we.cells[0].value = 300                            # outside int8: the engine refuses the edit
    we.apply_button.click()
    assert ex.status.startswith("error: layer 4 [convolutional] int8 weights") and s.edits() == []
    # the editor ran the session forward to layer 4 first; every view says so
    assert s.position == 4 and ex.controls.position == 4 and ex.graph.current_node == "4"
    assert ex.controls.current_label.value.startswith("current: 4 ")


def test_undo_never_moves_the_session_and_reruns_up_to_the_current_layer(explorer):
    ex, s, we = explorer, explorer.session, explorer.weight_editor
    s.run_to(4)
    ex.graph.selected_node = "4"
    before = s.output(4).copy()
    we.cells[4].value = 100
    we.apply_button.click()
    s.run_to(6)
    we.undo_button.click()
    assert s.position == 6 and ex.controls.position == 6 and ex.graph.current_node == "6"
    assert we.last_diff["layer"] == 6 and "reran layers 4..6" in ex.status
    np.testing.assert_array_equal(s.output(4), before)


def test_code_edit_names_the_stale_outputs_until_rerun(explorer):
    ex, s, we = explorer, explorer.session, explorer.weight_editor
    s.run_to(5)
    w_q = s.weights(2, "int8")["w_q"]
    s.edit_weights(2, (0, 0), np.zeros_like(w_q[0, 0]), target="int8")
    note = "outputs from layer 2 on predate an edit: Rerun or Run"
    assert s.stale_from == 2 and note in ex.status and note in ex.controls.current_label.value
    assert "outputs from layer 2 to 5 predate your edit" in we._notes.value
    ex.graph.selected_node = "3"
    assert "predates an edit" in ex.panel.info
    we.rerun_button.click()
    assert s.stale_from is None and we.last_diff["layer"] == 5 and "reran layers 2..5" in ex.status
    assert "predate" not in ex.controls.current_label.value and we._notes.value == ""


def test_unexpected_errors_show_their_class_and_keep_the_traceback(explorer, monkeypatch):
    ex, s = explorer, explorer.session

    def broken():
        raise IndexError("list index out of range (simulated)")
    monkeypatch.setattr(s, "step", broken)
    ex.controls.step_button.click()                    # no exception reaches the caller
    assert ex.status == "error: IndexError: list index out of range (simulated)"
    details = ex.controls.error_details
    assert "Traceback" in details and "ExplorerControls._on_step_click" in details and "broken" in details
    assert ex.controls._details.layout.display == "flex" and ex.controls._details.selected_index is None


def test_the_same_message_twice_shows_again_in_the_main_status(explorer):
    ex, we = explorer, explorer.weight_editor
    we.undo_button.click()
    assert ex.status == we.status == "error: nothing to undo"
    ex.controls.step_button.click()
    assert ex.status.startswith("layer 0 ") and we.status == "error: nothing to undo"
    we.undo_button.click()                             # the editor's status does not change: same text
    assert ex.status == "error: nothing to undo"


def test_typed_values_survive_a_step_and_come_back(explorer):
    ex, s, we = explorer, explorer.session, explorer.weight_editor
    ex.controls.step_button.click()                    # layer 0 selected: its int8 grid
    old = we.kernel().copy()
    we.cells[0].value = int(old[0, 0]) + 1
    ex.controls.step_button.click()                    # the panel and the editor follow to layer 1
    assert we.layer == 1 and we.grid.unapplied == [(0, "int8", 0, 0)]
    assert "unapplied typed values: layer 0 int8 filter 0 channel 0" in we._notes.value
    ex.graph.selected_node = "0"
    assert we.cells[0].value == int(old[0, 0]) + 1 and ex.status.startswith("restored your unapplied values")
    assert s.edits() == []
