"""Symlink-safe access to files inside a workspace root, and checks of what the index says.

A workspace lives on a shared JupyterHub: a symlink placed inside an entry folder (by hand, by an
unpacked archive, by another tool) must never make the engine read, write or export a file
outside the root, and the index is a plain JSON file that may be hand-edited. So every file of an
entry is opened component by component from the root with O_NOFOLLOW (no symlink is followed,
whichever component it is, and no check-then-open race), folders the engine writes into are
checked to be real directories, and names/paths read back from the index are validated like
names typed by a user.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import unicodedata
from pathlib import Path
from typing import Any, Mapping

from engine.workspace.uploads import WorkspaceError, check_name

log = logging.getLogger(__name__)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0)
_FOLDER_RE = re.compile(r"^[^/]+(~[0-9a-f]{6})?$")


def nfc(name: object) -> object:
    """`name` in Unicode NFC if it is a str (the one spelling the index stores), else unchanged."""
    return unicodedata.normalize("NFC", name) if isinstance(name, str) else name


def open_folder(root: Path, parts: list[str], what: str) -> int:
    """An O_DIRECTORY fd of root/parts..., following no symlink below the root (the caller closes it).

    Raises WorkspaceError naming `what` if a component is a symlink or not a folder, FileNotFoundError
    if one is missing."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise WorkspaceError(f"{what}: {part!r} is a symlink or not a folder; workspace "
                                         "entries never follow links out of their folder") from None
                raise
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_file(root: Path, rel_folder: str, fname: str, limit: int, what: str) -> bytes:
    """Bytes of root/rel_folder/fname, refusing symlinks anywhere below the root and non-regular
    files. Raises FileNotFoundError if it is gone (an overwrite replaced the folder), else
    WorkspaceError naming `what`."""
    fd = open_folder(root, rel_folder.split("/"), what)
    try:
        try:
            ffd = os.open(fname, _FILE_FLAGS, dir_fd=fd)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise WorkspaceError(f"{what}: file {fname!r} is a symlink; refused (workspace files are "
                                     "never read through links)") from None
            raise
    finally:
        os.close(fd)
    with os.fdopen(ffd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise WorkspaceError(f"{what}: file {fname!r} is not a regular file; refused")
        if st.st_size > limit:
            raise WorkspaceError(f"{what}: file {fname!r} has {st.st_size} bytes, more than the limit {limit}")
        os.set_blocking(f.fileno(), True)
        return f.read()


def is_plain_file(root: Path, rel_folder: str, fname: str, what: str) -> bool:
    """True if root/rel_folder/fname is a regular file reached through no symlink."""
    try:
        fd = open_folder(root, rel_folder.split("/"), what)
    except FileNotFoundError:
        return False
    try:
        st = os.stat(fname, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)
    if stat.S_ISLNK(st.st_mode):
        raise WorkspaceError(f"{what}: file {fname!r} is a symlink; refused")
    return stat.S_ISREG(st.st_mode)


def real_dir(root: Path, rel: str, *, create: bool = True) -> Path:
    """root/rel as a real folder (created 0700 if absent); a symlink or file there is refused, so
    a save never lands in another workspace through a linked 'models/' or '.qw-staging/'."""
    path = root / rel
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not create:
            return path
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise WorkspaceError(f"workspace {root}: {rel!r} is a symlink or not a folder; refused (move it away)")
    return path


def make_root(root: Path) -> Path:
    """`root` as a workspace root: created 0700 if absent (on a shared server another user's process must not
    read or list it); one others can read is used but warned about (never changed behind the user's back).
    Raises: WorkspaceError if it cannot be created or is no folder."""
    try:
        with contextlib.suppress(FileExistsError):   # the usual case; or another kernel made it since we looked
            root.mkdir(parents=True, mode=0o700)
            os.chmod(root, 0o700)
    except OSError as err:
        raise WorkspaceError(f"workspace root {root}: cannot create it: {err.strerror or err}; set QW_WORKSPACE "
                             "to a folder you can write") from None
    if not root.is_dir():
        raise WorkspaceError(f"workspace root {root}: exists and is not a directory")
    if root.stat().st_mode & 0o077:
        log.warning("workspace root %s is readable by other users (mode %o); chmod 700 it",
                    root, root.stat().st_mode & 0o777)
    return root


def check_entry_record(name: str, d: Any, kinds: Mapping[str, str], index_file: str) -> dict:
    """An index entry as read back from disk, validated like user input: its name and file names are
    safe single components, its kind is known, its folder is `<kind folder>/<name>[~hex]`."""
    where = f"{index_file}: entry {name!r}"
    if not isinstance(d, dict):
        raise WorkspaceError(f"{where}: expected an object, got {type(d).__name__}; fix the index")
    try:
        if check_name(name, "entry name") != name:
            raise WorkspaceError(f"entry name {name!r}: not in Unicode NFC form")
        files = d.get("files")
        if not isinstance(files, (list, tuple)) or not files:
            raise WorkspaceError(f"files {files!r}: expected a non-empty list of file names")
        for f in files:
            if check_name(f, "file name") != f:
                raise WorkspaceError(f"file name {f!r}: not in Unicode NFC form")
    except WorkspaceError as err:
        raise WorkspaceError(f"{where}: {err}; fix or remove the entry in the index") from None
    kind, rel = d.get("kind"), d.get("path")
    if kind not in kinds:
        raise WorkspaceError(f"{where}: kind {kind!r} is not one of {', '.join(kinds)}; fix the index")
    if not (isinstance(rel, str) and rel.count("/") == 1 and rel.split("/")[0] == kinds[kind]
            and _FOLDER_RE.match(rel.split("/")[1]) and not rel.split("/")[1].startswith(".")):
        raise WorkspaceError(f"{where}: index path {rel!r} is outside the workspace folders "
                             f"({kinds[kind]}/<name>); fix the index")
    return d


def tree_has_links(folder: Path) -> bool:
    """True if anything below `folder` (not following links) is a symlink."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for n in dirnames + filenames:
            if os.path.islink(os.path.join(dirpath, n)):
                return True
    return False
