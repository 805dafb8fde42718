"""The Explain tab's fix belongs to the run it explained: after the session moves to another image (a cell,
the Image picker), mode or quantized model, "Keep ... FLOAT and re-run" is refused in words and the graph
loses that run's recovery colours (it used to keep dog.jpg's fix [6] and apply it to horses.jpg)."""
from __future__ import annotations

import engine
from helpers import IMAGES, explorer_with_a_fix_picked
from qwidgets import Explorer


def test_a_fix_of_an_earlier_image_is_not_kept(tiny, tiny_kl_pt):
    s, ex, view = explorer_with_a_fix_picked(tiny, tiny_kl_pt)
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


def test_explain_after_a_run_reuses_the_sessions_runs(tiny, tiny_q, monkeypatch):
    # Explain recomputed the FLOAT forward and the INT run the session holds after a Run (every detection
    # matched on dog.jpg, so that was all its work, ~0.1 s of the click); on another image it runs its own
    from engine.model import Model
    from engine.quant.executor import Executor
    from engine.quant.explain import Explainer
    counts = {"run": 0, "forward": 0}
    run, forward = Executor.run, Model.forward
    monkeypatch.setattr(Executor, "run", lambda self, *a, **k: counts.update(run=counts["run"] + 1) or run(self, *a, **k))
    monkeypatch.setattr(Model, "forward",
                        lambda self, *a, **k: counts.update(forward=counts["forward"] + 1) or forward(self, *a, **k))
    s = engine.Session(tiny, tiny_q, "int", image=IMAGES / "dog.jpg")
    ex = Explorer(s, background=False)
    view = ex.explain_view
    ex.controls.run_button.click()
    counts.update(run=0, forward=0)
    view.explain_button.click()
    assert counts == {"run": 0, "forward": 0} and view.status == "explained: 0 shifted or lost detections (0 lost)"
    assert sorted(e.match.det.name for e in view.explanations) == ["bicycle", "car", "car", "dog", "truck", "truck"]
    s.reset(image=IMAGES / "person.jpg")        # not run on this image: the kept run is gone, computed by Explain
    counts.update(run=0, forward=0)
    view.explain_button.click()
    assert counts["run"] == 1 and counts["forward"] <= 1
    own = Explainer(s.model, s.qmodel, "int", s.pre).explain_all()
    assert [e.to_dict() for e in view.explanations] == [e.to_dict() for e in own[0]]
    assert [d.to_dict() for d in view.extra] == [d.to_dict() for d in own[1]] and len(view.extra) == 1
    ex.close()
