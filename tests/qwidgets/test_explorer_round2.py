"""Explorer round 2 (issue 18): items found in the browser, reproduced headlessly with the widgets' own
clicks. Each test fails on the code before the fix."""
from __future__ import annotations

import engine
from helpers import IMAGES
from qwidgets import Explorer


def test_run_after_cross_continue_shows_the_sessions_own_detections(tiny, tiny_q):
    """Item 1: node 12 -> Run to selected -> CROSS -> Continue -> Run left the CROSS continuation shown."""
    s = engine.Session(tiny, tiny_q, "int")
    ex = Explorer(s)
    c = ex.controls
    ex.graph.selected_node = "12"
    c.run_to_button.click()
    c.cross_button.click()
    c.continue_button.click()
    assert "continued from layer 12" in ex.detections._captions[1].value
    c.run_button.click()
    caption = ex.detections._captions[1].value
    assert "continued" not in caption and "CROSS" not in caption
    assert ex.detections.names == [d.name for d in s.detections()]


def test_step_keeps_the_layer_the_user_picked(tiny, tiny_q):
    """Item 3: click node 12 -> Step x3 -> Run to selected stopped at layer 3."""
    s = engine.Session(tiny, tiny_q, "int")
    ex = Explorer(s)
    ex.graph.selected_node = "12"
    for _ in range(3):
        ex.controls.step_button.click()
    assert s.position == 2 and ex.graph.current_node == "2" and ex.graph.selected_node == "12"
    ex.controls.run_to_button.click()
    assert s.position == 12
    # with nothing picked the selection still follows the session
    ex.controls.reset_button.click()
    ex.graph.selected_node = ""
    ex.controls.step_button.click()
    assert ex.graph.selected_node == "0" and ex.panel.node_id == "0"
    ex.controls.step_button.click()
    assert ex.graph.selected_node == "1"


def test_picking_or_typing_an_image_opens_it(tiny, tiny_q):
    """Item 2: a pick did nothing until 'Use image'; a typed path was ignored unless the picker was on it."""
    s = engine.Session(tiny, tiny_q, "int")
    ex = Explorer(s)
    c = ex.controls
    horses = str(IMAGES / "horses.jpg")
    person = str(IMAGES / "person.jpg")
    c._image_pick.value = next(v for _, v in c._image_pick.options if v.endswith("horses.jpg"))
    assert s.image_name == "horses.jpg" and "horses.jpg" in c.status
    c._image_path.value = person                         # Enter in the path box, picker still on horses
    assert s.image_name == "person.jpg" and c._image_pick.value == "(path below)"
    s.run()
    before = len(s.detections())
    c._image_pick.value = next(v for _, v in c._image_pick.options if v.endswith("horses.jpg"))
    assert s.image_name == "horses.jpg" and s.position == -1
    assert horses.endswith(s.image_name) and before >= 1
