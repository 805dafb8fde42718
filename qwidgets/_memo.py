"""IdentityMemo: results computed from tensors, remembered while those very tensors are alive.

The layer panel shows the same tensors again and again: after a Step, layer i's input is layer i-1's
output (shown one click earlier); a click on a visited layer shows everything again. The session keeps
each output as one object until the layer runs again (an edit, a reset, another image or mode replace
it), so the identity of those objects is the "run id": a result is reused only while every object it
was computed from is the very same, still-alive object (checked through weak references, so a freed
tensor's recycled `id` never matches and the memo keeps no tensor alive).
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Any, Callable, Hashable, Sequence


class IdentityMemo:
    """`get(tokens, extra, compute)`: compute() once per (identity of every token, extra), LRU-bounded."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self.hits = self.misses = 0
        self._d: "OrderedDict[tuple, tuple[tuple, Any]]" = OrderedDict()

    def get(self, tokens: Sequence[Any], extra: Hashable, compute: Callable[[], Any]) -> Any:
        key = (tuple(id(t) for t in tokens), extra)
        hit = self._d.get(key)
        if hit is not None and all(ref() is t for ref, t in zip(hit[0], tokens)):
            self._d.move_to_end(key)
            self.hits += 1
            return hit[1]
        self.misses += 1
        value = compute()
        self._d[key] = (tuple(weakref.ref(t) for t in tokens), value)
        while len(self._d) > self.size:
            self._d.popitem(last=False)
        return value

    def clear(self) -> None:
        self._d.clear()
