"""A workspace whose kind folder ('records/', 'models/', ...) is a symlink never deletes or moves
anything outside the root through it (reads were already refused)."""
from __future__ import annotations

import os

import pytest

import engine.workspace.store as store
from engine.workspace import Workspace, WorkspaceError


@pytest.fixture
def linked(tmp_path):
    victim = tmp_path / "team-records"
    (victim / "notes").mkdir(parents=True)
    (victim / "notes" / "results.txt").write_text("other people's work")
    ws = Workspace(tmp_path / "ws")
    ws.save_bytes("notes", "record", {"results.txt": b"mine"})
    return ws, victim


def link_records(ws, victim):
    os.rename(ws.root / "records", ws.root.parent / "old-records")
    os.symlink(victim, ws.root / "records")


def test_delete_through_a_linked_kind_folder_is_refused(linked):
    ws, victim = linked
    link_records(ws, victim)
    with pytest.raises(WorkspaceError, match="symlink"):
        ws.delete("notes", confirm=True)
    assert (victim / "notes" / "results.txt").read_text() == "other people's work"


def test_kind_folder_swapped_for_a_link_after_the_check_is_still_refused(linked, monkeypatch):
    ws, victim = linked
    real = store.real_dir

    def real_dir_then_swap(root, rel, *, create=True):
        out = real(root, rel, create=create)
        if rel == "records" and not os.path.islink(root / "records"):
            link_records(ws, victim)      # the swap lands between the check and the use
        return out
    monkeypatch.setattr(store, "real_dir", real_dir_then_swap)
    with pytest.raises(WorkspaceError, match="symlink"):
        ws.delete("notes", confirm=True)
    assert (victim / "notes" / "results.txt").read_text() == "other people's work"
