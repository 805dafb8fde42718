"""A workspace save that fails while writing its files (disk full, quota, Ctrl-C) removes its staging
folder at once: in a long-lived kernel the sweep (dead pids only) would never reclaim it."""
from __future__ import annotations

import errno
import os

import pytest

import engine.workspace.folders as folders
from engine.workspace import Workspace, WorkspaceError


@pytest.mark.parametrize("error, raised", [(OSError(errno.ENOSPC, "No space left on device"), WorkspaceError),
                                           (KeyboardInterrupt(), KeyboardInterrupt)])
def test_failed_save_leaves_old_entry_and_no_staging_folder(tmp_path, monkeypatch, error, raised):
    ws = Workspace(tmp_path / "ws")
    ws.save_bytes("log", "record", {"run.txt": b"old\n"})

    def fsync(fd):
        raise error
    monkeypatch.setattr(folders.os, "fsync", fsync)
    for _ in range(3):
        with pytest.raises(raised):
            ws.save_bytes("log", "record", {"run.txt": b"x" * (3 << 20)}, overwrite=True)
    monkeypatch.undo()
    assert ws.read_bytes("log") == b"old\n"
    assert os.listdir(ws.root / ".qw-staging") == []
    Workspace(ws.root)          # reopening in the same process changes nothing either
    assert os.listdir(ws.root / ".qw-staging") == []
