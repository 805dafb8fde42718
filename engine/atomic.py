"""Crash-safe file writes and an inter-process lock (POSIX: fcntl.flock, os.replace).

`atomic_write` writes to a temporary file in the target's directory, fsyncs it and renames it over
the target with `os.replace`, which POSIX makes atomic on one filesystem: a reader (or a process
that survives a SIGKILL of the writer) sees either the whole old file or the whole new one.
Temporary files are named `.<target>.<pid>.<random>.tmp` so that `sweep_temp_files` can remove
the leftovers of writers that died, without touching those of writers still running.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Union

Data = Union[bytes, bytearray, memoryview, str, Callable[[BinaryIO], None]]

_TMP_SUFFIX = ".tmp"


def _read_umask() -> int:
    # os.umask can only be read by setting it; done once at import, before any thread exists.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so that a rename or a new entry inside it survives a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: Data, *, mode: int | None = None) -> Path:
    """Replace `path` with `data` atomically: temp file in the same directory + fsync + os.replace.

    `data` is bytes, a str (written as UTF-8) or a callback `f(fileobj)` that writes into the
    binary temp file (for large or streamed content). If the callback raises, or the process is
    killed, the old file is left untouched. The new file gets `mode`, else the old file's mode,
    else 0o666 minus the umask (like `open(path, "w")`).
    Raises: OSError from the filesystem; whatever the callback raises.
    """
    target = Path(path)
    if mode is None:
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o666 & ~_UMASK
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=_TMP_SUFFIX,
                               dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)
    return target


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def sweep_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Remove `atomic_write` temp files in `directory` whose writer process is gone; return them."""
    removed = []
    for p in Path(directory).glob(f".*{_TMP_SUFFIX}"):
        parts = p.name.split(".")  # ['', target..., pid, random+suffix stem, 'tmp']
        pid = parts[-3] if len(parts) >= 4 else ""
        if pid.isdigit() and not pid_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, timeout: float = 30.0, shared: bool = False) -> Iterator[None]:
    """Hold an exclusive (or shared) `fcntl.flock` on the lock file `path` (created 0o600 if absent).

    flock locks belong to the open file description, so two threads of one process that each
    call `file_lock` also exclude each other. The lock is released when the block exits or the
    process dies (the kernel drops it with the descriptor), so a killed writer never blocks others.
    Raises: TimeoutError after `timeout` seconds of waiting.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        op = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, op | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{path}: lock still held by another process after {timeout:g} s") from err
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
