"""After "Keep ... FLOAT and re-run" the graph's recovery colouring is gone (the explanation is of the earlier
FLOAT layers): its legend says so, instead of "no values yet (click Explain in the Explain tab and pick a
detection)", which the user had just done."""
from __future__ import annotations

import engine
from helpers import IMAGES, explorer_with_a_fix_picked
from qwidgets import Explorer


def test_the_recovery_legend_says_the_session_changed_after_a_fix(tiny, tiny_kl_pt):
    s, ex, view = explorer_with_a_fix_picked(tiny, tiny_kl_pt)
    assert ex.graph.overlay == "recovery" and ex.graph.overlay_values
    assert "to blame" in ex.graph._legend.value
    view.apply_button.click()
    legend = ex.graph._legend.value
    assert ex.graph.overlay == "recovery" and ex.graph.overlay_values == {}
    assert "the session changed since the explanation: click Explain again" in legend
    assert "no values yet" not in legend and "pick a detection" not in legend
    view.explain_button.click()                       # explained again: the standing hint is back for later
    assert view.recoveries_gone == "" and ex.graph.overlay_hints == {}
    ex.close()


def test_the_recovery_legend_keeps_its_standing_hint_before_any_explanation(tiny, tiny_kl_pt):
    s = engine.Session(tiny, tiny_kl_pt, "int", image=IMAGES / "horses.jpg")
    ex = Explorer(s, background=False)
    ex.graph.overlay = "recovery"
    assert "no values yet (click Explain in the Explain tab and pick a detection)" in ex.graph._legend.value
    ex.close()
