"""The workspace root is created whoever gets there first, and a root that cannot be created is one clear error.

Workspace() checked `root.exists()` and then made it with mkdir without exist_ok: a second kernel opening the
workspace for the first time between those two calls (two notebooks restored at a new user's first start) failed
with a raw FileExistsError; and a QW_WORKSPACE that cannot be made (below a file, a read-only place) gave a raw
NotADirectoryError / PermissionError instead of a WorkspaceError naming the root."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from engine.workspace import Workspace, WorkspaceError


def test_a_root_another_kernel_creates_after_our_look_is_used(tmp_path, monkeypatch):
    # the other kernel's mkdir lands just before ours, whatever we looked at before: a simulation hooked on
    # Path.exists (the old code's look) passed without simulating anything once the code stopped calling it
    root = tmp_path / "ws"
    made = Path.mkdir

    def mkdir_after_the_other_kernel(self, *args, **kwargs):
        if self == root:
            os.mkdir(root, 0o700)
        return made(self, *args, **kwargs)
    monkeypatch.setattr(Path, "mkdir", mkdir_after_the_other_kernel)
    ws = Workspace(root)
    monkeypatch.undo()
    assert ws.root == root and root.is_dir() and stat.S_IMODE(root.stat().st_mode) == 0o700
    ws.save_bytes("n", "record", {"n.txt": b"mine"})
    assert Workspace(root).read_bytes("n") == b"mine"


def test_a_new_root_is_private_and_one_that_cannot_be_made_is_named(tmp_path):
    root = tmp_path / "a" / "b" / "ws"
    Workspace(root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    (tmp_path / "afile").write_text("keep")
    for bad in (tmp_path / "afile" / "ws", tmp_path / "afile"):
        with pytest.raises(WorkspaceError, match=f"^workspace root {bad}: (cannot create it: |exists and is not)"):
            Workspace(bad)
    assert (tmp_path / "afile").read_text() == "keep"
