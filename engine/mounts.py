"""Which file system holds a path: a lock that only one machine sees (flock on NFS) must not be trusted there."""
from __future__ import annotations

import os

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
