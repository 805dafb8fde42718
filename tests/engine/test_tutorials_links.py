"""ensure_tutorials never writes through a symlinked subfolder of the user's tutorials folder."""
from __future__ import annotations

import os

from engine.workspace import Workspace, ensure_tutorials


def test_linked_subfolder_is_not_written_through(tmp_path):
    src = tmp_path / "shared-tutorials"
    (src / "data").mkdir(parents=True)
    (src / "01_intro.ipynb").write_text("{}")
    (src / "data" / "x.txt").write_text("tutorial data")
    outside = tmp_path / "outside"
    outside.mkdir()
    ws = Workspace(tmp_path / "ws")
    (ws.root / "tutorials").mkdir()
    os.symlink(outside, ws.root / "tutorials" / "data")
    copied = ensure_tutorials(src, ws)
    assert copied == [ws.root / "tutorials" / "01_intro.ipynb"]
    assert os.listdir(outside) == []


def test_users_own_link_in_place_of_a_tutorial_is_kept(tmp_path):
    src = tmp_path / "shared-tutorials"
    src.mkdir()
    (src / "01_intro.ipynb").write_text("{}")
    ws = Workspace(tmp_path / "ws")
    (ws.root / "tutorials").mkdir()
    os.symlink(tmp_path / "my-notebook-elsewhere.ipynb", ws.root / "tutorials" / "01_intro.ipynb")
    assert ensure_tutorials(src, ws) == []
    assert os.path.islink(ws.root / "tutorials" / "01_intro.ipynb")


def test_a_copy_made_meanwhile_by_another_kernel_and_edited_is_kept(tmp_path, monkeypatch):
    """Two kernels at a new user's first start both copy the tutorials: the one that looked before the other's
    copy existed must not replace it afterwards (by then the user may have opened it and saved edits)."""
    from pathlib import Path
    src = tmp_path / "shared-tutorials"
    src.mkdir()
    (src / "01_intro.ipynb").write_text('{"cells": []}')
    ws = Workspace(tmp_path / "ws")
    mine = ws.root / "tutorials" / "01_intro.ipynb"
    read = Path.read_bytes

    def other_kernel_copies_and_user_edits(self):
        data = read(self)
        if self == src / "01_intro.ipynb":     # after our look, before our write
            mine.write_text('{"cells": ["my edits"]}')
        return data
    monkeypatch.setattr(Path, "read_bytes", other_kernel_copies_and_user_edits)
    assert ensure_tutorials(src, ws) == []
    assert mine.read_text() == '{"cells": ["my edits"]}'
    assert [p.name for p in mine.parent.iterdir()] == ["01_intro.ipynb"]     # no temp file left
