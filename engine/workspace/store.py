"""A per-user workspace of models, quantized models, images, image sets and run records.

Layout under the root (default `$QW_WORKSPACE`, else `~/qwidgets-workspace`, created 0700):

    .qw-index.json      {"format": "qwidgets-workspace", "version": 1, "entries": {name: {...}}}
    .qw-index.lock      fcntl.flock target guarding every read-modify-write of the index
    .qw-staging/        new entries are written here first, one folder per writer (<pid>-<random>)
    models/ quantized/ images/ imagesets/ records/   one folder per entry holding its files
    tutorials/          notebooks copied by `ensure_tutorials` (not indexed)

Crash safety: the index is the single commit point and is replaced atomically (`atomic_write`).
A save writes and fsyncs its files in a private staging folder, renames the folder into place,
then commits the index; a writer killed at any moment leaves the old entry and a valid index
(at worst an unreferenced folder, never a half-written file under an indexed name). Replacing an
entry (overwrite=True) gives the new folder a fresh name and removes the old one only after the
commit. A rename is journaled (`moving_from`) and rolled forward by the next writer if it died.
Nothing is deleted except by `delete(name, confirm=True)` and the replaced folder of an overwrite.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from engine.atomic import atomic_write, file_lock, fsync_dir, pid_alive, sweep_temp_files
from engine.workspace.uploads import (Limits, WorkspaceError, check_name, check_size)
from engine.workspace.entries import KINDS, check_entry_files, group_uploads, read_import

__all__ = ["Entry", "KINDS", "Limits", "Workspace", "WorkspaceError", "atomic_write",
           "default_root", "ensure_tutorials"]

log = logging.getLogger(__name__)
INDEX, LOCK, STAGING = ".qw-index.json", ".qw-index.lock", ".qw-staging"
FORMAT = "qwidgets-workspace"


def default_root() -> Path:
    """`$QW_WORKSPACE` if set, else `~/qwidgets-workspace`."""
    env = os.environ.get("QW_WORKSPACE")
    return Path(env).expanduser() if env else Path.home() / "qwidgets-workspace"


@dataclass(frozen=True)
class Entry:
    """Metadata of one workspace entry, as stored in the index.

    `sha256` is the file's hash for one-file entries; for several files it is the sha256 of the
    `sha256sum`-style manifest (`"<hex>  <file>\\n"` lines sorted by file name). `path` is the
    entry's folder relative to the workspace root.
    """
    name: str
    kind: str
    created: str                       # ISO 8601, UTC
    source: str                        # where it came from: upload file name, import path, parent
    method: str                        # how it was made: upload, import, augment, quantize:<calib>...
    parent: str | None                 # entry it was derived from (customized/quantized models)
    files: tuple[str, ...]
    size: int                          # bytes, all files
    sha256: str
    path: str
    checksums: Mapping[str, str] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["files"], d["checksums"], d["meta"] = list(self.files), dict(self.checksums), dict(self.meta)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Entry":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**{**known, "files": tuple(d.get("files", ()))})


class Workspace:
    """List, add, rename, delete and export entries of one user's workspace folder.

    All mutations hold the index lock, so several kernels of one user can write at once.
    Raises: WorkspaceError (a ValueError) naming the entry/file and what was expected.
    """

    def __init__(self, root: str | os.PathLike | None = None, *, limits: Limits | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.limits = limits or Limits()
        if not self.root.exists():
            # 0700: on a shared server another user's process must not read or list it
            self.root.mkdir(parents=True, mode=0o700)
            os.chmod(self.root, 0o700)
        elif not self.root.is_dir():
            raise WorkspaceError(f"workspace root {self.root}: exists and is not a directory")
        elif self.root.stat().st_mode & 0o077:
            # not changed behind the user's back, but on a shared server this leaks their files
            log.warning("workspace root %s is readable by other users (mode %o); chmod 700 it",
                        self.root, self.root.stat().st_mode & 0o777)

    # ----- reading -------------------------------------------------------------------------
    def list(self, kind: str | None = None) -> list[Entry]:
        """Entries sorted by name, optionally only one kind."""
        if kind is not None and kind not in KINDS:
            raise WorkspaceError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
        entries = (Entry.from_dict(d) for d in self._read_index().values())
        return sorted((e for e in entries if kind in (None, e.kind)), key=lambda e: e.name)

    def info(self, name: str) -> Entry:
        """Metadata of entry `name`."""
        index = self._read_index()
        if name not in index:
            raise WorkspaceError(f"entry {name!r}: not in workspace {self.root} "
                                 f"(entries: {', '.join(sorted(index)[:10]) or 'none'})")
        return Entry.from_dict(index[name])

    def exists(self, name: str) -> bool:
        return name in self._read_index()

    def path_of(self, name: str, file: str | None = None) -> Path:
        """Folder of entry `name`, or one of its files (default: the only file of a one-file entry)."""
        entry = self.info(name)
        folder = self._folder(entry)
        if file is None:
            return folder / entry.files[0] if len(entry.files) == 1 else folder
        if file not in entry.files:
            raise WorkspaceError(f"entry {name!r}: has no file {file!r} (files: {', '.join(entry.files)})")
        return folder / file

    def read_bytes(self, name: str, file: str | None = None) -> bytes:
        path = self.path_of(name, file)
        if path.is_dir():
            raise WorkspaceError(f"entry {name!r}: has {len(self.info(name).files)} files; pass file=")
        return path.read_bytes()

    # ----- adding --------------------------------------------------------------------------
    def save_bytes(self, name: str, kind: str, files: Mapping[str, bytes], *, source: str = "",
                   method: str = "upload", parent: str | None = None,
                   meta: Mapping[str, Any] | None = None, overwrite: bool = False) -> Entry:
        """Validate `files` ({file name: content}) for `kind` and store them as entry `name`.

        Kinds: model (`.cfg` + `.weights`, or one engine `.npz`; `.names` optional), quantized
        (same, plus calibration `.json`/`.txt`), image (one image), imageset (images), record
        (`.json`, `.csv`, `.txt`, `.npz`, images). Content is checked, not just extensions.
        Raises: WorkspaceError for a bad name, kind or content, or if `name` exists and not
        `overwrite`.
        """
        name = check_name(name, "entry name")
        if kind not in KINDS:
            raise WorkspaceError(f"entry {name!r}: kind {kind!r}; expected one of {', '.join(KINDS)}")
        clean = check_entry_files(name, kind, files, self.limits)
        return self._save_checked(name, kind, clean, source=source, method=method, parent=parent,
                                  meta=meta, overwrite=overwrite)

    def add_upload(self, uploads: Mapping[str, bytes], *, name: str | None = None,
                   kind: str | None = None, overwrite: bool = False) -> list[Entry]:
        """Store uploaded files (e.g. from ipywidgets.FileUpload), grouped into entries.

        `.cfg` + `.weights` become one model, each image one `image` entry (or, with
        kind="imageset", one set), each `.zip` one imageset of its image members, `.npz` a
        model, `.json`/`.csv`/`.txt` a record. Everything is validated before anything is saved.
        """
        groups = group_uploads(uploads, kind, self.limits)
        if name is not None:
            if len(groups) != 1:
                raise WorkspaceError(f"name {name!r}: the upload makes {len(groups)} entries "
                                     f"({', '.join(g.name for g in groups)}); a name fits only one")
            groups[0].name = name
        names = [g.name for g in groups]
        for g in groups:
            g.name = check_name(g.name, "entry name")
            if names.count(g.name) > 1:
                raise WorkspaceError(f"upload: several files would become entry {g.name!r}; "
                                     "upload them separately or as one image set")
            g.files = check_entry_files(g.name, g.kind, g.files, self.limits)
            if not overwrite and self.exists(g.name):
                raise WorkspaceError(f"entry {g.name!r}: already exists; pass overwrite=True or rename")
        return [self._save_checked(g.name, g.kind, g.files, source=g.source, method="upload",
                                   overwrite=overwrite) for g in groups]

    def import_path(self, path: str | os.PathLike, *, name: str | None = None, kind: str | None = None,
                    weights: str | os.PathLike | None = None, overwrite: bool = False) -> Entry:
        """Copy a file or folder from the filesystem into the workspace (the original stays).

        A `.cfg` pairs with `weights=` or a sibling `.weights` of the same stem; a folder becomes
        an imageset of its images (or a model if it holds a `.cfg`); a `.zip` an imageset.
        """
        if not str(path).strip():  # Path("") would mean the current directory
            raise WorkspaceError("import: empty path; expected a file or folder")
        g = read_import(Path(path).expanduser(), kind, weights, self.limits)
        return self.save_bytes(name or g.name, g.kind, g.files, source=g.source, method="import",
                               overwrite=overwrite)

    # ----- changing ------------------------------------------------------------------------
    def rename(self, old: str, new: str) -> Entry:
        """Rename entry `old` to `new` (its folder moves too); `new` must not exist."""
        new = check_name(new, "new entry name")
        with self._transaction() as index:
            if old not in index:
                raise WorkspaceError(f"entry {old!r}: not in workspace {self.root}; cannot rename")
            if new in index:
                raise WorkspaceError(f"entry {new!r}: already exists; cannot rename {old!r} to it")
            d = dict(index[old])
            src = d["path"]
            src_folder = self._inside(src)    # refuse a bad index path before changing anything
            d.update(name=new, path=self._free_path(d["kind"], new), moving_from=src)
            del index[old]
            index[new] = d
            self._write_index(index)          # journal first: a crash here is rolled forward
            os.rename(src_folder, self.root / d["path"])
            del d["moving_from"]
            self._write_index(index)
        return Entry.from_dict(d)

    def delete(self, name: str, *, confirm: bool = False) -> Entry:
        """Delete entry `name` and its files. Refused unless `confirm=True` is passed."""
        if confirm is not True:
            raise WorkspaceError(f"entry {name!r}: delete needs confirm=True; nothing was deleted")
        with self._transaction() as index:
            if name not in index:
                raise WorkspaceError(f"entry {name!r}: not in workspace {self.root}; nothing deleted")
            self._inside(index[name]["path"])  # refuse a bad index path before changing anything
            d = index.pop(name)
            self._write_index(index)          # unindex first: a crash leaves files, never a dangling entry
            self._remove_folder(d["path"])
        return Entry.from_dict(d)

    def export(self, name: str, dest: str | os.PathLike | None = None) -> Path:
        """Write `<dest>/<name>.zip` (files + `qwidgets-entry.json` metadata); default dest `<root>/exports`."""
        filename, data = self.export_bytes(name)
        folder = Path(dest).expanduser() if dest is not None else self.root / "exports"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return atomic_write(folder / filename, data)

    def export_bytes(self, name: str) -> tuple[str, bytes]:
        """(`<name>.zip`, zip bytes) of entry `name`, for a download link."""
        import io
        import zipfile
        entry = self.info(name)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in entry.files:
                zf.write(self._folder(entry) / f, f"{name}/{f}")
            zf.writestr(f"{name}/qwidgets-entry.json", json.dumps(entry.to_dict(), indent=1))
        return f"{name}.zip", buf.getvalue()

    # ----- internals -----------------------------------------------------------------------
    def _save_checked(self, name: str, kind: str, clean: dict[str, bytes], *, source: str, method: str,
                      parent: str | None = None, meta: Mapping[str, Any] | None = None,
                      overwrite: bool = False) -> Entry:
        """Store files that `check_entry_files` has already accepted."""
        if parent is not None and not self.exists(parent):
            raise WorkspaceError(f"entry {name!r}: parent {parent!r} is not in the workspace")
        if not overwrite and self.exists(name):
            raise WorkspaceError(f"entry {name!r}: already exists; pass overwrite=True or pick another name")
        stage, checksums = self._stage(clean)
        fields = dict(name=name, kind=kind, created=_now(), source=source, method=method, parent=parent,
                      files=tuple(sorted(clean)), size=sum(len(b) for b in clean.values()),
                      sha256=_combined(checksums), checksums=checksums, meta=dict(meta or {}))
        try:
            return self._commit(stage, fields, overwrite)
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)

    def _inside(self, rel: str) -> Path:
        """Root-relative folder path from the index, refused if it leads out of the root.

        The index is a plain file the user (or a bug) can edit: a path such as `../../x` must
        never be read, moved or deleted.
        """
        folder = (self.root / rel).resolve()
        root = self.root.resolve()
        if folder == root or not folder.is_relative_to(root):
            raise WorkspaceError(f"index path {rel!r} is outside the workspace {self.root}; fix {INDEX}")
        return folder

    def _folder(self, entry: Entry) -> Path:
        if not all("/" not in f and f not in ("", ".", "..") for f in entry.files):
            raise WorkspaceError(f"entry {entry.name!r}: file names {entry.files} in {INDEX} are not plain names")
        return self._inside(entry.path)

    def _read_index(self) -> dict[str, dict]:
        try:
            raw = (self.root / INDEX).read_text("utf-8")
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(raw)
            if doc.get("format") != FORMAT or not isinstance(doc.get("entries"), dict):
                raise ValueError(f"expected format {FORMAT!r} with an 'entries' object")
        except (ValueError, AttributeError) as err:
            # never overwrite an index we cannot read: it is the only record of the entries
            raise WorkspaceError(f"{self.root / INDEX}: unreadable workspace index ({err}); "
                                 "fix or move it away") from err
        return doc["entries"]

    def _write_index(self, index: Mapping[str, dict]) -> None:
        doc = {"format": FORMAT, "version": 1, "entries": dict(sorted(index.items()))}
        atomic_write(self.root / INDEX, json.dumps(doc, indent=1, ensure_ascii=False), mode=0o600)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[dict[str, dict]]:
        """Hold the index lock, clean up after killed writers, and yield the index."""
        try:
            with file_lock(self.root / LOCK, timeout=60):
                self._sweep()
                index = self._read_index()
                if self._roll_forward(index):
                    self._write_index(index)
                yield index  # the block writes the index itself, at its commit point
        except TimeoutError as err:
            raise WorkspaceError(f"workspace {self.root}: {err}") from err

    def _roll_forward(self, index: dict[str, dict]) -> bool:
        """Finish renames whose writer died between the journal and the folder move."""
        changed = False
        for d in index.values():
            src = d.pop("moving_from", None)
            changed |= src is not None
            if src and not self._inside(d["path"]).exists() and self._inside(src).exists():
                log.warning("finishing interrupted rename %s -> %s", src, d["path"])
                os.rename(self._inside(src), self._inside(d["path"]))
        return changed

    def _sweep(self) -> None:
        """Remove staging folders and index temp files left by writers that were killed."""
        sweep_temp_files(self.root)
        staging = self.root / STAGING
        for p in staging.glob("*") if staging.exists() else ():
            pid = p.name.split("-", 1)[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)

    def _stage(self, files: Mapping[str, bytes]) -> tuple[Path, dict[str, str]]:
        staging = self.root / STAGING
        staging.mkdir(exist_ok=True, mode=0o700)
        stage = staging / f"{os.getpid()}-{secrets.token_hex(6)}"
        stage.mkdir(mode=0o700)
        checksums = {}
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
        return stage, checksums

    def _commit(self, stage: Path, fields: dict, overwrite: bool) -> Entry:
        with self._transaction() as index:
            old = index.get(fields["name"])
            if old is not None and not overwrite:
                raise WorkspaceError(f"entry {fields['name']!r}: already exists (created meanwhile by "
                                     "another writer); pass overwrite=True or pick another name")
            rel = self._free_path(fields["kind"], fields["name"])
            (self.root / rel).parent.mkdir(exist_ok=True, mode=0o700)
            os.rename(stage, self.root / rel)
            fsync_dir((self.root / rel).parent)
            entry = Entry(path=rel, **fields)
            index[entry.name] = entry.to_dict()
            self._write_index(index)
            if old is not None:
                self._remove_folder(old["path"])
        return entry

    def _free_path(self, kind: str, name: str) -> str:
        rel = f"{KINDS[kind]}/{name}"
        while (self.root / rel).exists():    # a replaced entry or a crash leftover holds the name
            rel = f"{KINDS[kind]}/{name}~{secrets.token_hex(3)}"
        return rel

    def _remove_folder(self, rel: str) -> None:
        folder = self._inside(rel)
        if folder.exists():
            trash = self.root / STAGING / f"{os.getpid()}-trash-{secrets.token_hex(6)}"
            trash.parent.mkdir(exist_ok=True, mode=0o700)
            os.rename(folder, trash)          # atomic; the slow rmtree happens out of sight
            shutil.rmtree(trash, ignore_errors=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _combined(checksums: Mapping[str, str]) -> str:
    if len(checksums) == 1:
        return next(iter(checksums.values()))
    manifest = "".join(f"{h}  {f}\n" for f, h in sorted(checksums.items()))
    return hashlib.sha256(manifest.encode("utf-8")).hexdigest()


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
    dest_root = ws.root / check_name(subdir, "tutorials folder")
    copied = []
    for f in sorted(src.rglob("*")):
        rel = f.relative_to(src)
        if any(part.startswith(".") for part in rel.parts) or not f.is_file():
            continue
        target = dest_root / rel
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        check_size(str(f), f.stat().st_size, ws.limits.record, "tutorial file")
        copied.append(atomic_write(target, f.read_bytes(), mode=0o600))
    return copied
