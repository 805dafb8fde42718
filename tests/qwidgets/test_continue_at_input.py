"""Continue before any layer has run: a plain refusal in the status line (was IndexError, logged as an
unexpected error with its traceback in the error details)."""
from __future__ import annotations

import pytest

import engine
from qwidgets import Explorer


def test_continue_at_the_input_is_refused_in_words(tiny, tiny_q):
    s = engine.Session(tiny, tiny_q, "int")
    with pytest.raises(engine.EngineError, match="nothing has run yet"):
        s.continue_from("this")
    ex = Explorer(s, background=False)
    ex.controls.continue_button.click()
    assert ex.status.startswith("error: nothing has run yet") and ex.controls.error_details == ""
    assert ex.controls.continue_result is None
    ex.controls.step_button.click()               # still usable
    ex.controls.continue_button.click()
    assert ex.controls.continue_result.index == 0 and ex.controls.continue_result.source == "this"
    ex.close()
