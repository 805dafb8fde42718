"""Bounded, lazy reading of untrusted .npz files (engine models, quantized models, run records).

`np.load` of an .npz reads any member in full when asked and trusts the shape each .npy header
declares. A hostile or damaged file (a multi-GB extra member, a header declaring terabytes, a
zip bomb, a truncated archive) must be refused quickly and with little memory. `NpzReader`
therefore opens the zip directory, parses every member's .npy header (a few hundred bytes each)
and checks that the declared shape x itemsize is exactly what the member holds, all before any
array data is read; callers compare `shape(key)` with what the model needs and only then read the
array, whose size is capped again. Object (pickled) arrays are never loaded. Every problem raises
the caller's error class (a WeightsError subclass) naming the file and the member.
"""
from __future__ import annotations

import io
import math
import os
import re
import struct
import weakref
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from engine.errors import WeightsError
from engine.zipdir import count_entries

try:
    import lzma
except ImportError:             # a Python built without it: zipfile then cannot open LZMA members either
    lzma = None

GiB = 1 << 30
MAX_MEMBERS = 100_000           # yolov4 with calibration histograms has ~2,000
MAX_ARRAY_BYTES = 4 * GiB       # any one array, even when its shape was checked against a cfg
MAX_TEXT_BYTES = 64 << 20       # format / meta / cfg / graph text members
MAX_UNKNOWN_BYTES = 1 << 20     # all members a file type does not define, together (newer versions)
# what each file type may hold; anything else is tolerated only while small (MAX_UNKNOWN_BYTES)
_MODEL_KEYS = r"(?:format|cfg|graph|meta|header|layer\d+/(?:weights|biases|scales|rolling_mean|rolling_variance))"
_QMODEL_KEYS = r"(?:format|meta|cfg|layer\d+/(?:w_q|w_scale|b_q)|calib/images|calib/[^/]+/(?:counts|meta))"
KNOWN = {"model": re.compile(f"^{_MODEL_KEYS}$"), "quantized": re.compile(f"^{_QMODEL_KEYS}$"),
         "record": re.compile(f"^(?:format|meta|input|image_png|model/{_MODEL_KEYS}|qmodel/{_QMODEL_KEYS})$")}
_HEADER_MAX = 1 << 16           # .npy headers are < 100 bytes in practice; numpy allows 10,000
# What zipfile's decompressors raise on a damaged member besides OSError (bzip2) and EOFError: zlib's and lzma's
# own errors subclass only Exception. np.savez never writes LZMA, but a zip tool can, and a damaged member must be
# refused like any other, not escape as a raw LZMAError.
DECOMPRESS_ERRORS: tuple[type[Exception], ...] = (zlib.error,) + ((lzma.LZMAError,) if lzma is not None else ())
# zipfile on a damaged archive: not only BadZipFile (bad offset, unknown version, undecodable name, encryption)
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, *DECOMPRESS_ERRORS,
              NotImplementedError, RuntimeError, UnicodeDecodeError)
_ERRORS = ZIP_ERRORS + (SyntaxError, TypeError)     # and a damaged .npy header


def text_array(s: str) -> np.ndarray:
    """`s` as a uint8 vector of its UTF-8 bytes: how model, quantized-model and record files store text
    (what `NpzReader.text` reads back)."""
    return np.frombuffer(s.encode("utf-8"), dtype=np.uint8)


class NpzReader:
    """Read-only mapping over an .npz file: `keys()`, `in`, `shape(k)`, `dtype(k)`, `[k]`, `text(k)`.

    `source`: a path or the file's bytes. `error`: the WeightsError subclass to raise.
    Raises `error` naming `label` for an unreadable/truncated archive, a member that is not a
    .npy array, a header whose shape does not match the member's size, object arrays, too many
    members, or (at read time) an array over `max_bytes`.
    """

    def __init__(self, source: str | os.PathLike | bytes, label: str | None = None, *,
                 error: type[WeightsError] = WeightsError, what: str = "file", kind: str | None = None) -> None:
        self.label = label or str(source)
        self.error, self.what = error, what
        self._known = KNOWN[kind] if kind else None
        self._headers: dict[str, tuple[tuple[int, ...], np.dtype, bool, zipfile.ZipInfo]] = {}
        self._on_disk, self._source = False, None
        self._fp: BinaryIO | None = None     # the file we opened: ZipFile never closes a file object it is given
        try:
            self._on_disk = not isinstance(source, (bytes, bytearray, memoryview))
            self._fp = _open_regular(Path(source), self) if self._on_disk else io.BytesIO(bytes(source))
            if count_entries(self._fp, MAX_MEMBERS) > MAX_MEMBERS:   # before zipfile parses them all
                raise self.fail(f"cannot read {what}: more members than the limit {MAX_MEMBERS}")
            self._zf = zipfile.ZipFile(self._fp)
        except _ERRORS as err:
            if self._fp is not None:
                self._fp.close()
            if isinstance(err, WeightsError):
                raise
            raise self.fail(f"cannot read {what}: {_reason(err)}") from None
        try:
            self._scan()
        except BaseException:
            self.close()
            raise

    def fail(self, message: str) -> WeightsError:
        return self.error(f"{self.label}: {message}")

    def _scan(self) -> None:
        infos = self._zf.infolist()
        if not infos:
            raise self.fail(f"cannot read {self.what}: the archive is empty")
        if len(infos) > MAX_MEMBERS:
            raise self.fail(f"cannot read {self.what}: {len(infos)} members, more than the limit {MAX_MEMBERS}")
        for info in infos:
            if not info.filename.endswith(".npy"):
                raise self.fail(f"cannot read {self.what}: member {info.filename!r} is not a .npy array")
            key = info.filename[:-4]
            try:
                with self._zf.open(info) as f:
                    shape, dtype, fortran, offset = _read_header(f)
            except _ERRORS as err:
                raise self.fail(f"cannot read {self.what}: member {key!r} is not a readable .npy array "
                                f"({_reason(err)})") from None
            if dtype.hasobject:
                raise self.fail(f"cannot read {self.what}: member {key!r} holds Python objects "
                                "(pickled data is never loaded)")
            declared = math.prod(shape) * dtype.itemsize
            if declared + offset != info.file_size:
                raise self.fail(f"cannot read {self.what}: member {key!r} declares shape {shape} {dtype} = {declared} bytes but holds "
                                f"{max(info.file_size - offset, 0)} bytes (damaged or forged header)")
            self._headers[key] = (shape, dtype, fortran, info)
        if self._known is not None:
            extra = [k for k in self._headers if not self._known.match(k)]
            size = sum(self.nbytes(k) for k in extra)
            if size > MAX_UNKNOWN_BYTES:
                other = _other_kind(self._headers, self._known)
                if other is not None:      # a quantized model given as the model, a record as --quantized, ...
                    raise self.fail(f"cannot read {self.what}: this is {other}, not {_article(self.what)}")
                raise self.fail(f"cannot read {self.what}: members {', '.join(map(repr, extra[:3]))} hold "
                                f"{size} bytes, but no {self.what} uses them (limit {MAX_UNKNOWN_BYTES} bytes); refused")

    # ----- mapping ---------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._headers)

    files = property(keys)

    def __contains__(self, key: object) -> bool:
        return key in self._headers

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers)

    def __len__(self) -> int:
        return len(self._headers)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._header(key)[0]

    def dtype(self, key: str) -> np.dtype:
        return self._header(key)[1]

    def nbytes(self, key: str) -> int:
        shape, dtype, _, _ = self._header(key)
        return math.prod(shape) * dtype.itemsize

    def _header(self, key: str):
        if key not in self._headers:
            raise self.fail(f"array {key!r} is missing")
        return self._headers[key]

    def __getitem__(self, key: str) -> np.ndarray:
        return self.read(key)

    def read(self, key: str, max_bytes: int = MAX_ARRAY_BYTES) -> np.ndarray:
        """Array `key`, refused (before reading) if it declares more than `max_bytes`."""
        shape, dtype, fortran, info = self._header(key)
        n = math.prod(shape) * dtype.itemsize
        if n > max_bytes:
            raise self.fail(f"array {key!r} declares {shape} {dtype} = {n} bytes, more than the "
                            f"{max_bytes} bytes allowed for it")
        buf = np.empty(n, np.uint8)  # filled in place: peak memory is the array plus one chunk
        try:
            with self._zf.open(info) as f:
                _read_header(f)
                _read_into(f, buf)
        except _ERRORS as err:
            raise self.fail(f"array {key!r} is damaged ({_reason(err)})") from None
        return buf.view(dtype).reshape(shape, order="F" if fortran else "C")

    def deferred(self, key: str) -> "Deferred | np.ndarray":
        """Array `key` to be read when first used (`Deferred.array()`), as the file was when it was opened.
        The file stays open until then: a file replaced by rename (every engine write) still reads its old
        contents, and one rewritten in place (cp, a notebook's upload, np.savez over it) is caught by the
        member's CRC-32 and refused. Never a memory map of the file: a mapped file truncated by another
        writer kills the process (SIGBUS) at the next access. Compressed members, and files given as bytes,
        are read now. A FLOAT session never uses its quantized model's int8 weights (62 MB for yolov3)."""
        shape, dtype, fortran, info = self._header(key)
        if not self._on_disk or info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1:
            return self.read(key)
        if self._source is None:
            self._source = _Source(os.dup(self._zf.fp.fileno()))
        return Deferred(self._source, self.label, self.error, key, shape, dtype, fortran, info)

    def text(self, key: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
        """A UTF-8 text member (stored as a uint8 vector)."""
        if key not in self._headers:
            raise self.fail(f"array {key!r} is missing")
        shape, dtype = self.shape(key), self.dtype(key)
        if dtype != np.uint8 or len(shape) != 1:
            raise self.fail(f"cannot read {self.what}: {key!r} must be UTF-8 text (a uint8 vector), "
                            f"got {dtype} {shape}")
        try:
            return bytes(self.read(key, max_bytes)).decode("utf-8")
        except UnicodeDecodeError as err:
            raise self.fail(f"cannot read {self.what}: {key!r} is not UTF-8 text (byte {err.start})") from None

    def close(self) -> None:
        self._zf.close()
        if self._fp is not None:
            self._fp.close()

    def __enter__(self) -> "NpzReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Source:
    """An open file descriptor shared by the Deferred arrays of one reader, closed with the last of them."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._close = weakref.finalize(self, os.close, fd)


class Deferred:
    """One stored .npz member, read on demand from an open descriptor (`NpzReader.deferred`)."""

    def __init__(self, source: _Source, label: str, error: type[WeightsError], key: str, shape: tuple[int, ...],
                 dtype: np.dtype, fortran: bool, info: zipfile.ZipInfo) -> None:
        self.source, self.label, self.error, self.key = source, label, error, key
        self.shape, self.dtype, self.fortran, self.info = shape, dtype, fortran, info

    def _changed(self, why: str) -> WeightsError:
        return self.error(f"{self.label}: array {self.key!r} changed on disk since the file was loaded ({why}; "
                          "the file was rewritten in place rather than replaced): load the file again")

    def array(self) -> np.ndarray:
        """The member's array (read-only), checked against the CRC-32 and header the file had when loaded."""
        fd, info = self.source.fd, self.info
        head = os.pread(fd, 30, info.header_offset)        # the member's local file header
        if len(head) != 30 or head[:4] != b"PK\x03\x04":
            raise self._changed("its zip header is gone")
        name_len, extra_len = struct.unpack("<2H", head[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        buf = np.empty(info.file_size, np.uint8)
        view, pos = memoryview(buf), 0
        while pos < buf.size:
            got = os.preadv(fd, [view[pos:pos + (1 << 22)]], start + pos)
            if not got:
                raise self._changed(f"it ends after {pos} of {buf.size} bytes")
            pos += got
        if zlib.crc32(view) & 0xFFFFFFFF != info.CRC:
            raise self._changed("its CRC-32 differs")
        try:
            shape, dtype, fortran, offset = _read_header(io.BytesIO(view[:min(buf.size, _HEADER_MAX + 16)]))
        except _ERRORS as err:
            raise self._changed(f"its .npy header is unreadable: {_reason(err)}") from None
        if (shape, dtype, fortran) != (self.shape, self.dtype, self.fortran):
            raise self._changed(f"it declares {shape} {dtype} now")
        out = buf[offset:].view(dtype).reshape(shape, order="F" if fortran else "C")
        out.flags.writeable = False
        return out


def npz_bytes(arrays) -> bytes:
    """`np.savez` of `arrays` into memory (uncompressed; loads without pickle), for a store that takes bytes."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def read_npy(path: str | os.PathLike, label: str | None = None, *, error: type[Exception] = WeightsError,
             what: str = ".npy tensor", max_bytes: int = MAX_ARRAY_BYTES) -> np.ndarray:
    """One untrusted .npy file, read as `NpzReader.read` reads a member: its header's shape x itemsize
    must be exactly the bytes after the header (a forged terabyte shape is refused before any
    allocation), at most `max_bytes`, no object arrays. Raises `error` naming the file."""
    label = label or str(path)
    try:
        f = open_regular(path)
    except OSError as err:
        raise error(f"{label}: cannot read {what}: {err.strerror or err}") from None
    with f:
        try:
            shape, dtype, fortran, start = _read_header(f)
            if dtype.hasobject:
                raise ValueError("object arrays (pickles) are never loaded")
            n = math.prod(shape) * dtype.itemsize
            size = os.fstat(f.fileno()).st_size - start
            if n != size:
                raise ValueError(f"the header declares {shape} {dtype} ({n} bytes) but {size} bytes follow it")
            if n > max_bytes:
                raise ValueError(f"{n} bytes is over the {max_bytes}-byte limit")
            buf = np.empty(n, np.uint8)
            _read_into(f, buf)
        except _ERRORS as err:
            raise error(f"{label}: cannot read a {what}: {_reason(err)}") from None
    return buf.view(dtype).reshape(shape, order="F" if fortran else "C")


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """`path` opened for reading if it is a regular file: a FIFO would block forever and a device
    (/dev/zero) never ends. Raises OSError (EINVAL: not a regular file)."""
    import errno
    import stat
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)   # O_NONBLOCK: a FIFO must not hang
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _open_regular(path: Path, reader: NpzReader) -> BinaryIO:
    try:
        return open_regular(path)
    except OSError as err:
        raise reader.fail(f"cannot read {reader.what}: {err.strerror or err}") from None


def _read_header(f) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(f, max_header_size=_HEADER_MAX)
    elif version == (2, 0):
        shape, fortran, dtype = fmt.read_array_header_2_0(f, max_header_size=_HEADER_MAX)
    else:
        raise ValueError(f".npy format version {version} is not supported")
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"bad shape {shape}")
    return tuple(shape), np.dtype(dtype), bool(fortran), f.tell()


def _read_into(f, buf: np.ndarray) -> None:
    view, pos = memoryview(buf), 0
    while pos < len(buf):
        got = f.readinto(view[pos:pos + (1 << 22)])
        if not got:
            raise EOFError(f"the member ends after {pos} of {len(buf)} bytes")
        pos += got


# how a refusal names each file type (NpzReader's `kind`, and `dump`'s output), and where it goes instead
_KIND_NAMES = {"model": "an engine model file (made by `convert` or Model.save; it is the MODEL, engine.load)",
               "quantized": "a quantized model file (made by `quantize`; it goes to --quantized, QuantizedModel.load)",
               "record": "a run record (made by Session.save_record; it opens with Session.open_record)",
               "dump": "a `dump` output (every layer's output as layer0, layer1, ...)"}
_DUMP_KEYS = re.compile(r"^layer\d+$")


def _other_kind(keys, known: re.Pattern) -> str | None:
    """What another file type `keys` (every member) make up, if any: KNOWN's other kinds, or a dump."""
    for kind, pattern in [*KNOWN.items(), ("dump", _DUMP_KEYS)]:
        if pattern is not known and all(pattern.match(k) for k in keys):
            return _KIND_NAMES[kind]
    return None


def _article(what: str) -> str:
    return f"{'an' if what[:1] in 'aeiou' else 'a'} {what}"


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


class ArrayDict(NpzReader):
    """The `NpzReader` interface over arrays already in memory (`to_arrays()` output, tests)."""

    def __init__(self, arrays, label: str = "<arrays>", *, error: type[WeightsError] = WeightsError,
                 what: str = "file") -> None:
        self.label, self.error, self.what = label, error, what
        self._arrays = arrays
        self._headers = {}
        for k in arrays.keys():
            a = np.asarray(arrays[k])
            if a.dtype.hasobject:
                raise self.fail(f"cannot read {what}: array {k!r} holds Python objects")
            self._headers[k] = (tuple(a.shape), a.dtype, False, None)

    def read(self, key: str, max_bytes: int = MAX_ARRAY_BYTES) -> np.ndarray:
        if self.nbytes(key) > max_bytes:
            raise self.fail(f"array {key!r} holds {self.nbytes(key)} bytes, more than the {max_bytes} allowed")
        return np.asarray(self._arrays[key])

    def deferred(self, key: str) -> np.ndarray:
        return self.read(key)

    def close(self) -> None:
        pass


class SubReader:
    """The members of a reader under `prefix` ('model/', 'qmodel/' in run records), prefix removed."""

    def __init__(self, reader: NpzReader, prefix: str) -> None:
        self.reader, self.prefix = reader, prefix
        self.label, self.error, self.what = reader.label, reader.error, reader.what
        self.fail = reader.fail

    def keys(self) -> list[str]:
        n = len(self.prefix)
        return [k[n:] for k in self.reader.keys() if k.startswith(self.prefix)]

    files = property(keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.prefix + key in self.reader

    def __getitem__(self, key: str) -> np.ndarray:
        return self.reader.read(self.prefix + key)

    def shape(self, key: str):
        return self.reader.shape(self.prefix + key)

    def dtype(self, key: str):
        return self.reader.dtype(self.prefix + key)

    def nbytes(self, key: str) -> int:
        return self.reader.nbytes(self.prefix + key)

    def read(self, key: str, max_bytes: int = MAX_ARRAY_BYTES) -> np.ndarray:
        return self.reader.read(self.prefix + key, max_bytes)

    def deferred(self, key: str):
        return self.reader.deferred(self.prefix + key)

    def text(self, key: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
        return self.reader.text(self.prefix + key, max_bytes)


def as_reader(z, label: str, *, error: type[WeightsError] = WeightsError, what: str = "file",
              prefix: str = ""):
    """`z` (an NpzReader, a SubReader or a mapping of arrays) as a reader, optionally under `prefix`."""
    r = z if isinstance(z, (NpzReader, SubReader)) else ArrayDict(z, label, error=error, what=what)
    return SubReader(r, prefix) if prefix else r
