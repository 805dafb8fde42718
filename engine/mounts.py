"""Which file system holds a path, and which machine's pids a process sees: a lock that only one machine sees
(flock on NFS) must not be trusted there, nor a pid written into a shared folder by another machine."""
from __future__ import annotations

import functools
import hashlib
import os
import socket

NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "fuse.glusterfs", "fuse.sshfs",
                        "9p", "afs", "lustre", "gpfs", "beegfs", "fuse.cephfs"})


def mount_type(path: str | os.PathLike, mounts: str = "/proc/self/mounts") -> str:
    """The file system type of the mount holding `path` (the longest mount point above it), "" if unknown."""
    try:
        with open(mounts, encoding="utf-8", errors="replace") as f:
            table = [line.split()[1:3] for line in f if len(line.split()) >= 3]
    except OSError:
        return ""
    real = os.path.realpath(path)
    best, kind = -1, ""
    for point, fstype in table:
        point = point.replace("\\040", " ")
        if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) > best:
            best, kind = len(point), fstype
    return kind


@functools.lru_cache(maxsize=None)
def host_id() -> str:
    """8 hex digits naming where this process's pids mean something: its kernel's boot id and pid namespace
    (Linux), else the host name. Writers put it in the names they leave in shared folders (temp files,
    workspace staging folders), so that a process on another machine of a hub sharing the same NFS home, or
    in another container of one machine, never judges a live writer's pid by its own process table.

    Stable for the life of the boot and namespace (the host name alone is not: it can change, and cloned
    machines or containers often share one); the same in every process that can see this one's pid."""
    parts = []
    for read in (lambda: open("/proc/sys/kernel/random/boot_id").read().strip(),
                 lambda: os.readlink("/proc/self/ns/pid")):
        try:
            parts.append(read())
        except OSError:
            parts.append("")
    if not all(parts):          # no /proc (another OS), or a sandbox hiding it: the host name decides
        parts.append(socket.gethostname())
    return hashlib.sha1("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:8]
