"""The one crash-safe file writer, its temp-file reclaiming, and an inter-process lock.

`atomic_write` writes to a temporary file in the target's directory, fsyncs it, renames it over the target with
`os.replace` (atomic on one POSIX filesystem) and fsyncs the directory: a reader, or a process that survives a
SIGKILL of the writer, sees either the whole old file or the whole new one. Every writer of the engine (models,
quantized models, run records, .weights, the workspace index, zoo downloads) goes through it; `atomic_write_all`
writes several files that belong together (an ONNX file and its external-data side file) to temp files first, and
puts them in place only once all are complete.

Temp names are `.<target, cut to 178 bytes>.qwtmp-<pid>-<thread id>-<random>-h<host>-s<start>`: unique per process
AND thread, at most 240 bytes whatever the target name, and recognisable, so `sweep_temp_files` (run by every write
and by the workspace on open) removes those of writers that died, never those of a writer still running. `<start>`
is the writer's start time (Linux: field 22 of /proc/PID/stat): a writer is alive only if a process with its pid
runs AND started then, so a pid reused by a later process neither keeps a dead writer's temp file forever nor makes
this process take another's temp file for its own (names without `-s<start>`, from earlier versions or where /proc
is not readable, are judged by the pid alone). `<host>` is `engine.mounts.host_id()` (boot id and pid namespace): on
a folder shared by several machines (a hub's NFS home) or containers, a pid is only judged where it means something;
temp files of another host are removed only after a day (`abandoned`). Names of earlier versions are read too: `-<4
hex of the host name's hash><6 hex>` (that hash decides whether it is this host's) and `-<8 hex>` (no host: judged
by the pid, as then).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
import socket
import stat
import threading
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Mapping, NoReturn, Sequence, Union

from engine.errors import FileError
from engine.mounts import NETWORK_FS, host_id, mount_type

Data = Union[bytes, bytearray, memoryview, str, Callable[[BinaryIO], None]]

TMP_MARK = ".qwtmp-"
# of the target name kept in a temp name: 1 + 178 + 61 (".qwtmp-" 7, pid and thread id <= 7 digits each,
# 3 dashes, 6 hex, "h" and 8 hex, "-s" and a start time <= 20 digits) = 240 < 255, the NAME_MAX
_NAME_BYTES = 178
_TMP_RE = re.compile(r"^\..*\.qwtmp-(\d+)-(\d+)-(?:[0-9a-f]{6}-h(?P<host>[0-9a-f]{8})|(?P<host4>[0-9a-f]{4})[0-9a-f]{6}"
                     r"|[0-9a-f]{8})(?:-s(?P<start>\d+))?$", re.S)
_START_FIELD = 22            # /proc/PID/stat: starttime, in clock ticks after boot
# the host tag of the names of earlier versions (`-<4 hex><6 hex>`): the host name's hash
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:4]
_FOREIGN_AGE = 24 * 3600     # seconds after which another host's temp file or staging folder is taken as abandoned
# Earlier versions of this writer used names ('.<name>.<pid>.<rand>.tmp', '.<name>.tmp<pid>', '.<name>.part<pid>')
# that a user's own hidden files can have too ('.thesis.2024.bak.tmp'): they are NOT reclaimed, since the sweep runs
# in every folder written into (a home folder, a CLI -o folder).


_UMASK = os.umask(0o022)     # os.umask is read by setting it: once, at import, before any thread exists
os.umask(_UMASK)


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so that a rename or a new entry inside it survives a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(target: str | os.PathLike) -> Path:
    """A fresh temp path beside `target` that `sweep_temp_files` recognises (see the module doc)."""
    t = Path(target)
    cut = t.name.encode("utf-8", "surrogateescape")[:_NAME_BYTES].decode("utf-8", "ignore")
    return t.with_name(f".{cut}{TMP_MARK}{os.getpid()}-{threading.get_native_id()}-{secrets.token_hex(3)}"
                       f"-h{host_id()}{writer_mark()}")


def check_target(path: str | os.PathLike, what: str = "output") -> Path:
    """`path` if it can be replaced by a new regular file: its folder exists and it is absent or a
    regular file. A FIFO, device node, socket or folder is refused (replacing /dev/null or a named
    pipe a user pointed `-o` at is never what they meant). Raises FileError naming the path."""
    target = Path(path)
    if not str(path) or target.name in ("", ".", ".."):
        raise FileError(f"{what} {str(path)!r}: not a file name")
    parent = target.parent
    try:
        pst = parent.stat()
    except FileNotFoundError:
        raise FileError(f"{what} {target}: the folder {parent} does not exist; create it first") from None
    except OSError as err:
        raise FileError(f"{what} {target}: cannot use the folder {parent}: {err.strerror or err}") from None
    if not stat.S_ISDIR(pst.st_mode):
        raise FileError(f"{what} {target}: {parent} is not a folder")
    try:
        st = target.stat()
    except FileNotFoundError:
        return target
    except OSError as err:
        raise FileError(f"{what} {target}: {err.strerror or err}") from None
    if stat.S_ISDIR(st.st_mode):
        raise FileError(f"{what} {target}: is a folder; expected a file name (e.g. {target / 'out.npz'})")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device node"
                if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise FileError(f"{what} {target}: exists and is {kind}; refusing to replace it "
                        "(expected a regular file or a new name)")
    return target


def atomic_write(path: str | os.PathLike, data: Data, *, mode: int | None = None, exclusive: bool = False) -> Path:
    """Replace `path` with `data` atomically: temp file in the same folder + fsync + os.replace +
    folder fsync.

    `data` is bytes, a str (written as UTF-8) or a callback `f(fileobj)` that writes into the
    binary temp file (for large or streamed content). If the callback raises, or the process is
    killed, the old file is left untouched (a killed writer's temp file is reclaimed by the next
    write into that folder). The new file gets `mode`, else the old file's mode, else 0o666 minus
    the umask (like `open(path, "w")`).
    With `exclusive=True` the new file only ever takes a free name: it is linked into place with
    `os.link`, which fails if `path` exists by then (another kernel or process saved the same new
    name meanwhile), so an existing file is never replaced; FileError is raised instead.
    Raises: FileError for a missing folder, a target that is a folder/FIFO/device, or an OS error
    (permissions, disk full), or (exclusive) an existing target; whatever the callback raises.
    """
    target = check_target(path)
    if exclusive and os.path.lexists(target):
        raise FileError(f"output {target}: exists; refusing to replace it")
    sweep_temp_files(target.parent)
    tmp = _write_temp(target, data, mode)
    try:
        if exclusive:
            _link_new(tmp, target)
        else:
            os.replace(tmp, target)
    except BaseException as err:
        _discard(tmp, target, err)
    fsync_dir(target.parent)
    return target


def _discard(tmp, target: Path, err: BaseException) -> NoReturn:
    """Remove the temp file of a failed write and re-raise (`_reraise`)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    _reraise(target, err)


def _reraise(target: Path, err: BaseException) -> NoReturn:
    """Re-raise a failed write's error: an OSError as the FileError naming the output, and an error that
    a Ctrl-C / SIGTERM caused while unwinding (zipfile's "open writing handle" ValueError) as that interrupt."""
    cause = err
    while isinstance(cause, Exception) and cause.__context__ is not None:
        cause = cause.__context__
    if not isinstance(cause, Exception):
        raise cause
    if isinstance(err, OSError) and not isinstance(err, FileError):
        raise FileError(f"output {target}: write failed: {err.strerror or err}") from err
    raise err


def atomic_write_all(items: Sequence[tuple[str | os.PathLike, Data]]) -> list[Path]:
    """Write several files as one, e.g. an ONNX file and the side file of weights it names: every
    `(path, data)` goes to a temp file beside its target (written and fsynced in the order given), and
    only once all are complete are they put in place, in that order, with os.replace, then each folder
    is fsynced.

    Any failure (a callback raising, an OS error, Ctrl-C) before the last one is in place removes every
    temp file, and every target put in place by this call that did not exist before it, so nothing new
    is left behind. A target that replaced an existing file cannot be put back: list those last (the
    ONNX file after its fresh side file). A killed writer leaves only temp names (reclaimed by the next
    sweep), or, killed between two renames, the targets put in place so far.
    Raises: as `atomic_write`.
    """
    targets = [check_target(path) for path, _ in items]
    if len(set(targets)) != len(targets):
        raise ValueError(f"atomic_write_all: a target is listed twice: {[str(t) for t in targets]}")
    for folder in dict.fromkeys(t.parent for t in targets):
        sweep_temp_files(folder)
    existed = [os.path.lexists(t) for t in targets]
    temps: list[Path] = []
    placed: list[Path] = []
    try:
        for target, (_, data) in zip(targets, items):
            temps.append(_write_temp(target, data, None))
        for tmp, target in zip(temps, targets):
            os.replace(tmp, target)
            placed.append(target)
    except BaseException as err:
        for tmp in temps[len(placed):]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        for target, new in zip(placed, existed):
            if not new:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target)
        _reraise(targets[len(placed)], err)
    for folder in dict.fromkeys(t.parent for t in targets):
        fsync_dir(folder)
    return targets


def _write_temp(target: Path, data: Data, mode: int | None) -> Path:
    """A new temp file beside `target` holding `data`, with `mode` (else the target's, else 0o666 minus
    the umask), fsynced; removed again if anything fails."""
    if mode is None:
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o666 & ~_UMASK
    tmp = temp_path(target)
    try:   # the create is inside: a Ctrl-C / SIGTERM landing just after it still removes the file
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise FileError(f"output {target}: cannot create a file in {target.parent}: {err.strerror or err}") from None
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
    except BaseException as err:
        _discard(tmp, target, err)
    return tmp


def publish(tmp: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Put a finished temp file (from `temp_path(target)`, written by a tool that wants a path: a download,
    a subprocess) in place as `atomic_write` does: fsync it, os.replace it over `target`, fsync the folder.
    Raises: FileError for an OS error (the temp file is left for the caller to remove)."""
    target = check_target(target)
    try:
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as err:
        raise FileError(f"output {target}: cannot put {tmp} in place: {err.strerror or err}") from err
    fsync_dir(target.parent)
    return target


def _link_new(tmp: Path, target: Path) -> None:
    """Give the complete temp file the name `target` only if that name is free (atomic), then drop the temp name."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        with contextlib.suppress(OSError):     # NFS: a link retried after its reply was lost fails though made
            if os.path.samefile(tmp, target):
                return os.unlink(tmp)
        raise FileError(f"output {target}: was created by another writer meanwhile; refusing to "
                        "replace it (nothing was written)") from None
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # a file system without hard links: the best it allows (a window between check and rename)
        if os.path.lexists(target):
            raise FileError(f"output {target}: exists; refusing to replace it") from None
        os.replace(tmp, target)
        return
    os.unlink(tmp)


def atomic_savez(path: str | os.PathLike, arrays: Mapping[str, object], *, exclusive: bool = False) -> Path:
    """`np.savez(path, **arrays)` through `atomic_write` (uncompressed; loads without pickle)."""
    import numpy as np
    return atomic_write(path, lambda f: np.savez(f, **arrays), exclusive=exclusive)


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OverflowError:
        return False
    return True


def process_start(pid: int) -> int | None:
    """When process `pid` started (Linux: field 22 of /proc/PID/stat, clock ticks after boot; constant
    for the process's life), or None where it cannot be read: no such process, no /proc (another OS),
    or another user's process that /proc hides (hidepid)."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            data = f.read()
        # field 2, the command name in parentheses, may hold spaces and ')': fields 3... follow the last ')'
        return int(data[data.rindex(b")") + 2:].split()[_START_FIELD - 3])
    except (OSError, ValueError, IndexError, OverflowError):
        return None


_OWN_START: dict[int, int | None] = {}      # per pid: a forked child is another process


def own_start() -> int | None:
    """This process's `process_start`, read once (None where it cannot be read)."""
    pid = os.getpid()
    if pid not in _OWN_START:
        _OWN_START[pid] = process_start(pid)
    return _OWN_START[pid]


def writer_mark() -> str:
    """`-s<start time>` of this process, for names that identify their writer (temp files, workspace
    staging folders); '' where the start time cannot be read (such names are judged by the pid alone)."""
    start = own_start()
    return "" if start is None else f"-s{start}"


def writer_alive(pid: int, start: int | None) -> bool:
    """Whether the writer that named a file with `pid` (and `start`, its `writer_mark`) still runs, on
    this machine: a process with that pid exists AND started at `start`. A pid reused by a later process
    (this one included) is not the writer. Without `start` (names of earlier versions), or when a live
    pid's start cannot be read (/proc hidden), the pid alone decides, as it did before."""
    if pid == os.getpid():
        return start is None or own_start() in (None, start)
    if not pid_alive(pid):
        return False
    if start is None:
        return True
    now = process_start(pid)
    return pid_alive(pid) if now is None else now == start


def temp_owner(name: str) -> tuple[int, bool] | None:
    """(writer pid, written on this host) from an atomic-write temp file name; None if not one."""
    owner = temp_writer(name)
    return None if owner is None else (owner[0], owner[2])


def temp_writer(name: str) -> tuple[int, int | None, bool] | None:
    """(writer pid, its start time or None (a name without one), written on this host) from an
    atomic-write temp file name; None if not one. Names of earlier versions: `-<4 hex><6 hex>` is this
    host's if the 4 hex are this host name's hash; `-<8 hex>` (no host) counts as this host's."""
    m = _TMP_RE.match(name)
    if m is None:
        return None
    local = (m["host"] == host_id() if m["host"] else m["host4"] == _HOST if m["host4"] else True)
    return int(m.group(1)), int(m["start"]) if m["start"] else None, local


def abandoned(pid: int, start: int | None, local: bool, mtime: float) -> bool:
    """Whether a temp file or staging folder its writer named with (`pid`, `start`, written on this host) and
    last changed at `mtime` was left by a writer that is gone: on this host, `writer_alive` says so; a pid of
    another host means nothing here, so another host's entry is taken as abandoned only a day after its last
    change (a writer's own folder is older than that only if its machine died mid-write)."""
    if local:
        return not writer_alive(pid, start)
    return time.time() - mtime > _FOREIGN_AGE


def sweep_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Remove atomic-write temp files in `directory` whose writer is gone (`abandoned`: pid and start time on
    this host, a day's age for another host's); return them.

    Never raises: a folder we cannot list or a file we cannot delete (read-only share) is left.
    """
    removed = []
    try:
        names = [e.name for e in os.scandir(directory) if e.name.startswith(".")]
    except OSError:
        return removed
    for name in names:
        owner = temp_writer(name)
        if owner is None:
            continue
        p = Path(directory) / name
        with contextlib.suppress(OSError):
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and abandoned(*owner, st.st_mtime):
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
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        _flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX, timeout, path)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def folder_lock(directory: str | os.PathLike, *, timeout: float = 3600.0) -> Iterator[bool]:
    """Hold an exclusive `fcntl.flock` on the folder itself (no lock file is made in it); yields True.

    It excludes every other holder on this machine (processes, and threads: the lock belongs to the open
    file description) and nothing on other machines. On a folder shared over Linux NFS the lock is the
    client kernel's alone (NFS defines no flock for folders, so the kernel takes it locally), so a folder on
    a network file system (`/proc/self/mounts`: nfs, cifs, ceph, ...) yields False, holding nothing, as does
    one where flock on the folder fails (ENOLCK, EOPNOTSUPP, EINVAL, EBADF: some FUSE file systems): the
    caller then skips what needs the lock.
    Raises: TimeoutError after `timeout` seconds of waiting for another holder on this machine.
    """
    if mount_type(directory) in NETWORK_FS:
        yield False
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            _flock(fd, fcntl.LOCK_EX, timeout, directory)
            held = True
        except OSError as err:
            if err.errno not in (errno.EBADF, errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            held = False
        yield held
    finally:
        os.close(fd)           # closing the only descriptor of the lock releases it


def _flock(fd: int, op: int, timeout: float, what: str | os.PathLike) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
            return
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{what}: lock still held by another process after {timeout:g} s") from err
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
