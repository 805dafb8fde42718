"""Layer results shared between executors of several quantized models run on the same input.

A method comparison runs HYBRID, INT and the local statistics of every method on each image. Where
the methods agree (same weights, same input grid: a YOLO's first layers, whose input scale is fixed
by the [0, 1] image and whose first output scale is often the same), their layers get identical
inputs and compute identical results; a `LayerMemo` lets the second and third method take them
instead of recomputing (convolutions, quantization of the FLOAT inputs, error statistics).

Keys hold the *identity* of input arrays (every run of a shared prefix hands the same objects on)
plus every number the result depends on (scales, zero points, a digest of the layer's integer
parameters). Every array whose id is in a stored key is kept alive by the memo, so no id can be reused
while the memo lives; lookups with ids of other live objects can only match their own entries. Create
one per input (e.g. per image) and drop it afterwards; past `budget` bytes of kept results it stops
storing (lookups go on), so memory stays bounded whatever the model.
"""
from __future__ import annotations

import hashlib
from typing import Any, Hashable

import numpy as np

from engine.quant.intcache import kept

BUDGET = 160 << 20


def _digest(a: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(a).view(np.uint8).reshape(-1), digest_size=16).digest()


def lq_token(lq) -> tuple | None:
    """Everything of a LayerQuant an integer layer path reads, as a hashable value (None: no LayerQuant).
    The weights' digest is kept per weight array (engine/quant/intcache.py): weights never change in place."""
    if lq is None:
        return None
    w = kept("int-w-digest", lq.w_q, lambda: np.frombuffer(_digest(lq.w_q), np.uint8).copy())
    return (w.tobytes(), lq.w_q.shape, str(lq.w_q.dtype), _digest(np.asarray(lq.w_scale, np.float64)),
            _digest(np.asarray(lq.b_q)), float(lq.in_scale), lq.scheme)


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return sum(_nbytes(v) for v in vars(value).values()) if hasattr(value, "__dict__") else 0


class LayerMemo:
    """Results keyed by (kind, input identities, parameters); see the module docstring."""

    def __init__(self, budget: int = BUDGET) -> None:
        self.budget = budget
        self.used = 0
        self.hits = 0
        self._entries: dict[Hashable, Any] = {}
        self._pinned: dict[int, Any] = {}

    def get(self, key: Hashable) -> Any:
        hit = self._entries.get(key)
        if hit is not None:
            self.hits += 1
        return hit

    def put(self, key: Hashable, value: Any, *pins: Any) -> None:
        """Store `value` under `key`; `pins`: every object whose id is in the key (kept alive)."""
        if key in self._entries:
            return
        size = _nbytes(value) + sum(p.nbytes for p in pins if isinstance(p, np.ndarray) and id(p) not in self._pinned)
        if self.used + size > self.budget:
            return
        for p in pins:
            self._pinned.setdefault(id(p), p)
        self._entries[key] = value
        self.used += size
