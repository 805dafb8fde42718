"""Which files make a valid entry of each workspace kind, and how uploads/imports become entries.

Used by `engine.workspace.store`; content checks live in `engine.workspace.uploads`.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from engine.workspace.uploads import (IMAGE_EXTS, TEXT_EXTS, Limits, WorkspaceError, check_cfg, check_image,
                            check_json, check_name, check_names, check_npz, check_size, check_text, npz_kind,
                            check_weights, extension, read_zip_images)

# kind -> folder under the workspace root
KINDS = {"model": "models", "quantized": "quantized", "image": "images",
         "imageset": "imagesets", "record": "records"}

_MODEL_EXTS = (".cfg", ".weights", ".npz", ".names", ".txt")
ALLOWED = {
    "model": _MODEL_EXTS,
    "quantized": _MODEL_EXTS + (".json", ".table"),   # + calibration tables
    "image": IMAGE_EXTS,
    "imageset": IMAGE_EXTS,
    "record": (".json", ".csv", ".txt", ".log", ".md", ".npz") + IMAGE_EXTS,
}


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


@dataclass
class Group:
    """Files that will become one entry."""
    name: str
    kind: str
    files: dict[str, bytes]
    source: str


def _checker(kind: str, ext: str, limits: Limits) -> Callable[[str, bytes], None]:
    big = limits.record if kind == "record" else limits.weights
    text = limits.record if kind == "record" else limits.cfg
    if ext == ".cfg":
        return lambda label, data: check_cfg(label, data, limits)
    if ext == ".weights":
        return lambda label, data: check_weights(label, data, limits)
    if ext == ".names":      # a model's (or quantized model's) class names: read by the loader's rule
        return lambda label, data: check_names(label, data, limits)
    if ext == ".npz":
        return lambda label, data: check_npz(label, data, limits, big)
    if ext in IMAGE_EXTS:
        return lambda label, data: check_image(label, data, limits)
    if ext == ".json":
        return lambda label, data: check_json(label, data, text)
    return lambda label, data: check_text(label, data, text)  # .names .txt .csv .table ...


METADATA_NAME = "qwidgets-entry.json"   # beside an entry's files in an export zip


def check_entry_files(name: str, kind: str, files: Mapping[str, bytes], limits: Limits) -> dict[str, bytes]:
    """Validate file names, types, sizes, contents and the kind's required files.

    Returns {normalised file name: bytes}. Raises: WorkspaceError naming entry and file.
    """
    if not files:
        raise WorkspaceError(f"entry {name!r}: no files given")
    clean: dict[str, bytes] = {}
    for raw, data in files.items():
        fname = check_name(raw, f"entry {name!r}: file name")
        if fname.casefold() == METADATA_NAME:     # an export would hold two members of that name
            raise WorkspaceError(f"entry {name!r}: file name {fname!r} is reserved for the entry's metadata in "
                                 "exports; rename the file")
        if fname in clean:  # 'café' typed two ways would silently become one file
            raise WorkspaceError(f"entry {name!r}: file names {raw!r} and another one are the same name after "
                                 "Unicode NFC normalisation; rename one")
        ext = extension(fname)
        if ext not in ALLOWED[kind]:
            raise WorkspaceError(f"entry {name!r}: file {fname!r} has type {ext or '(none)'!r}; "
                                 f"a {kind} holds {', '.join(ALLOWED[kind])}")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise WorkspaceError(f"entry {name!r}: file {fname!r}: expected bytes, got {type(data).__name__}")
        data = bytes(data)
        _checker(kind, ext, limits)(f"{name}/{fname}", data)
        clean[fname] = data
    _check_structure(name, kind, clean)
    return clean


def _check_structure(name: str, kind: str, files: Mapping[str, bytes]) -> None:
    count = {}
    for f in files:
        count[extension(f)] = count.get(extension(f), 0) + 1
    if kind in ("model", "quantized"):
        pair = count.get(".cfg") == 1 and count.get(".weights") == 1 and ".npz" not in count
        npz = count.get(".npz") == 1 and ".cfg" not in count and ".weights" not in count
        if not (pair or npz):
            raise WorkspaceError(f"entry {name!r}: a {kind} needs one .cfg with one .weights, or one "
                                 f"engine .npz; got {', '.join(sorted(files))}")
        if pair:
            _check_pair(name, files)
        else:
            _check_engine_npz(name, kind, *next((f, d) for f, d in files.items() if extension(f) == ".npz"))
    elif kind == "image" and len(files) != 1:
        raise WorkspaceError(f"entry {name!r}: an image entry holds exactly one image; got {len(files)} "
                             "files (use kind 'imageset')")


def _check_pair(name: str, files: Mapping[str, bytes]) -> None:
    """The pair loads: the .cfg's layers build, and the .weights holds exactly the floats they need, each finite
    and plausible (the loader's `split_params`): a download cut short, the weights of another cfg or a damaged
    file is refused at upload rather than when the entry is first opened."""
    import numpy as np

    from engine.darknet.build import build_layers
    from engine.darknet.cfg import cfg_from_bytes
    from engine.darknet.weights import body_floats, expected_floats, read_header, split_params
    from engine.errors import EngineError
    cfg_name = next(f for f in files if extension(f) == ".cfg")
    w_name = next(f for f in files if extension(f) == ".weights")
    data = files[w_name]
    try:
        layers = build_layers(cfg_from_bytes(files[cfg_name], Path(cfg_name)))
        header = read_header(data[:20], w_name)      # as the loader: not a lowercased copy of 500 MB
        need, found = expected_floats(layers), body_floats(header, len(data), w_name)
    except EngineError as err:
        raise WorkspaceError(f"entry {name!r}: {err}") from None
    if found != need:
        raise WorkspaceError(f"entry {name!r}: {w_name} holds {found:,} floats, {cfg_name} needs {need:,} "
                             f"({'cut short: an interrupted download?' if found < need else 'too many'}; "
                             "or the weights of another cfg)")
    try:        # NaN, Inf, 1e38 (a flipped exponent bit), a negative variance: loading refuses them
        split_params(np.frombuffer(data, "<f4", need, header.size), layers, header, w_name)
    except EngineError as err:
        raise WorkspaceError(f"entry {name!r}: {err}") from None


def _check_engine_npz(name: str, kind: str, fname: str, data: bytes) -> None:
    """The .npz is what its entry kind opens: an engine model is read as `engine.load` reads it (every member
    checked against the embedded cfg), a quantized model must carry the quantized-model format (its content is
    read by `QuantizedModel.load`, in quant/, above this room). Any other .npz (a bare np.savez, one kind filed
    as the other) is refused at upload rather than when the entry is first opened."""
    from engine.errors import EngineError
    from engine.model import model_from_arrays
    from engine.npzfile import NpzReader
    label = f"{name}/{fname}"
    if kind == "quantized":
        if npz_kind(data) != "quantized":
            raise WorkspaceError(f"entry {name!r}: {label}: not a quantized model file (no "
                                 "'qwidgets-quantized-model' format member; `python -m engine quantize -o` makes one)")
        return
    try:
        with NpzReader(data, label, what="engine model file", kind="model") as z:
            model_from_arrays(z, label)
    except EngineError as err:
        raise WorkspaceError(f"entry {name!r}: {err}") from None


def group_uploads(uploads: Mapping[str, bytes], kind: str | None, limits: Limits) -> list[Group]:
    """Group uploaded files into entries (see `Workspace.add_upload`)."""
    if not uploads:
        raise WorkspaceError("upload: no files")
    by_ext: dict[str, dict[str, bytes]] = {}
    seen: set[str] = set()
    for raw, data in uploads.items():
        fname = check_name(raw, "uploaded file name")
        if fname in seen:
            raise WorkspaceError(f"upload: file names {raw!r} and another one are the same name after Unicode "
                                 "NFC normalisation; rename one")
        seen.add(fname)
        if not isinstance(data, (bytes, bytearray, memoryview)):    # a str would be a raw TypeError below
            raise WorkspaceError(f"upload: file {fname!r}: expected bytes, got {type(data).__name__}")
        by_ext.setdefault(_upload_class(fname), {})[fname] = bytes(data)
    groups: list[Group] = []
    images = by_ext.pop("image", {})
    if kind == "imageset" and images:
        stem = _stem(sorted(images)[0])
        groups.append(Group(f"{stem}-set", "imageset", images, f"upload:{len(images)} images"))
    else:
        groups += [Group(_stem(f), kind or "image", {f: d}, f"upload:{f}") for f, d in images.items()]
    for f, data in by_ext.pop("zip", {}).items():
        groups.append(Group(_stem(f), "imageset", read_zip_images(f, data, limits), f"upload:{f}"))
    groups += _model_groups(by_ext.pop("cfg", {}), by_ext.pop("weights", {}), kind or "model")
    groups += [Group(_stem(f), kind or npz_kind(d), {f: d}, f"upload:{f}") for f, d in by_ext.pop("npz", {}).items()]
    groups += [Group(_stem(f), kind or "record", {f: d}, f"upload:{f}") for f, d in by_ext.pop("record", {}).items()]
    if by_ext:
        odd = sorted(f for files in by_ext.values() for f in files)
        raise WorkspaceError(f"upload: unsupported file type(s): {', '.join(odd)}; expected .cfg, "
                             f".weights, .npz, .zip, .json/.csv/.txt or images ({', '.join(IMAGE_EXTS)})")
    return groups


def _upload_class(fname: str) -> str:
    ext = extension(fname)
    if ext in IMAGE_EXTS:
        return "image"
    if ext in (".zip", ".cfg", ".weights", ".npz"):
        return ext[1:]
    if ext in (".json",) + TEXT_EXTS:
        return "record"
    return "other"


def _model_groups(cfgs: dict[str, bytes], weights: dict[str, bytes], kind: str) -> list[Group]:
    """Pair .cfg and .weights by stem; a single cfg and a single weights pair whatever their names."""
    if len(cfgs) == 1 and len(weights) == 1:
        (c, cd), (w, wd) = next(iter(cfgs.items())), next(iter(weights.items()))
        return [Group(_stem(c), kind, {c: cd, w: wd}, f"upload:{c}+{w}")]
    groups, wstems = [], {_stem(w): w for w in weights}
    for c, cd in cfgs.items():
        w = wstems.pop(_stem(c), None)
        if w is None:
            raise WorkspaceError(f"upload {c!r}: no matching .weights file (expected {_stem(c)}.weights "
                                 "in the same upload)")
        groups.append(Group(_stem(c), kind, {c: cd, w: weights[w]}, f"upload:{c}+{w}"))
    if wstems:
        raise WorkspaceError(f"upload {', '.join(wstems.values())}: .weights without a matching .cfg "
                             "(upload the cfg with the same name too)")
    return groups


def _stem(fname: str) -> str:
    return Path(fname).stem or fname


def read_import(path: Path, kind: str | None, weights: str | os.PathLike | None, limits: Limits) -> Group:
    """Read a file or folder for `Workspace.import_path`, refusing oversized files before reading."""
    if not path.exists():
        raise WorkspaceError(f"import {path}: no such file or directory")
    if path.is_dir():
        return _import_dir(path, kind, limits)
    if not path.is_file():   # reading a FIFO would block, a device never ends
        raise WorkspaceError(f"import {path}: not a regular file (a FIFO, socket or device); nothing imported")
    ext = extension(path.name)
    if ext == ".zip":
        check_size(str(path), path.stat().st_size, limits.zip_file, "zip")
        return Group(_stem(path.name), "imageset", read_zip_images(str(path), path.read_bytes(), limits),
                     f"import:{path}")
    files = {path.name: _read(path, limits)}
    if ext in (".cfg", ".weights"):
        other = Path(weights) if weights is not None else path.with_suffix(".weights" if ext == ".cfg" else ".cfg")
        if not other.is_file():
            raise WorkspaceError(f"import {path}: the matching {other.suffix or '.weights'} file {other} "
                                 "was not found (pass weights=PATH)")
        files[other.name] = _read(other, limits)
    guessed = npz_kind(files[path.name]) if ext == ".npz" else {".cfg": "model", ".weights": "model"}.get(
        ext, "image" if ext in IMAGE_EXTS else "record")
    return Group(_stem(path.name), kind or guessed, files, f"import:{path.resolve()}")


def _import_dir(path: Path, kind: str | None, limits: Limits) -> Group:
    visible = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if kind is None:
        kind = "model" if any(extension(p.name) in (".cfg", ".npz") for p in visible) else "imageset"
        npzs = [p for p in visible if extension(p.name) == ".npz"]
        if len(npzs) == 1 and not any(extension(p.name) == ".cfg" for p in visible):
            kind = npz_kind(_read(npzs[0], limits))     # a folder holding a quantized model is no model
    if kind not in KINDS:
        raise WorkspaceError(f"import {path}: kind {kind!r}; expected one of {', '.join(KINDS)}")
    chosen = [p for p in visible if extension(p.name) in ALLOWED[kind]]
    if not chosen:
        raise WorkspaceError(f"import {path}: no {kind} files ({', '.join(ALLOWED[kind])}) in the folder")
    return Group(path.name, kind, {p.name: _read(p, limits) for p in chosen}, f"import:{path.resolve()}")


def _read(path: Path, limits: Limits) -> bytes:
    # stat first so a 50 GiB file is refused without reading it into memory
    check_size(str(path), path.stat().st_size, max(limits.weights, limits.record, limits.image), "file")
    return path.read_bytes()
