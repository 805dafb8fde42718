"""Copy the tutorial notebooks into a user's workspace on first use (never overwriting their edits)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from engine.atomic import atomic_write
from engine.errors import FileError
from engine.workspace.paths import real_dir
from engine.workspace.store import Workspace
from engine.workspace.uploads import WorkspaceError, check_name, check_size

log = logging.getLogger(__name__)


def ensure_tutorials(src_dir: str | os.PathLike, workspace: Workspace | None = None,
                     subdir: str = "tutorials") -> list[Path]:
    """Copy the tutorial files of `src_dir` into `<workspace>/<subdir>/` if not there yet.

    Meant for first use on a shared hub: the shared copy is read-only, the user's copy is theirs
    (mode 0600) and is never overwritten, so their edits survive later calls. Hidden files and
    checkpoints are skipped. Returns the files copied by this call.
    Raises: WorkspaceError if `src_dir` is not a readable directory.
    """
    src = Path(src_dir)
    if not src.is_dir():
        raise WorkspaceError(f"tutorials source {src}: not a directory")
    ws = workspace or Workspace()
    dest_root = real_dir(ws.root, check_name(subdir, "tutorials folder"))
    copied = []
    for f in sorted(src.rglob("*")):
        rel = f.relative_to(src)
        if any(part.startswith(".") for part in rel.parts) or not f.is_file():
            continue
        folder = dest_root
        try:
            for part in rel.parts[:-1]:   # each subfolder a real folder: never written through a link
                folder = real_dir(folder, part)
        except WorkspaceError as err:
            log.warning("tutorial %s not copied: %s", rel, err)
            continue
        target = folder / rel.name
        if os.path.lexists(target):       # the user's copy, or their own link: never replaced
            continue
        check_size(str(f), f.stat().st_size, ws.limits.record, "tutorial file")
        try:    # exclusive: another kernel's copy made since we looked may hold the user's edits by now
            copied.append(atomic_write(target, f.read_bytes(), mode=0o600, exclusive=True))
        except FileError:
            if not os.path.lexists(target):   # not that race: a real failure (disk full, permissions)
                raise
    return copied
