"""A per-user workspace of models, quantized models, images, image sets and run records.

Layout under the root (default `$QW_WORKSPACE`, else `~/qwidgets-workspace`, created 0700):

    .qw-index.json      {"format": "qwidgets-workspace", "version": 1, "entries": {name: {...}}}
    .qw-index.lock      fcntl.flock target guarding every read-modify-write of the index
    .qw-staging/        new entries are written here first, one folder per writer (h<host>-<pid>-<random>-s<start>)
    models/ quantized/ images/ imagesets/ records/   one folder per entry holding its files
    tutorials/          notebooks copied by `ensure_tutorials` (not indexed)

Crash safety: the index is the single commit point and is replaced atomically (`atomic_write`).
A save writes and fsyncs its files in a private staging folder, renames the folder into place,
then commits the index; a writer killed at any moment leaves the old entry and a valid index
(at worst an unreferenced folder, never a half-written file under an indexed name). Replacing an
entry (overwrite=True) gives the new folder a fresh name and removes the old one only after the
commit. A rename is journaled (`moving_from`) and rolled forward by the next writer if it died.
Nothing is deleted except by `delete(name, confirm=True)` and the replaced folder of an overwrite.
An overwrite is journaled too (`pending` in the index: new and old folder): whichever folder the
index does not reference when the next writer (or `Workspace()`) finds the journal is removed, so
a killed overwrite never leaves an orphaned entry folder. Temp files and staging folders of dead
writers are reclaimed on open and by every transaction.

Isolation (engine.workspace.paths): entry files are read with O_NOFOLLOW at every component, folders
written into must be real directories, names and paths read back from the index are validated like
user input. Names are NFC-normalised at every public method; names that differ only by
normalisation are refused, never merged. See docs/reliability.md.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Iterator, Mapping

from engine.atomic import abandoned, atomic_write, file_lock, fsync_dir, sweep_temp_files
from engine.errors import FileError
from engine.workspace.uploads import Limits, WorkspaceError, check_name
from engine.workspace.entries import KINDS, METADATA_NAME, Entry, check_entry_files, group_uploads, read_import
from engine.workspace.folders import combined, move_out, now, rmtree, stage_files, stage_owner
from engine.workspace.paths import (check_entry_record, is_plain_file, make_root, nfc, read_file, real_dir,
                                    tree_has_links)

__all__ = ["Entry", "KINDS", "Limits", "Workspace", "WorkspaceError", "atomic_write", "default_root"]

log = logging.getLogger(__name__)
INDEX, LOCK, STAGING = ".qw-index.json", ".qw-index.lock", ".qw-staging"
FORMAT = "qwidgets-workspace"


def default_root() -> Path:
    """`$QW_WORKSPACE` if set, else `~/qwidgets-workspace`."""
    env = os.environ.get("QW_WORKSPACE")
    return Path(env).expanduser() if env else Path.home() / "qwidgets-workspace"


class Workspace:
    """List, add, rename, delete and export entries of one user's workspace folder.

    All mutations hold the index lock, so several kernels of one user can write at once.
    Raises: WorkspaceError (a ValueError) naming the entry/file and what was expected.
    """

    def __init__(self, root: str | os.PathLike | None = None, *, limits: Limits | None = None) -> None:
        self.root = make_root(Path(root).expanduser() if root is not None else default_root())
        self.limits = limits or Limits()
        self._recover()

    def _recover(self) -> None:
        """Reclaim what killed writers left (temp files, staging folders, a half-done overwrite or
        rename). Best effort: a read-only or broken workspace is reported by the first real call."""
        try:
            self._sweep()
            doc = self._read_doc()
            if doc.get("pending") or any(isinstance(d, dict) and "moving_from" in d
                                         for d in doc["entries"].values()):
                with self._transaction():
                    pass
        except (OSError, WorkspaceError) as err:
            log.warning("workspace %s: recovery skipped: %s", self.root, err)

    # ----- reading -------------------------------------------------------------------------
    def list(self, kind: str | None = None) -> list[Entry]:
        """Entries sorted by name, optionally only one kind."""
        if kind is not None and kind not in KINDS:
            raise WorkspaceError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
        entries = []
        for name, d in self._read_index().items():
            try:
                entries.append(self._entry(name, d))
            except WorkspaceError as err:   # one hand-damaged entry must not hide the others
                log.warning("%s", err)
        return sorted((e for e in entries if kind in (None, e.kind)), key=lambda e: e.name)

    def info(self, name: str) -> Entry:
        """Metadata of entry `name`."""
        name = nfc(name)
        index = self._read_index()
        if name not in index:
            raise WorkspaceError(f"entry {name!r}: not in workspace {self.root} "
                                 f"(entries: {', '.join(sorted(index)[:10]) or 'none'})")
        return self._entry(name, index[name])

    def exists(self, name: str) -> bool:
        return nfc(name) in self._read_index()

    def _entry(self, name: str, d: Any) -> Entry:
        check_entry_record(name, d, KINDS, str(self.root / INDEX))
        return Entry.from_dict({**d, "name": name})

    def path_of(self, name: str, file: str | None = None) -> Path:
        """Folder of entry `name`, or one of its files (default: the only file of a one-file entry)."""
        entry = self.info(name)
        folder = self._folder(entry)
        files = entry.files if file is None and len(entry.files) > 1 else [self._pick(entry, file, folder=True)]
        for f in files:  # a path handed out must not lead through a link out of the root
            if not is_plain_file(self.root, entry.path, f, f"entry {entry.name!r}") and os.path.lexists(folder / f):
                raise WorkspaceError(f"entry {entry.name!r}: file {f!r} is not a regular file")
        if file is None and len(entry.files) > 1:
            if tree_has_links(folder):
                raise WorkspaceError(f"entry {entry.name!r}: its folder holds a symlink; refused")
            return folder
        return folder / files[0]

    def _pick(self, entry: Entry, file: str | None, folder: bool = False) -> str:
        if file is None:
            if len(entry.files) != 1 and not folder:
                raise WorkspaceError(f"entry {entry.name!r}: has {len(entry.files)} files; pass file=")
            return entry.files[0]
        if nfc(file) not in entry.files:
            raise WorkspaceError(f"entry {entry.name!r}: has no file {file!r} (files: {', '.join(entry.files)})")
        return nfc(file)

    def read_bytes(self, name: str, file: str | None = None) -> bytes:
        """One file of entry `name` (symlinks refused). Never a raw FileNotFoundError (see _read_files)."""
        _, files = self._read_files(name, lambda entry: [self._pick(entry, file)])
        return next(iter(files.values()))

    def _read_files(self, name: str, which) -> tuple[Entry, dict[str, bytes]]:
        """Entry `name` and its files `which(entry)`, all of one version: if a concurrent overwrite
        replaced the entry's folder after the index was read, the index is read again."""
        limit = max(self.limits.weights, self.limits.record, self.limits.image, self.limits.cfg)
        for _ in range(8):
            entry = self.info(name)
            files = which(entry)
            self._folder(entry)
            try:
                return entry, {f: read_file(self.root, entry.path, f, limit, f"entry {entry.name!r}") for f in files}
            except FileNotFoundError:
                continue
            except OSError as err:
                raise WorkspaceError(f"entry {entry.name!r}: cannot read its files: {err.strerror or err}") from None
        raise WorkspaceError(f"entry {name!r}: its files were replaced or deleted while reading; try again")

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
        model, quantized model or record by its content (`npz_kind`), `.json`/`.csv`/`.txt` a record.
        Everything is validated before anything is saved.
        """
        groups = group_uploads(uploads, kind, self.limits)
        name = nfc(name)
        if name is not None:
            if len(groups) != 1:
                raise WorkspaceError(f"name {name!r}: the upload makes {len(groups)} entries "
                                     f"({', '.join(g.name for g in groups)}); a name fits only one")
            groups[0].name = name
        for g in groups:
            g.name = check_name(g.name, "entry name")
        names = [g.name for g in groups]
        for g in groups:
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
        new, old = check_name(new, "new entry name"), nfc(old)
        with self._transaction() as index:
            if old not in index:
                raise WorkspaceError(f"entry {old!r}: not in workspace {self.root}; cannot rename")
            if new in index:
                raise WorkspaceError(f"entry {new!r}: already exists; cannot rename {old!r} to it")
            d = dict(self._entry(old, index[old]).to_dict())
            src = d["path"]
            src_folder = self._inside(src)    # refuse a bad index path before changing anything
            d.update(name=new, path=self._free_path(d["kind"], new), moving_from=src)
            del index[old]
            index[new] = d
            self._write_index(index)          # journal first: a crash here is rolled forward
            real_dir(self.root, KINDS[d["kind"]])
            os.rename(src_folder, self.root / d["path"])
            del d["moving_from"]
            self._write_index(index)
        return Entry.from_dict(d)

    def delete(self, name: str, *, confirm: bool = False) -> Entry:
        """Delete entry `name` and its files. Refused unless `confirm=True` is passed."""
        name = nfc(name)
        if confirm is not True:
            raise WorkspaceError(f"entry {name!r}: delete needs confirm=True; nothing was deleted")
        with self._transaction() as index:
            if name not in index:
                raise WorkspaceError(f"entry {name!r}: not in workspace {self.root}; nothing deleted")
            self._entry(name, index[name])    # refuse a bad index record before changing anything
            real_dir(self.root, index[name]["path"].split("/")[0], create=False)   # nor a linked kind folder
            d = index.pop(name)
            self._write_index(index)          # unindex first: a crash leaves files, never a dangling entry
            self._remove_folder(d["path"])
        return Entry.from_dict(d)

    def export(self, name: str, dest: str | os.PathLike | None = None, overwrite: bool | None = None) -> Path:
        """Write `<dest>/<name>.zip` (files + `qwidgets-entry.json` metadata); default dest `<root>/exports`.
        `overwrite` defaults to True there (the workspace's folder: an export replaces the last one), to False in
        a `dest` of the user's, where `<name>.zip` may be the zip the entry was imported from (members dropped)."""
        filename, data = self.export_bytes(name)
        overwrite = dest is None if overwrite is None else overwrite
        if dest is None:
            folder = real_dir(self.root, "exports")
        else:
            folder = Path(dest).expanduser()
            try:
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as err:   # e.g. dest is an existing file or FIFO
                raise WorkspaceError(f"export {name!r}: cannot use {folder} as the destination folder: "
                                     f"{err.strerror or err}") from None
        target = folder / filename
        try:
            return atomic_write(target, data, exclusive=not overwrite)
        except FileError as err:
            if not overwrite and os.path.lexists(target):
                raise WorkspaceError(f"export {name!r}: {target} already exists; pass overwrite=True to replace it "
                                     "or choose another dest") from None
            raise

    def export_bytes(self, name: str) -> tuple[str, bytes]:
        """(`<name>.zip`, zip bytes) of entry `name`, for a download link."""
        import io
        import zipfile
        entry, files = self._read_files(name, lambda e: e.files)
        name = entry.name                      # validated: a plain, NFC, single path component
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for f, data in files.items():
                zf.writestr(f"{name}/{f}", data)
            zf.writestr(f"{name}/{METADATA_NAME}", json.dumps(entry.to_dict(), indent=1))
        return f"{name}.zip", buf.getvalue()

    # ----- internals -----------------------------------------------------------------------
    def _save_checked(self, name: str, kind: str, clean: dict[str, bytes], *, source: str, method: str,
                      parent: str | None = None, meta: Mapping[str, Any] | None = None,
                      overwrite: bool = False) -> Entry:
        """Store files that `check_entry_files` has already accepted."""
        parent = nfc(parent)
        if parent is not None and not self.exists(parent):
            raise WorkspaceError(f"entry {name!r}: parent {parent!r} is not in the workspace")
        if not overwrite and self.exists(name):
            raise WorkspaceError(f"entry {name!r}: already exists; pass overwrite=True or pick another name")
        try:
            stage, checksums = stage_files(real_dir(self.root, STAGING), clean)
        except OSError as err:   # disk full, quota, permissions: a WorkspaceError like every refusal
            raise WorkspaceError(f"entry {name!r}: cannot write its files in {self.root}: {err.strerror or err}") from None
        fields = dict(name=name, kind=kind, created=now(), source=source, method=method, parent=parent,
                      files=tuple(sorted(clean)), size=sum(len(b) for b in clean.values()),
                      sha256=combined(checksums), checksums=checksums, meta=dict(meta or {}))
        try:
            return self._commit(stage, fields, overwrite)
        finally:
            if stage.exists():
                rmtree(stage)

    def _inside(self, rel: object) -> Path:
        """Root-relative entry folder from the index (`<kind folder>/<name>`), refused otherwise.

        The index is a plain file the user (or a bug) can edit: a path such as `../../x` must
        never be read, moved or deleted.
        """
        parts = rel.split("/") if isinstance(rel, str) else []
        if (len(parts) != 2 or parts[0] not in KINDS.values() or parts[1] in ("", ".", "..")
                or parts[1].startswith(".") or "\\" in parts[1] or "\x00" in parts[1]):
            raise WorkspaceError(f"index path {rel!r} is outside the workspace {self.root}; fix {INDEX}")
        return self.root / parts[0] / parts[1]

    def _folder(self, entry: Entry) -> Path:
        folder = self._inside(entry.path)
        if os.path.islink(folder):
            raise WorkspaceError(f"entry {entry.name!r}: its folder {entry.path} is a symlink; refused")
        return folder

    def _read_index(self) -> dict[str, dict]:
        return self._read_doc()["entries"]

    def _read_doc(self) -> dict:
        try:
            with os.fdopen(os.open(self.root / INDEX, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
                raw = f.read()       # never through a link (e.g. to another user's index)
        except FileNotFoundError:
            return {"entries": {}, "pending": []}
        except OSError as err:
            raise WorkspaceError(f"{self.root / INDEX}: cannot read the workspace index: {err.strerror or err}") from None
        try:
            doc = json.loads(raw.decode("utf-8"))
            if doc.get("format") != FORMAT or not isinstance(doc.get("entries"), dict):
                raise ValueError(f"expected format {FORMAT!r} with an 'entries' object")
        except (ValueError, AttributeError, RecursionError) as err:
            # never overwrite an index we cannot read: it is the only record of the entries
            raise WorkspaceError(f"{self.root / INDEX}: unreadable workspace index ({err}); "
                                 "fix or move it away") from err
        if not isinstance(doc.get("pending"), list):
            doc["pending"] = []
        return doc

    def _write_index(self, index: Mapping[str, dict], pending: list | None = None) -> None:
        doc = {"format": FORMAT, "version": 1, "entries": dict(sorted(index.items()))}
        if pending:
            doc["pending"] = pending
        atomic_write(self.root / INDEX, json.dumps(doc, indent=1, ensure_ascii=False), mode=0o600)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[dict[str, dict]]:
        """Hold the index lock, clean up after killed writers, and yield the index."""
        try:
            with file_lock(self.root / LOCK, timeout=60):
                self._sweep()
                doc = self._read_doc()
                index = doc["entries"]
                if self._roll_forward(index) | self._finish_pending(index, doc["pending"]):
                    self._write_index(index)
                yield index  # the block writes the index itself, at its commit point
        except OSError as err:   # lock timeout, a linked lock file, a failed rename: one clear error
            raise WorkspaceError(f"workspace {self.root}: {err}") from err

    def _roll_forward(self, index: dict[str, dict]) -> bool:
        """Finish renames whose writer died between the journal and the folder move."""
        changed = False
        for d in index.values():
            src = d.pop("moving_from", None)
            changed |= src is not None
            if src and not self._inside(d["path"]).exists() and self._inside(src).exists():
                real_dir(self.root, src.split("/")[0], create=False)   # never through a linked 'models/'
                log.warning("finishing interrupted rename %s -> %s", src, d["path"])
                os.rename(self._inside(src), self._inside(d["path"]))
        return changed

    def _finish_pending(self, index: dict[str, dict], pending: list) -> bool:
        """Finish or undo saves whose writer died: remove whichever folder the index does not use."""
        referenced = {d.get("path") for d in index.values() if isinstance(d, dict)}
        for p in pending:
            if not isinstance(p, dict):
                continue
            entry = index.get(p.get("name"))
            committed = isinstance(entry, dict) and entry.get("path") == p.get("new")
            garbage = p.get("old") if committed else p.get("new")
            if isinstance(garbage, str) and garbage not in referenced:
                with contextlib.suppress(WorkspaceError):
                    if os.path.lexists(self._inside(garbage)):
                        log.warning("removing %s left by an interrupted save of %r", garbage, p.get("name"))
                        self._remove_folder(garbage)
        return bool(pending)

    def _sweep(self) -> None:
        """Remove staging folders and temp files left by writers that were killed (on this host no process with
        their pid and start time; another host's after a day: engine.atomic.abandoned)."""
        sweep_temp_files(self.root)
        staging = real_dir(self.root, STAGING, create=False)
        for p in staging.iterdir() if staging.exists() else ():
            owner = stage_owner(p.name)
            with contextlib.suppress(OSError):   # gone meanwhile (another sweeper)
                if owner is not None and abandoned(*owner, p.lstat().st_mtime):
                    rmtree(p)

    def _commit(self, stage: Path, fields: dict, overwrite: bool) -> Entry:
        with self._transaction() as index:
            old = index.get(fields["name"])
            if old is not None and not overwrite:
                raise WorkspaceError(f"entry {fields['name']!r}: already exists (created meanwhile by "
                                     "another writer); pass overwrite=True or pick another name")
            if old is not None:
                self._entry(fields["name"], old)  # a bad index record is never deleted from
            rel = self._free_path(fields["kind"], fields["name"])
            real_dir(self.root, KINDS[fields["kind"]])
            # journal first: if killed below, the next writer removes whichever folder is unused
            journal = [{"name": fields["name"], "new": rel, "old": old["path"] if old else None}]
            self._write_index(index, journal)
            os.rename(stage, self.root / rel)
            fsync_dir((self.root / rel).parent)
            entry = Entry(path=rel, **fields)
            index[entry.name] = entry.to_dict()
            self._write_index(index, journal)  # the commit point
            if old is not None:
                self._remove_folder(old["path"])
            self._write_index(index)
        return entry

    def _free_path(self, kind: str, name: str) -> str:
        rel = f"{KINDS[kind]}/{name}"
        while os.path.lexists(self.root / rel):  # a replaced entry or a crash leftover holds the name
            rel = f"{KINDS[kind]}/{name}~{secrets.token_hex(3)}"
        return rel

    def _remove_folder(self, rel: str) -> None:
        self._inside(rel)
        trash = move_out(self.root, rel, real_dir(self.root, STAGING).name)
        if trash is not None:
            rmtree(trash)                     # the slow part, out of sight


