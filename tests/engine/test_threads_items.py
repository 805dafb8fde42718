"""parallel_items: every item exactly once on any thread count, a pool part that never started is not
waited for (cancelled), errors reach the caller."""
from __future__ import annotations

import threading
import time

import pytest

from engine.kernels import threads


@pytest.mark.parametrize("n", [1, 2])
def test_every_item_runs_once_and_an_unstarted_part_is_cancelled(n, monkeypatch):
    monkeypatch.setattr(threads, "_threads", n)
    seen: list[tuple[int, int]] = []
    lock = threading.Lock()

    def fn(part: int, i: int) -> None:
        with lock:
            seen.append((part, i))

    threads.parallel_items(500, fn)
    assert sorted(i for _, i in seen) == list(range(500))
    if n == 2:
        # hold the pool's only worker: the second part cannot start, the caller runs every item and
        # returns without waiting for it
        threads.parallel_items(2, lambda p, i: None)           # the pool exists
        gate = threading.Event()
        blocker = threads._pool.submit(gate.wait)
        threading.Timer(3.0, gate.set).start()                 # waiting for the part would take >= 3 s
        seen.clear()
        t = time.perf_counter()
        threads.parallel_items(50, fn)
        waited = time.perf_counter() - t
        gate.set()
        blocker.result()
        assert sorted(i for _, i in seen) == list(range(50)) and {p for p, _ in seen} == {0}
        assert waited < 2.0


def test_an_error_in_an_item_reaches_the_caller(monkeypatch):
    monkeypatch.setattr(threads, "_threads", 2)

    def fn(part: int, i: int) -> None:
        if i == 7:
            raise ValueError("item 7")

    with pytest.raises(ValueError, match="item 7"):
        threads.parallel_items(20, fn)
