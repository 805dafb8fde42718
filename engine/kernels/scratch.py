"""Memory the kernels keep between calls: reusable work buffers and weight forms derived once.

`Scratch`: named float32 (or other dtype) buffers, one set per model; layers run one at a time, so
a buffer is reused by every layer and only grows to the largest request (no page faults on fresh
memory per call). `thread_scratch()`: one set per thread, for work that runs whole images on the
kernel threads at once (engine.kernels.threads.in_part) and for the int8 kernels. `derived`: a kernel
form of weights (bias-augmented, Winograd-transformed, an int8 bound) computed once per weight array
and dropped with it.
"""
from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

_derived: dict[tuple, tuple[tuple[weakref.ref, ...], Any]] = {}
_local = threading.local()


class Scratch:
    """Reusable work buffers (im2col columns, padded inputs, GEMM outputs), by name and dtype."""

    def __init__(self) -> None:
        self._bufs: dict[str, np.ndarray] = {}
        self.owner = threading.get_ident()       # the thread that made it: the one that may use it (`mine`)

    def get(self, name: str, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        n = math.prod(shape)          # not np.prod: ~5 us per call, and kernels call this per band
        key = f"{name}:{np.dtype(dtype).str}"
        buf = self._bufs.get(key)
        if buf is None or buf.size < n:
            buf = np.empty(n, dtype)
            self._bufs[key] = buf
        return buf[:n].reshape(shape)

    def clear(self) -> None:
        self._bufs.clear()


def derived(kind: str, arrays: tuple[np.ndarray, ...], make: Callable[[], Any]) -> Any:
    """make(), cached per `kind` and identity of `arrays` (dropped when any of them dies).

    A model's prepared weights live as long as the model, so each form is built once. An array
    modified in place after its first use would keep its stale derived form: replace arrays,
    don't mutate them.
    """
    key = (kind,) + tuple(id(a) for a in arrays)
    hit = _derived.get(key)
    if hit is not None and all(r() is a for r, a in zip(hit[0], arrays)):
        return hit[1]
    value = make()
    refs = tuple(weakref.ref(a, lambda _r, key=key: _derived.pop(key, None)) for a in arrays)
    _derived[key] = (refs, value)
    return value


def mine(scratch: Scratch) -> Scratch:
    """`scratch` in the thread that made it, else this thread's own (`thread_scratch`): a model's buffers
    are never shared by two threads (a view's background worker beside the kernel's main thread)."""
    return scratch if getattr(scratch, "owner", None) == threading.get_ident() else thread_scratch()


def thread_scratch() -> Scratch:
    """This thread's own work buffers (kept with the thread: the kernel threads live as long as the process)."""
    s = getattr(_local, "scratch", None)
    if s is None:
        s = _local.scratch = Scratch()
    return s
