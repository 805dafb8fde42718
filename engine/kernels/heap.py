"""The C heap policy of the process: keep freed memory for the next forward instead of returning it.

glibc serves an allocation above its mmap threshold (128 KiB at first, adapting up to 32 MiB) with a
fresh mapping and unmaps it on free, and trims the heap top beyond its trim threshold. A forward
allocates every layer's output and its work buffers anew, so each forward (and the NMS after it)
touches fresh pages: on this 2-core VM random-weight yolov3's forward ran 407-421 ms and its
decode + NMS 46-50 ms that way, against 338-362 and 30 ms with freed memory kept in the heap
(`benchmarks/bench_nms.py`, interleaved). `keep_freed_memory` raises both thresholds, once per process
(`import engine` calls it). The cost: memory freed below the peak stays with the process (up to
`TRIM_BYTES` at the heap top) until it exits. `QW_MALLOC=system` in the environment keeps glibc's
defaults; elsewhere than glibc (macOS, musl, Windows) nothing changes.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

MMAP_BYTES = 1 << 30          # allocations up to 1 GiB come from the heap, which keeps them when freed
TRIM_BYTES = 1 << 30          # free memory at the heap top beyond 1 GiB is still given back
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3       # glibc's mallopt parameter numbers (malloc.h)
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Apply the policy above once; True when glibc accepted it."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("QW_MALLOC", "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):         # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES))
    return _applied
