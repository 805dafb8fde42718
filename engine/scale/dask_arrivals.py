"""A Dask run's futures as they finish, watched for a cluster left without workers (Dask would wait forever).

With every worker gone and the scheduler still up (workers stopped or killed without a nanny to restart them,
their machines gone, a cluster scaled to 0) Dask keeps the tasks queued for a worker that may join later: a run
iterating `as_completed` then never ends, and a notebook shows a frozen progress bar. `arrivals` yields the
futures as `as_completed` does and raises `NoWorkers` once the scheduler has reported no worker for
`no_worker_wait` seconds; the backend turns that into one EngineError saying how far the run got. The results are
fetched in the background too (`with_results`): a worker removed while this process fetched a result from it
makes Dask compute that batch again, and a `future.result()` waiting for it would wait as long.
"""
from __future__ import annotations

import time
from typing import Any, Iterator

# a nanny restarts a killed worker in 1-3 s, an adaptive cluster adds one in seconds to minutes: 30 s bounds the
# wait of a run no worker will ever take, without ending one that only waits for a restart
NO_WORKER_WAIT = 30.0
POLL = 0.05             # s between looks for finished futures (local, cheap)
CHECK_EVERY = 1.0       # s at most between questions to the scheduler (a round trip each)


class NoWorkers(Exception):
    """The scheduler at `address` has had no worker for `waited` seconds (`why`: what it answered)."""

    def __init__(self, address: str, waited: float, why: str) -> None:
        super().__init__(f"no Dask worker left on {address} for {waited:g} s ({why})")
        self.address, self.waited, self.why = address, waited, why


def scheduler_address(client: Any) -> str:
    return getattr(getattr(client, "scheduler", None), "address", None) or "the Dask scheduler"


def worker_count(client: Any) -> tuple[int, str]:
    """(workers the scheduler knows, 0 when it does not answer; what it said)."""
    try:
        n = len(client.scheduler_info(n_workers=1)["workers"])    # one worker listed is enough to know
    except Exception as err:      # noqa: BLE001  (closed client, lost connection: no worker will run the tasks)
        return 0, f"the scheduler did not answer: {type(err).__name__}: {err}"
    return n, "workers stopped or killed without a restart, or the cluster scaled down"


def arrivals(client: Any, futures: list, no_worker_wait: float = NO_WORKER_WAIT) -> Iterator[tuple[Any, Any]]:
    """(future, what it gave) for `futures` in the order they finish, those cancelled or failed too: pass both to
    `result_of`.

    Raises:
        NoWorkers: none finished while the scheduler reported no worker for `no_worker_wait` seconds."""
    from distributed import as_completed
    pending = as_completed(futures, with_results=True, raise_errors=False)
    check = min(CHECK_EVERY, no_worker_wait / 3)
    since, next_check = None, time.monotonic() + check
    while True:
        ready = pending.next_batch(block=False)
        if ready:
            since = None
            yield from ready
            continue
        if pending.is_empty():
            return
        now = time.monotonic()
        if now >= next_check:
            n, why = worker_count(client)
            next_check = time.monotonic() + check
            if n:
                since = None
            elif since is None:
                since = now
            elif now - since >= no_worker_wait:
                raise NoWorkers(scheduler_address(client), no_worker_wait, why)
        time.sleep(POLL)


def result_of(future: Any, given: Any) -> Any:
    """The result `arrivals` fetched, or the future's failure raised (a task's error, KilledWorker, cancelled):
    for those `given` is Dask's record of the failure, and `future.result()` raises it without a fetch."""
    return future.result() if future.status in ("error", "cancelled") else given
