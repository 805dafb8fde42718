"""Explain reuses the session's outputs: right after a Run it computed the FLOAT forward and the INT run of the
image again (the Explorer's Explain tab, even with every detection matched). Reused only while they describe
the session as it is (no edit, same quantized model, mode and image), and the results are the same bits as
an Explainer that computes its own runs."""
from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.model import Model
from engine.quant.executor import Executor
from engine.quant.explain import Explainer
from engine.session.explaining import session_explainer
from helpers import IMAGES


@pytest.fixture
def forwards(monkeypatch) -> dict[str, int]:
    """Counts the whole-image runs: Executor.run (the INT / HYBRID run) and Model.forward (FLOAT)."""
    counts = {"run": 0, "forward": 0}
    run, forward = Executor.run, Model.forward

    def counted_run(self, *args, **kwargs):
        counts["run"] += 1
        return run(self, *args, **kwargs)

    def counted_forward(self, *args, **kwargs):
        counts["forward"] += 1
        return forward(self, *args, **kwargs)
    monkeypatch.setattr(Executor, "run", counted_run)
    monkeypatch.setattr(Model, "forward", counted_forward)
    return counts


def fresh(s) -> Explainer:
    """An Explainer of the session's current state that computes both runs itself."""
    return Explainer(s.model, s.qmodel, str(s.mode), s.pre, thresh=s.thresh, nms=s.nms,
                     float_layers=sorted(s.float_layers))


def documents(result) -> tuple:
    explanations, extra = result
    return ([(e.to_dict(), e.ranking) for e in explanations], [d.to_dict() for d in extra])


def explained(s, counts) -> tuple:
    """s.explain() as documents, and the whole-image runs it made."""
    counts.update(run=0, forward=0)
    doc = documents(s.explain())
    return doc, dict(counts)


def test_explain_after_a_run_computes_neither_run_again(tiny, tiny_q, forwards):
    s = engine.Session(tiny, tiny_q, "int", image=IMAGES / "dog.jpg")
    s.run()
    s.float_detections()                       # what the Explorer shows after Run
    assert s.detection_diff().counts()["matched"] == 6       # every detection matched: nothing to substitute
    doc, made = explained(s, forwards)
    assert made == {"run": 0, "forward": 0}
    assert doc == documents(fresh(s).explain_all())


def test_reused_outputs_give_the_same_bits(tiny, tiny_kl_pt):
    s = engine.Session(tiny, tiny_kl_pt, "int", image=IMAGES / "horses.jpg")
    s.run()
    reused = Explainer(s.model, s.qmodel, "int", s.pre, thresh=s.thresh, nms=s.nms,
                       run_values=s.kept_run_outputs(), float_outputs=s.kept_float_outputs(compute=True))
    own = fresh(s)
    assert len(reused.values) == len(own.values) == len(tiny.layers)
    for i, (a, b) in enumerate(zip(reused.values, own.values)):
        assert (a.q is None) == (b.q is None), i
        np.testing.assert_array_equal(a.float(), b.float(), err_msg=f"layer {i}")
    result = reused.explain_all()
    assert sum(e.match.status != "matched" for e in result[0]) >= 5        # rankings and fixes to compare
    assert documents(result) == documents(own.explain_all())


def same_runs(a: Explainer, b: Explainer) -> None:
    """The base run and FLOAT detections of two Explainers are the same bits."""
    assert len(a.values) == len(b.values)
    for i, (x, y) in enumerate(zip(a.values, b.values)):
        np.testing.assert_array_equal(x.float(), y.float(), err_msg=f"layer {i}")
    assert [d.to_dict() for d in a.float_dets] == [d.to_dict() for d in b.float_dets]
    assert [d.to_dict() for d in a.dets] == [d.to_dict() for d in b.dets]


def built(s, counts) -> tuple[Explainer, dict[str, int]]:
    """The Explainer of s.explain(), and the whole-image runs building it made."""
    counts.update(run=0, forward=0)
    return session_explainer(s), dict(counts)


@pytest.mark.parametrize("change, remade", [
    ("float edit", {"run": 1, "forward": 1}),
    ("int8 edit", {"run": 1, "forward": 0}),         # the FLOAT model is unchanged: its forward stays current
    ("undo", {"run": 1, "forward": 1}),
    ("quantized model", {"run": 1, "forward": 0}),
    ("image", {"run": 1, "forward": 1}),
    ("mode", {"run": 1, "forward": 0}),
    ("FLOAT layers", {"run": 1, "forward": 0}),
    ("step back", {"run": 1, "forward": 0}),
])
def test_stale_outputs_are_never_reused(tiny, tiny_q, tiny_kl_pt, forwards, change, remade):
    s = engine.Session(tiny, tiny_q, "int", image=IMAGES / "dog.jpg")
    s.run()
    s.float_detections()
    before = session_explainer(s)
    if change == "float edit":
        s.scale_filter(0, 3, 0.25, target="float")
    elif change == "int8 edit":
        s.zero_filter(13, 0, target="int8")
    elif change == "undo":
        s.scale_filter(0, 3, 0.25, target="float")
        s.run()
        s.float_detections()
        s.undo()
    elif change == "quantized model":
        s.set_quantized(tiny_kl_pt)
    elif change == "image":
        s.reset(image=IMAGES / "horses.jpg")
    elif change == "mode":
        s.set_mode("hybrid")
    elif change == "FLOAT layers":
        s.set_mode("int", float_layers=[4])
    else:
        s.run_to(5)
    ex, made = built(s, forwards)
    assert made == remade
    same_runs(ex, fresh(s))
    if change not in ("step back", "undo"):     # the change shows in the run (an undo returns to `before`)
        assert any(not np.array_equal(a.float(), b.float()) for a, b in zip(ex.values, before.values))
    s.run()                                     # current again: reused, and as computed
    again, made = built(s, forwards)
    assert made == {"run": 0, "forward": 0}
    same_runs(again, ex)
