"""What a cache keys a file's content on (`file_stamp`), and an image set's (`image_set_stamp`): any rewrite
changes them, including one in the same clock tick, which an mtime alone does not see.

Used by the Dask workers' model caches (sources.py) and by the Quantization tab, whose cached
calibration statistics must not outlive the images they were made from.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

# Timestamps come from a coarse clock (a few ms on Linux, 1-2 s on some file systems): a file
# rewritten in the same tick keeps its mtime and ctime. Within this long of its last change a
# file is stamped by its content too.
RACY_NS = 3_000_000_000


def file_stamp(path: str) -> tuple:
    """What a per-process cache keys a file's content on: any rewrite changes it.

    (path, device, inode, size, mtime_ns, ctime_ns), plus the content's sha256 while the file's last
    change (ctime) is less than RACY_NS old. An atomic write replaces the inode; a rewrite in place
    moves ctime, which no `os.utime` can set back, but only by a clock tick: a change in the same
    tick as the previous one is seen by the content hash, and a change after the racy window has a
    later ctime than any stamp taken then (the file's changes are ordered by ctime).
    """
    st = os.stat(path)
    stamp = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if st.st_ctime_ns > time.time_ns() - RACY_NS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        stamp += (h.hexdigest(),)
    return stamp


def image_set_stamp(images) -> str:
    """One digest of the `file_stamp` of every image path in `images` (in order; an image given as an
    array or a PIL image has no file and is skipped by the caller's key): a file added, removed, renamed
    or rewritten in place, even within the same clock tick, gives another digest."""
    h = hashlib.sha256()
    for image in images:
        h.update(repr(file_stamp(str(Path(image)))).encode())
    return h.hexdigest()
