"""Checks for anything that enters a workspace: names, sizes, and content types (by content).

Every function raises `WorkspaceError` naming the file (or zip member) and what was expected.
File types are decided by extension, then verified by content: a model's `.cfg`, `.weights` or `.names`
file is refused exactly when the engine's loader would refuse it (its own rules, `engine.darknet.cfg` and
`engine.darknet.weights`, with its reasons), images are fully decoded by `engine.darknet.image.open_image`
(which refuses decompression bombs), and zips are read member by member with hard limits on count and size.
"""
from __future__ import annotations

import io
import json
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from engine.errors import EngineError, ImageError
from engine.darknet.image import MAX_PIXELS, open_image
from engine.npzfile import ZIP_ERRORS
from engine.zipdir import count_entries

MiB = 1 << 20
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
TEXT_EXTS = (".txt", ".names", ".csv", ".md", ".log")
# Unicode categories refused anywhere in a name: controls (Cc: NUL, newline, ESC...), format
# characters (Cf: RTL/LTR overrides, zero-width joiners, which make a name display differently
# from what it is), surrogates, private-use, unassigned, and line/paragraph separators.
_BAD_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
MAX_NAME_LEN = 128
MAX_NAME_BYTES = 200  # file systems allow 255 bytes per component; leave room for '~<hex>' suffixes


class WorkspaceError(EngineError, ValueError):
    """A workspace operation was refused: bad name, unknown entry, bad or oversized upload."""


@dataclass(frozen=True)
class Limits:
    """Upper bounds for uploads and imports (bytes unless said otherwise)."""
    weights: int = 512 * MiB        # one .weights / .npz file
    image: int = 50 * MiB           # one encoded image file
    cfg: int = 1 * MiB              # one .cfg or other text file
    record: int = 64 * MiB          # one run-record file (.json, .csv, .npz, ...)
    zip_file: int = 1024 * MiB      # the zip archive itself
    zip_total: int = 2048 * MiB     # sum of the uncompressed members actually read
    zip_members: int = 10_000       # entries listed in the zip's directory
    max_pixels: int = MAX_PIXELS    # per image, checked from the header before decoding


def check_name(name: object, what: str = "name") -> str:
    """Return `name` if it is safe as one path component, else raise WorkspaceError.

    Refused: non-str, empty, over 128 characters or 200 UTF-8 bytes, '.' or '..', a leading '.' (hidden files,
    and our own '.qw-*' files), '/' or '\\', leading/trailing spaces, and characters of the
    categories in `_BAD_CATEGORIES` (NUL, newlines, RTL override U+202E, zero-width space...).
    Names are compared after NFC normalisation, so visually equal names are equal.
    """
    if not isinstance(name, str):
        raise WorkspaceError(f"{what} {name!r}: expected a str, got {type(name).__name__}")
    if not name:
        raise WorkspaceError(f"{what}: empty; expected 1-{MAX_NAME_LEN} characters")
    if len(name) > MAX_NAME_LEN or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise WorkspaceError(f"{what} {name[:40]!r}...: {len(name)} characters / "
                             f"{len(name.encode('utf-8', 'surrogatepass'))} UTF-8 bytes; at most "
                             f"{MAX_NAME_LEN} characters and {MAX_NAME_BYTES} bytes")
    for ch in name:
        if unicodedata.category(ch) in _BAD_CATEGORIES:
            raise WorkspaceError(f"{what} {name!r}: contains the control/format character "
                                 f"U+{ord(ch):04X} ({unicodedata.name(ch, 'unnamed')}); not allowed")
    if "/" in name or "\\" in name:
        raise WorkspaceError(f"{what} {name!r}: contains a path separator; expected a plain name, "
                             "not a path (no '/', '\\', '..', absolute paths)")
    if name.startswith("."):
        raise WorkspaceError(f"{what} {name!r}: starts with '.'; hidden names and '..' are not allowed")
    if name != name.strip():
        raise WorkspaceError(f"{what} {name!r}: leading or trailing whitespace is not allowed")
    return unicodedata.normalize("NFC", name)


def extension(filename: str) -> str:
    return PurePosixPath(filename).suffix.lower()


def check_size(label: str, size: int, limit: int, what: str) -> None:
    if size > limit:
        raise WorkspaceError(f"{label}: {size} bytes exceeds the {what} limit of {limit} bytes "
                             f"({limit / MiB:g} MiB)")


def check_cfg(label: str, data: bytes, limits: Limits) -> None:
    """A Darknet .cfg, refused exactly when `read_cfg` would refuse its bytes (`cfg_from_bytes`: the engine's
    text rule, UTF-16 after its byte-order mark, a UTF-8 byte-order mark dropped, then the lexer, which wants
    [net] first), with the loader's reason after `label`. Whether its layers build is the pair's check."""
    from engine.darknet.cfg import cfg_from_bytes
    from engine.errors import CfgError
    check_size(label, len(data), limits.cfg, "cfg")
    try:
        cfg_from_bytes(bytes(data), Path(label))
    except CfgError as err:
        raise WorkspaceError(_labelled(label, err)) from None


def check_weights(label: str, data: bytes, limits: Limits) -> None:
    """A Darknet .weights file, refused exactly when loading would refuse it before its cfg is known: the
    header rule of `engine.darknet.weights.read_header` (which reads the first 20 bytes, as the loader does)
    and a whole number of float32 values after it, with the loader's reason after `label`. The count and the
    values against the cfg are the pair's check."""
    from engine.darknet.weights import body_floats, read_header
    from engine.errors import WeightsError
    check_size(label, len(data), limits.weights, "weights")
    try:
        body_floats(read_header(bytes(data[:20]), label), len(data), label)
    except WeightsError as err:
        raise WorkspaceError(_labelled(label, err)) from None


def check_names(label: str, data: bytes, limits: Limits) -> None:
    """A model's class-names file, refused exactly when loading would refuse it (`engine.darknet.cfg.
    names_from_bytes`: UTF-16 after its byte-order mark is read too, a file with NUL bytes is not), with the
    loader's reason."""
    from engine.darknet.cfg import names_from_bytes
    from engine.errors import EngineError
    check_size(label, len(data), limits.cfg, "text file")
    try:
        names_from_bytes(bytes(data), label)
    except EngineError as err:
        raise WorkspaceError(_labelled(label, err)) from None


def _labelled(label: str, err: Exception) -> str:
    """The loader's message `err` led by the upload's label in place of the file name the loader gave it
    ('m/m.cfg:1 [convolutional] ...' keeps the loader's line number)."""
    reason = str(err)
    for name in (label, PurePosixPath(label).name):
        if reason.startswith(f"{name}:"):
            return label + reason[len(name):]
    return f"{label}: {reason}"


def check_npz(label: str, data: bytes, limits: Limits, limit: int | None = None) -> None:
    """An engine model / record .npz: a zip archive whose members are all .npy arrays (no pickled
    objects), each .npy header declaring exactly the bytes its member holds, and at most 4x the
    file limit uncompressed in all (a compressed member declaring gigabytes is refused unread)."""
    from engine.errors import WeightsError
    from engine.npzfile import NpzReader
    limit = limit or limits.weights
    check_size(label, len(data), limit, "npz")
    try:
        with NpzReader(bytes(data), label, what="NumPy .npz archive") as r:
            total = sum(r.nbytes(k) for k in r.keys())
    except WeightsError as err:
        reason = str(err).removeprefix(f"{label}: ")
        raise WorkspaceError(f"{label}: not a NumPy .npz archive the engine accepts ({reason})") from None
    if total > 4 * limit:
        raise WorkspaceError(f"{label}: its arrays hold {total} bytes uncompressed, more than 4x the npz "
                             f"limit of {limit} bytes (possible zip bomb)")


# the `format` member of the engine's .npz files (engine.model.MODEL_FORMAT, engine.quant.qmodel.QMODEL_FORMAT,
# engine.session.records.RECORD_FORMAT, which sit above the workspace) without its version
NPZ_FORMAT_KINDS = {"qwidgets-engine-model": "model", "qwidgets-quantized-model": "quantized",
                    "qwidgets-run-record": "record"}


def npz_kind(data: bytes) -> str:
    """The entry kind of an .npz by its `format` member: "quantized" for a quantized model (`quantize -o`),
    "record" for a run record, else "model" (an engine model file, or anything a later check refuses).

    An upload or import without a kind is filed by what the file is, not by its extension: a quantized
    model filed as a model is missing from the Explorer's quantized picker and fails to open as a model.
    """
    from engine.errors import WeightsError
    from engine.npzfile import NpzReader
    try:
        with NpzReader(bytes(data), "<upload>") as r:
            fmt = r.text("format", 256) if "format" in r else ""
    except WeightsError:
        return "model"                      # check_npz names the file and the problem
    return NPZ_FORMAT_KINDS.get(fmt.split("/", 1)[0], "model")


def check_image(label: str, data: bytes, limits: Limits) -> None:
    """Any image Pillow decodes, within the size and pixel limits (bombs refused from the header)."""
    check_size(label, len(data), limits.image, "image")
    try:
        open_image(bytes(data), max_pixels=limits.max_pixels, name=label)
    except ImageError as err:
        raise WorkspaceError(str(err)) from err


def check_text(label: str, data: bytes, limit: int) -> None:
    check_size(label, len(data), limit, "text file")
    _utf8(label, data, "UTF-8 text")


def check_json(label: str, data: bytes, limit: int) -> None:
    check_size(label, len(data), limit, "JSON file")
    try:
        json.loads(_utf8(label, data, "a JSON document"))
    except (ValueError, RecursionError) as err:
        raise WorkspaceError(f"{label}: not valid JSON ({err})") from err


def _utf8(label: str, data: bytes, expected: str) -> str:
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as err:
        raise WorkspaceError(f"{label}: not UTF-8 text at byte {err.start}; expected {expected}") from err
    if "\x00" in text:
        raise WorkspaceError(f"{label}: contains NUL bytes; expected {expected}")
    return text


def read_zip_images(label: str, data: bytes, limits: Limits) -> dict[str, bytes]:
    """Image members of a zip archive as {file name: bytes}; other members are skipped.

    Refused (whole archive): more than `zip_members` entries, a member name that is absolute or
    contains '..', declared or actual uncompressed sizes over the limits (members are read in
    bounded chunks, so a zip that lies about its sizes is still stopped), an image member that
    does not decode, no image at all. Directories inside the zip are flattened; equal base
    names get a numeric suffix.
    """
    check_size(label, len(data), limits.zip_file, "zip")
    fp = io.BytesIO(data)
    if count_entries(fp, limits.zip_members) > limits.zip_members:   # before zipfile parses them all
        raise WorkspaceError(f"{label}: its directory lists more members than the limit of {limits.zip_members}")
    try:
        zf = zipfile.ZipFile(fp)
    except ZIP_ERRORS as err:
        raise WorkspaceError(f"{label}: not a zip archive ({err})") from err
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.zip_members:
            raise WorkspaceError(f"{label}: {len(infos)} members exceeds the limit of {limits.zip_members}")
        declared = sum(i.file_size for i in infos)
        check_size(label, declared, limits.zip_total, "total uncompressed zip")
        out: dict[str, bytes] = {}
        total = 0
        for info in infos:
            member = info.filename
            parts = PurePosixPath(member.replace("\\", "/")).parts
            if member.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                raise WorkspaceError(f"{label}: member {member!r} has an absolute or '..' path; refused")
            if extension(member) not in IMAGE_EXTS or info.is_dir():     # is_dir() of an empty name: IndexError
                continue
            base = parts[-1]
            if base.startswith(".") or "__MACOSX" in parts:
                continue  # resource forks and hidden files from macOS/desktop zips
            blob = _read_member(zf, info, f"{label}:{member}", min(limits.image, limits.zip_total - total))
            total += len(blob)
            check_image(f"{label}:{member}", blob, limits)
            out[_unique(check_name(base, f"{label}: member name"), out)] = blob
    if not out:
        raise WorkspaceError(f"{label}: no image members ({', '.join(IMAGE_EXTS)}) in the zip")
    return out


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, label: str, limit: int) -> bytes:
    chunks, size = [], 0
    try:
        with zf.open(info) as f:
            while chunk := f.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise WorkspaceError(f"{label}: uncompressed size exceeds {limit} bytes "
                                         "(image or zip-total limit; possible zip bomb)")
                chunks.append(chunk)
    except WorkspaceError:
        raise
    except ZIP_ERRORS as err:       # RuntimeError: encrypted; ValueError: a header offset before the file's start
        raise WorkspaceError(f"{label}: cannot read zip member ({err})") from err
    return b"".join(chunks)


def _unique(name: str, taken: dict[str, bytes]) -> str:
    stem, ext = PurePosixPath(name).stem, PurePosixPath(name).suffix
    candidate, n = name, 1
    while candidate in taken:
        candidate, n = f"{stem}-{n}{ext}", n + 1
    return candidate
