"""The weight editor's filter / channel traits take only a kernel of the shown layer (a cell's
`editor.filter = 16` on a 16-filter layer raised IndexError out of the observer and left the editor
out of range; `editor.filter = -1` showed and edited the last filter while the slider showed 0)."""
from __future__ import annotations

import pytest
import traitlets

import engine
from qwidgets.weight_editor import WeightEditor


def test_filter_and_channel_out_of_range_are_refused_and_the_editor_keeps_working(tiny, tiny_q):
    s = engine.Session(tiny, tiny_q, "int")
    we = WeightEditor(s)
    we.layer = 0                                   # 16 x 3 x 3 x 3
    for name, bad in [("filter", 16), ("filter", -1), ("channel", 3), ("channel", -2)]:
        with pytest.raises(traitlets.TraitError, match=f"no such {name}"):
            setattr(we, name, bad)
    assert (we.filter, we.channel) == (0, 0) and (we._filter.value, we._channel.value) == (0, 0)
    we.filter, we.channel = 15, 2
    assert we._filter.value == 15 and we.kernel().tolist() == s.weights(0, "int8")["w_q"][15, 2].tolist()
    we.layer = 2                                   # 32 x 16: the kept indexes fit
    we.channel = 10
    assert (we.filter, we.channel) == (15, 10)
