"""Saving a customized model with its quantized model into the workspace stores both or neither."""
from __future__ import annotations

import errno

import numpy as np
import pytest

import engine
from engine.calib.collect import collect
from engine.quant.qmodel import quantize_model
from engine.session import Session
from engine.workspace import Workspace
from qwidgets._save_model import save_to_workspace

CFG = """[net]
width=8
height=8
channels=3

[convolutional]
filters=4
size=3
stride=1
pad=1
activation=leaky
"""


def test_failed_quantized_save_removes_the_model_entry(tmp_path, monkeypatch):
    cfg = tmp_path / "t.cfg"
    cfg.write_text(CFG)
    m = engine.load(cfg, random_weights=0)
    x = np.random.default_rng(0).random(m.input_shape, dtype=np.float32)
    s = Session(m, quantize_model(m, collect(m, [x], progress=False), "minmax"), "int", x)
    ws = Workspace(tmp_path / "ws")
    real = Workspace.save_bytes

    def save_bytes(self, name, kind, files, **kw):
        if kind == "quantized":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, kind, files, **kw)
    monkeypatch.setattr(Workspace, "save_bytes", save_bytes)
    with pytest.raises(OSError):
        save_to_workspace(s, ws, "mine")
    assert ws.list() == []
    monkeypatch.undo()
    assert [e.name for e in save_to_workspace(s, ws, "mine")] == ["mine", "mine-int8"]   # the retry works
