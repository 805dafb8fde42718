"""Entry folders on disk: staging new files, removing folders safely, checksums and timestamps."""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

from engine.atomic import fsync_dir, writer_mark
from engine.workspace.paths import open_folder


_STAGE_RE = re.compile(r"^(\d+)-.*?(?:-s(\d+))?$")


def stage_writer(name: str) -> tuple[int, int | None] | None:
    """(pid, start time or None) of the writer that named a staging folder: `<pid>-<random>[-s<start>]`
    (`stage_files`) or `<pid>-trash-<random>[-s<start>]` (`move_out`; names of earlier versions have no
    start time); None for any other name. `engine.atomic.writer_alive` tells whether that writer runs."""
    m = _STAGE_RE.match(name)
    return (int(m.group(1)), int(m.group(2)) if m.group(2) else None) if m else None


def move_out(root: Path, rel: str, staging: str) -> Path | None:
    """Rename root/rel (`<kind folder>/<name>`) into root/staging under a trash name; return it, or
    None if absent. Both folders are opened without following links (a linked 'records/' must never
    make a delete reach outside the root) and the rename is relative to them (no check-then-use)."""
    kind_dir, leaf = rel.split("/")
    try:
        src = open_folder(root, [kind_dir], f"workspace folder {kind_dir!r}")
    except FileNotFoundError:
        return None
    try:
        try:
            os.stat(leaf, dir_fd=src, follow_symlinks=False)
        except FileNotFoundError:
            return None
        trash = f"{os.getpid()}-trash-{secrets.token_hex(6)}{writer_mark()}"
        dst = open_folder(root, [staging], "staging folder")
        try:
            os.rename(leaf, trash, src_dir_fd=src, dst_dir_fd=dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return root / staging / trash


def stage_files(staging: Path, files: Mapping[str, bytes]) -> tuple[Path, dict[str, str]]:
    """Write and fsync `files` into a new private folder `<staging>/<pid>-<random>-s<start>`; return it and
    the files' sha256. On any error (disk full, quota, Ctrl-C) the folder is removed before the
    error propagates: the sweep never reclaims it while this (long-lived kernel) process lives."""
    stage = staging / f"{os.getpid()}-{secrets.token_hex(6)}{writer_mark()}"
    stage.mkdir(mode=0o700)
    checksums = {}
    try:
        for fname, data in sorted(files.items()):
            digest = hashlib.sha256()
            with open(stage / fname, "xb") as f:
                view = memoryview(data)
                for i in range(0, len(view), 1 << 20):  # chunks: hashing and writing interleave
                    digest.update(view[i:i + (1 << 20)])
                    f.write(view[i:i + (1 << 20)])
                f.flush()
                os.fsync(f.fileno())
            checksums[fname] = digest.hexdigest()
        fsync_dir(stage)
    except BaseException:
        rmtree(stage)
        raise
    return stage, checksums


def rmtree(path: Path) -> None:
    """Remove a folder tree, or just the link if `path` is a symlink (never what it points to)."""
    if os.path.islink(path) or not os.path.isdir(path):
        with contextlib.suppress(OSError):
            os.unlink(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def combined(checksums: Mapping[str, str]) -> str:
    if len(checksums) == 1:
        return next(iter(checksums.values()))
    manifest = "".join(f"{h}  {f}\n" for f, h in sorted(checksums.items()))
    return hashlib.sha256(manifest.encode("utf-8")).hexdigest()
