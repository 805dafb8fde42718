"""Saving a customized model with its quantized model into the workspace stores both or neither."""
from __future__ import annotations

import errno

import pytest

from engine.workspace import Workspace
from helpers import one_conv_session
from qwidgets._save_model import save_to_workspace


def test_failed_quantized_save_removes_the_model_entry(tmp_path, monkeypatch):
    s = one_conv_session(tmp_path, "int")
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
