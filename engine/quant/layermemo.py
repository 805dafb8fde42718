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

Accumulators: two methods can feed a conv the same int8 input with the same weights and still requantize
to different output grids (yolov3-tiny's layer 2: its input grid is layer 0's, the same for minmax, kl
and mse; its output grid is not). The layer results differ, the int32 accumulators do not: for the
layers `acc_layers` names, the integer conv keeps its accumulators here (`sharing_acc`, read by
engine/quant/intops.py) and the next method runs only its epilogue on them.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Hashable, Iterator

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

    def __init__(self, budget: int = BUDGET, share_acc: frozenset[int] = frozenset()) -> None:
        self.budget = budget
        self.share_acc = share_acc          # layers whose accumulators are kept (acc_layers)
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


_acc_memo: ContextVar[LayerMemo | None] = ContextVar("layermemo_acc", default=None)


@contextmanager
def sharing_acc(memo: LayerMemo) -> Iterator[None]:
    """Inside: the integer conv kernels keep and take their accumulators in `memo` (`acc_memo`)."""
    token = _acc_memo.set(memo)
    try:
        yield
    finally:
        _acc_memo.reset(token)


def acc_memo() -> LayerMemo | None:
    return _acc_memo.get()


def acc_layers(model, qmodels) -> frozenset[int]:
    """Layers where two of `qmodels` (quantized models of `model`) run the same integer conv (same int8
    parameters, same input grids) into different output grids: their accumulators are worth keeping.
    Where the output grids agree too, the whole layer result is shared already."""
    out = set()
    for layer in model.layers:
        i = layer.index
        groups: dict[tuple, set] = {}
        for qm in qmodels:
            lq = qm.layers.get(i)
            if lq is None:
                continue
            names = ["input" if s < 0 else str(s) for s in layer.inputs]
            grids = tuple((qm.scales.get(n), qm.zero_points.get(n, 0)) for n in names)
            groups.setdefault((qm.profile, lq_token(lq), grids), set()).add(qm.scales.get(str(i)))
        if any(len(outs) > 1 for outs in groups.values()):
            out.add(i)
    return frozenset(out)
