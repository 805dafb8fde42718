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
        threads.parallel_items(2, lambda p, i: None)           # the helper thread exists
        helper, gate = threads._helpers[0], threading.Event()
        helper.post(gate.wait)
        while helper.job is not None:                          # until the helper runs the blocker
            time.sleep(0.001)
        threading.Timer(3.0, gate.set).start()                 # waiting for the part would take >= 3 s
        seen.clear()
        t = time.perf_counter()
        threads.parallel_items(50, fn)
        waited = time.perf_counter() - t
        gate.set()
        helper.wait(revoke=False)                              # the blocker's end
        assert sorted(i for _, i in seen) == list(range(50)) and {p for p, _ in seen} == {0}
        assert waited < 2.0


def test_an_error_in_an_item_reaches_the_caller(monkeypatch):
    monkeypatch.setattr(threads, "_threads", 2)

    def fn(part: int, i: int) -> None:
        if i == 7:
            raise ValueError("item 7")

    with pytest.raises(ValueError, match="item 7"):
        threads.parallel_items(20, fn)


def test_a_second_caller_runs_its_parts_inline_and_errors_leave_the_helpers_usable(monkeypatch):
    """The helper threads serve one caller at a time: a parallel_for from another Python thread while
    they are busy runs every range in its own thread (same pieces, same results) instead of posting
    over the first caller's job; after an item's error the next pass still waits for its helper part."""
    monkeypatch.setattr(threads, "_threads", 2)
    inside, release = threading.Event(), threading.Event()
    got: dict[str, list] = {"first": [], "second": []}

    def slow(part: int, i: int) -> None:
        got["first"].append(i)
        inside.set()
        release.wait(5)

    first = threading.Thread(target=threads.parallel_items, args=(2, slow))
    first.start()
    assert inside.wait(5)
    names: list[str] = []
    threads.parallel_for(4, lambda lo, hi: (got["second"].append((lo, hi)),
                                            names.append(threading.current_thread().name)), 1 << 20)
    release.set()
    first.join(5)
    assert sorted(got["first"]) == [0, 1] and got["second"] == [(0, 2), (2, 4)]
    assert set(names) == {threading.current_thread().name}
    with pytest.raises(ValueError, match="part 1"):
        threads.parallel_for(4, lambda lo, hi: (_ for _ in ()).throw(ValueError("part 1")) if lo else None,
                             1 << 20)
    seen: list[int] = []
    threads.parallel_for(2, lambda lo, hi: (time.sleep(0.05 * lo), seen.append(lo)), 1 << 20)
    assert sorted(seen) == [0, 1]       # the slow helper part was waited for, not a stale release


def test_a_finished_job_does_not_keep_what_it_referenced(monkeypatch):
    # the helper thread used to hold its last job (and the closure's arrays: a whole comparison's
    # quantized models) until the next job arrived
    import gc
    import weakref
    monkeypatch.setattr(threads, "_threads", 2)

    class Payload:
        pass

    payload = Payload()
    ref = weakref.ref(payload)
    ran, helper_in = [], threading.Event()

    def fn(part: int, i: int, payload=payload) -> None:
        ran.append(part)
        if part == 1:
            helper_in.set()
        elif ran.count(0) == 1:              # the caller's first item waits for the helper to take one: a
            helper_in.wait(30)               # helper woken late (a loaded host) found every item gone

    threads.parallel_items(8, fn)
    assert 1 in ran                          # the helper ran some of them
    del payload, fn
    for _ in range(50):                      # the helper drops the job right after its last item
        gc.collect()
        if ref() is None:
            break
        time.sleep(0.01)
    assert ref() is None
