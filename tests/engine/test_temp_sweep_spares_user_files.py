"""The temp-file sweep runs in every folder the engine writes into (a home folder, a CLI -o folder):
it removes only the writer's own temp names, never a user's hidden file that looks like an old one."""
from __future__ import annotations

import os

from engine.atomic import atomic_write, sweep_temp_files, temp_path

DEAD = 99_999_999     # above any pid_max: no such process


def test_users_hidden_files_survive_a_write_into_their_folder(tmp_path):
    mine = [".thesis.20240611.backup.tmp", f".notes.{DEAD}.draft.tmp", f".dataset.tmp{DEAD}",
            f".video.part{DEAD}"]
    for n in mine:
        (tmp_path / n).write_text("precious")
    atomic_write(tmp_path / "model.npz", b"new")
    assert sweep_temp_files(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == sorted(mine + ["model.npz"])


def test_a_dead_writers_temp_file_is_still_reclaimed(tmp_path):
    stale = temp_path(tmp_path / "model.npz")
    stale = stale.with_name(stale.name.replace(f"-{os.getpid()}-", f"-{DEAD}-", 1))
    stale.write_bytes(b"half")
    atomic_write(tmp_path / "model.npz", b"new")
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]
