"""A layer-panel update is one widget message (issue 18, click -> pixels): what the kernel sends, counted at
the comm, and what that message carries (every picture, byte for byte, with its size; the title, tables)."""
from __future__ import annotations

import base64
import io
import re
from collections import Counter

import comm
import numpy as np
import pytest
from PIL import Image
from ipywidgets.widgets.widget import _instances as widget_instances

import engine
from engine.imaging.samples import sample
from qwidgets import Explorer
from qwidgets._panel_data import layer_panel_data
from qwidgets.layer_panel import IMAGE_SLOTS, ROWS, LayerPanel


@pytest.fixture
def sent(monkeypatch):
    """Every comm message the kernel sends from now on: (comm id, msg type, method, state keys, bytes)."""
    log: list[tuple] = []

    def publish(self, msg_type, data=None, metadata=None, buffers=None, **keys):
        data = data or {}
        size = len(str(data)) + sum(len(b) for b in buffers or [])
        log.append((self.comm_id, msg_type, data.get("method"), tuple(sorted(data.get("state", {}))),
                    size, data.get("state", {})))
    monkeypatch.setattr(comm.DummyComm, "publish_msg", publish)
    return log


def panel_messages(log: list[tuple], panel: LayerPanel) -> list[tuple]:
    ids = {w.model_id for w in (panel, panel._content)}
    return [m for m in log if m[0] in ids and m[3] != ("node_id",)]


def test_one_message_carries_the_title_tables_and_every_picture_byte_for_byte(tiny, sent):
    x = tiny.preprocess(sample("dog")).x
    outs = tiny.forward(x)
    int_outs = [np.round(y * 8) / 8 for y in outs]
    info, images, rows = layer_panel_data(tiny, outs, "4", x, int_outs=int_outs)
    panel = LayerPanel()
    sent.clear()
    panel.show(info, images, rows)
    content = [m for m in sent if m[0] == panel._content.model_id]
    assert len(content) == 1 and content[0][1:4] == ("comm_msg", "update", ("value",))
    assert {m[0] for m in sent} <= {panel.model_id, panel._content.model_id}      # nothing else was sent
    value = content[0][5]["value"]
    assert value.startswith("<div class='qw-panel-title'><b>layer 4</b> convolutional</div>")
    assert "<style" not in value            # a style element in an update restyles the whole page
    assert value.count("<tr>") >= len(rows) + 1 and "SQNR dB" in value
    tags = re.findall(r"<img width='(\d+)' height='(\d+)' alt='[^']*' src='data:image/png;base64,([^']+)'>", value)
    order = [k for row in ROWS for k in row]
    assert len(tags) == len(IMAGE_SLOTS)
    for key, (w, h, b64) in zip(order, tags):
        data = base64.b64decode(b64)
        assert data == images[key], key                                   # the very PNG, in display order
        assert Image.open(io.BytesIO(data)).size == (int(w), int(h)), key   # its size, reserved while it decodes
    assert panel.images == images
    # a FLOAT run: the INT slots are left out, no empty <img> (a broken-image icon)
    info, images, rows = layer_panel_data(tiny, outs, "4", x)
    sent.clear()
    panel.show(info, images, rows)
    value = panel._content.value
    assert value.count("<img ") == len(images) == 6 and "qw-pic-int'" not in value
    with pytest.raises(ValueError, match="not a PNG"):
        panel.show(info, {"output": b"GIF89a" + b"\0" * 30}, rows)


def test_a_step_and_a_node_click_send_one_panel_message_and_re_create_no_widget(tiny, tiny_q, sent):
    ex = Explorer(engine.Session(tiny, tiny_q, "int"))
    def kind(model_id: str) -> str:
        return type(widget_instances.get(model_id)).__name__
    per_update = []
    for action in [ex.controls.step_button.click] * 3 + [lambda n=n: setattr(ex.graph, "selected_node", n)
                                                          for n in ("12", "1", "20")]:
        sent.clear()
        action()
        per_update.append(list(sent))
    for log in per_update:
        kinds = Counter(m[1] for m in log)
        assert set(kinds) == {"comm_msg"}, kinds            # no comm_open: every widget is updated in place
        assert len(panel_messages(log, ex.panel)) == 1
        assert "Image" not in {kind(m[0]) for m in log}
        # the rest: the controls, the graph's highlight, the hidden weight editor's enabled state; the Image
        # widget per picture of round 4 made it 23-35 messages
        assert len(log) <= 18, Counter((kind(m[0]), m[3]) for m in log)
    assert ex.panel.node_id == "20" and ex.session.position == 2
