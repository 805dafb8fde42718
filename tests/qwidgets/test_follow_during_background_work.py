"""The Explorer keeps following the session while Compare or the sensitivity sweep runs in the background:
a Step click (or s.step() in a cell) moves the graph highlight, the selection and the panel at once, not
when the long work is done."""
from __future__ import annotations

import threading

import engine
from qwidgets import Explorer


def test_steps_are_followed_while_a_background_compare_runs(tiny, tiny_q):
    s = engine.Session(tiny, tiny_q, "int")
    ex = Explorer(s, background=True)
    release, started = threading.Event(), threading.Event()

    def slow_compare(*_args, **_kwargs):
        started.set()
        release.wait(60)
        raise engine.EngineError("stopped by the test")
    s.compare_methods = slow_compare
    try:
        ex.quant_view.compare_button.click()
        assert started.wait(30)
        ex.controls.step_button.click()
        assert ex.graph.current_node == "0" and ex.graph.selected_node == "0" and ex.panel.node_id == "0"
        s.step()                                  # from code (no event loop here: followed at once)
        assert ex.controls.position == 1 and ex.graph.current_node == "1" and ex.panel.node_id == "1"
    finally:
        release.set()
        ex.quant_view.wait(30)
    assert ex.quant_view.status == "error: stopped by the test" and not ex.quant_view.compare_button.disabled
    ex.close()
