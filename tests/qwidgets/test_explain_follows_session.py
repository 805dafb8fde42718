"""The Explain tab's fix belongs to the run it explained: after the session moves to another image (a cell,
the Image picker), mode or quantized model, "Keep ... FLOAT and re-run" is refused in words and the graph
loses that run's recovery colours (it used to keep dog.jpg's fix [6] and apply it to horses.jpg)."""
from __future__ import annotations

import engine
from helpers import IMAGES
from qwidgets import Explorer


def test_a_fix_of_an_earlier_image_is_not_kept(tiny, tiny_kl_pt):
    s = engine.Session(tiny, tiny_kl_pt, "int", image=IMAGES / "horses.jpg")
    ex = Explorer(s, background=False)
    view = ex.explain_view
    view.explain_button.click()
    fixable = [k for k, e in enumerate(view.explanations) if e.fix]
    assert fixable
    view.pick.value = fixable[0]
    assert not view.apply_button.disabled and ex.graph.overlay == "recovery" and ex.graph.overlay_values
    s.reset(image=IMAGES / "dog.jpg")                 # from code
    assert view.apply_button.disabled and ex.graph.overlay_values == {}
    view.apply_button.click()                         # a click from code on the disabled button
    assert view.status.startswith("error: the explanation is of an earlier run") and s.float_layers == set()
    view.explain_button.click()                       # explained again: current, its own fix is kept
    fixable = [k for k, e in enumerate(view.explanations) if e.fix]
    if fixable:
        view.pick.value = fixable[0]
        view.apply_button.click()
        assert set(view.explanations[fixable[0]].fix) <= s.float_layers and s.done
    ex.controls.mode = "float"                        # another mode: stale again
    assert view.apply_button.disabled
    ex.close()
