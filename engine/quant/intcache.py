"""Kernel forms of int8 weights (float32 GEMM weights, integer Winograd weights) kept per weight array
within a memory budget.

Made on every use they cost 5-15% of an INT forward, so they are kept while their int8 array lives
(edits replace arrays, never write into them). A yolov3 would keep ~0.37 GiB of them on top of its
float and int8 weights; beyond QW_INT_CACHE_MB (default 128) MiB they are made per use instead, so a
big model's INT session stays within its memory goal and only runs slower.
"""
from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Callable

import numpy as np

BUDGET = int(float(os.environ.get("QW_INT_CACHE_MB", "128")) * (1 << 20))
_lock = threading.Lock()
_kept: dict[tuple[str, int], tuple[weakref.ref, Any, int]] = {}
_used = [0]


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, tuple):
        return sum(v.nbytes for v in value if isinstance(v, np.ndarray))
    return sum(v.nbytes for v in vars(value).values() if isinstance(v, np.ndarray))


def kept(kind: str, array: np.ndarray, make: Callable[[], Any]) -> Any:
    """make(), kept per `kind` and identity of `array` while it lives and the budget allows."""
    key = (kind, id(array))
    hit = _kept.get(key)
    if hit is not None and hit[0]() is array:
        return hit[1]
    value = make()
    size = _nbytes(value)
    with _lock:
        hit = _kept.get(key)
        if hit is not None and hit[0]() is array:
            # another thread made it meanwhile: keep one. (Replacing its entry dropped the replaced weak
            # reference uncalled, so its bytes stayed counted: the budget filled with nothing kept.)
            return hit[1]
        if _used[0] + size > BUDGET:
            return value

        def drop(_ref, key=key) -> None:
            with _lock:
                gone = _kept.pop(key, None)
                if gone is not None:
                    _used[0] -= gone[2]

        _kept[key] = (weakref.ref(array, drop), value, size)
        _used[0] += size
    return value


def used_bytes() -> int:
    return _used[0]


def drop_oldest(cache: dict) -> None:
    """Evict the oldest entry of a bounded module cache of the int8 paths. Images run side by side on the
    kernel threads (engine.kernels.threads.parallel_map), so another thread may have evicted it, or added one,
    between the two steps: then there is nothing to do."""
    try:
        cache.pop(next(iter(cache)))
    except (KeyError, RuntimeError, StopIteration):
        pass

