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
from engine.mounts import host_id
from engine.workspace.paths import open_folder


# `h<host>-` first: earlier versions, which read `<pid>-...` and judge the pid on their own host, never match it
_STAGE_RE = re.compile(r"^(?:h([0-9a-f]{8})-)?(\d+)-.*?(?:-s(\d+))?$")


def stage_name(trash: bool = False) -> str:
    """A new staging folder name of this writer: `h<host>-<pid>-[trash-]<random>[-s<start>]` (`host_id`,
    `writer_mark`)."""
    return f"h{host_id()}-{os.getpid()}-{'trash-' if trash else ''}{secrets.token_hex(6)}{writer_mark()}"


def stage_owner(name: str) -> tuple[int, int | None, bool] | None:
    """(pid, start time or None, made on this host) of the writer that named a staging folder (`stage_name`;
    names of earlier versions, `<pid>-[trash-]<random>[-s<start>]`, carry no host and count as this host's,
    as they did); None for any other name. `engine.atomic.abandoned` tells whether that writer is gone."""
    m = _STAGE_RE.match(name)
    if m is None:
        return None
    return int(m.group(2)), int(m.group(3)) if m.group(3) else None, m.group(1) in (None, host_id())


def stage_writer(name: str) -> tuple[int, int | None] | None:
    """(pid, start time or None) of the writer that named a staging folder (`stage_owner` without the host)."""
    owner = stage_owner(name)
    return None if owner is None else owner[:2]


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
        trash = stage_name(trash=True)
        dst = open_folder(root, [staging], "staging folder")
        try:
            os.rename(leaf, trash, src_dir_fd=src, dst_dir_fd=dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return root / staging / trash


def stage_files(staging: Path, files: Mapping[str, bytes]) -> tuple[Path, dict[str, str]]:
    """Write and fsync `files` into a new private folder `<staging>/<stage_name()>`; return it and
    the files' sha256. On any error (disk full, quota, Ctrl-C) the folder is removed before the
    error propagates: the sweep never reclaims it while this (long-lived kernel) process lives."""
    stage = staging / stage_name()
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
