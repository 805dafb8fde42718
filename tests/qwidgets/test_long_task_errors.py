"""A bug inside background work (Explain, Images, Mixed precision, Device) is reported as one inside a click
handler is: its class in the status line, its traceback logged and kept in the view's error details (it
used to show only "error: <message>", like a user's mistake, and leave no traceback anywhere)."""
from __future__ import annotations

import logging

import engine
import qwidgets.explain_view as explain_view
from qwidgets.explain_view import ExplainView


class _Buggy:
    def __init__(self, *_args, **_kwargs) -> None:
        pass

    def explain_all(self, _tick):
        return None + 1


def test_a_bug_in_background_work_is_named_logged_and_kept(tiny, tiny_q, monkeypatch, caplog):
    monkeypatch.setattr(explain_view, "Explainer", _Buggy)
    view = ExplainView(engine.Session(tiny, tiny_q, "int"), background=True)
    with caplog.at_level(logging.ERROR, logger="qwidgets"):
        view.explain_button.click()
        view.wait(30)
    assert view.status.startswith("error: TypeError: unsupported operand"), view.status
    assert "Traceback" in view.error_details and "explain_all" in view.error_details
    assert any(r.exc_info and r.exc_info[0] is TypeError for r in caplog.records)
    assert not view.explain_button.disabled


def test_an_expected_refusal_stays_a_plain_message(tiny, tiny_q, monkeypatch):
    class Refusing(_Buggy):
        def explain_all(self, _tick):
            raise engine.EngineError("no detections to explain")
    monkeypatch.setattr(explain_view, "Explainer", Refusing)
    view = ExplainView(engine.Session(tiny, tiny_q, "int"), background=False)
    view.explain_button.click()
    assert view.status == "error: no detections to explain" and view.error_details == ""


def test_the_bar_is_full_when_the_work_is_done_even_without_a_tick(tiny, tiny_q, monkeypatch):
    """Explain with every detection matched has no substitution run to count: it said "explaining: done
    in 13.9 s" beside an empty bar. A cancelled or failed run keeps the bar where it stopped."""
    class Matched(_Buggy):
        def explain_all(self, _tick):
            return [], []
    monkeypatch.setattr(explain_view, "Explainer", Matched)
    view = ExplainView(engine.Session(tiny, tiny_q, "int"), background=False)
    view.explain_button.click()
    assert view.task.text.startswith("explaining: done in")
    assert view.task.progress.value == view.task.progress.max == 1

    class Failing(_Buggy):
        def explain_all(self, _tick):
            raise engine.EngineError("no detections to explain")
    monkeypatch.setattr(explain_view, "Explainer", Failing)
    view.explain_button.click()
    assert view.task.progress.value == 0 and view.status == "error: no detections to explain"
