"""result_dropped: the one check the Mixed precision and Device tabs make before showing background work's
result (each kept a copy): a result of models the session has since left is dropped with a status line."""
from __future__ import annotations

from types import SimpleNamespace

from qwidgets._long_task import result_dropped

LINE = "result dropped, the session's model or quantized model changed while it ran"


def test_a_result_is_dropped_only_when_the_session_left_its_model_or_quantized_model():
    model, qmodel = object(), object()
    s = SimpleNamespace(model=model, qmodel=qmodel)
    assert result_dropped(s, (model, qmodel), "device comparison", "Compare again") is None
    assert result_dropped(s, None, "device comparison", "Compare again") is None       # nothing to compare with
    s.qmodel = object()                                     # another quantized model adopted meanwhile
    assert result_dropped(s, (model, qmodel), "device comparison", "Compare again") == \
        f"device comparison: {LINE}: Compare again"
    s.model, s.qmodel = object(), qmodel                    # another model opened (same quantized object)
    assert result_dropped(s, (model, qmodel), "mixed-precision search", "Search again") == \
        f"mixed-precision search: {LINE}: Search again"
    s.model, s.qmodel = model, None                         # the quantized model closed
    assert result_dropped(s, (model, qmodel), "x", "y") == f"x: {LINE}: y"
    # an equal but different object is another model: identity, not equality
    twin = SimpleNamespace(model=model, qmodel=type("Q", (), {"__eq__": lambda a, b: True})())
    assert result_dropped(twin, (model, qmodel), "x", "y") == f"x: {LINE}: y"
