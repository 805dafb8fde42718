"""Dask runs when workers die: the run retries to the in-process result, or stops with one clear error.

A worker process killed from outside (the OOM killer, a SIGKILL) is restarted by its nanny; what a run
broadcast before (a quantized model, Monte Carlo's images) must survive it, and a batch that kills every
worker it runs on must be named by its images. One 2-worker secure LocalCluster serves the module, its
scheduler giving up on a task after 2 deaths (Dask's default is 4) to keep the module fast; yolov3-tiny
runs at 160x160.
"""
from __future__ import annotations

import os
import re
import signal
import time

import pytest

pytest.importorskip("distributed")

from helpers import IMAGES, TINY_CFG, TINY_WEIGHTS  # noqa: E402

from engine.calib.collect import collect  # noqa: E402
from engine.errors import EngineError  # noqa: E402
from engine.quant.qmodel import quantize_model  # noqa: E402
from engine.scale.backends import SHARED_KEEP, DaskBackend, InProcess, blas_limit, secure_local_cluster  # noqa: E402
from engine.scale.backends import dask_backend as open_dask_backend  # noqa: E402  (the fixture takes the name)
from engine.scale.dask_arrivals import NO_WORKER_WAIT  # noqa: E402
from engine.scale.evaluate import evaluate  # noqa: E402
from engine.scale.sources import ModelSource, load_source  # noqa: E402

# a hang (a run that never ends, a reply that never comes) fails the test, however long a loaded host takes
pytestmark = pytest.mark.timeout(600)

SOURCE = ModelSource(str(TINY_CFG), str(TINY_WEIGHTS), size=(160, 160))
PHOTOS = sorted(IMAGES.glob("*.jpg"))
WAIT = 60          # s for an event a test waits for (a cancel reaching the scheduler, a batch starting)
BLOCK_MAX = 300    # s a blocked batch waits for its release at most (a test that died never releases it)


def blocked_until(release: str, started: str | None = None) -> None:
    """In a task: mark `started` (a file) if given, then wait until the file `release` exists (the test's
    release, written after the event under test: a run made long by construction, not by a sleep) or the
    worker closes (a closing worker would otherwise wait for the batch, then be killed by its nanny)."""
    from distributed import get_worker
    from distributed.core import Status
    worker = get_worker()
    if started is not None:
        open(started, "a").close()
    deadline = time.monotonic() + BLOCK_MAX
    while not os.path.exists(release) and worker.status == Status.running and time.monotonic() < deadline:
        time.sleep(0.02)


def wait_for(condition, what: str, timeout: float = WAIT) -> None:
    """Poll `condition()` until true; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def model():
    return load_source(SOURCE)


@pytest.fixture(scope="module")
def qmodel(model):
    with blas_limit(1):
        return quantize_model(model, collect(model, PHOTOS[:2], progress=False), "minmax", per_channel=True)


@pytest.fixture(scope="module")
def dask_backend():
    with open_dask_backend("local:2", scheduler_kwargs={"allowed_failures": 1}) as backend:
        yield backend


def kill_worker(client, address: str) -> None:
    """SIGKILL one worker process (as the OOM killer does) and wait until its nanny has a new one running."""
    pid = client.run(os.getpid, workers=[address])[address]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while address in client.scheduler_info(n_workers=-1)["workers"] or \
            len(client.scheduler_info(n_workers=-1)["workers"]) < 2:
        assert time.monotonic() < deadline, "the nanny did not restart the killed worker"
        time.sleep(0.1)


def test_runs_after_every_worker_was_killed_equal_in_process(model, qmodel, dask_backend):
    """Both workers killed one after the other (each restarted) between two runs: the quantized model the
    first run broadcast is on no live worker; the next run must still get it (it failed with Dask's
    FutureCancelledError "lost dependencies", and so did every later run on this backend)."""
    client = dask_backend.client
    first = evaluate(SOURCE, qmodel, PHOTOS[:2], ("int",), dask_backend, batch_size=1)
    for address in sorted(client.scheduler_info(n_workers=-1)["workers"]):
        kill_worker(client, address)
    again = evaluate(SOURCE, qmodel, PHOTOS[:2], ("int",), dask_backend, batch_size=1)
    ref = evaluate(model, qmodel, PHOTOS[:2], ("int",), InProcess(blas_threads=1))
    assert again.to_dict() == first.to_dict() == ref.to_dict()
    assert sum(map(len, ref.detections["int"])) > 0


def test_a_batch_that_kills_every_worker_it_runs_on_is_named(dask_backend):
    """A batch whose task kills its worker process each time (an image that exhausts memory) ends the run
    with one EngineError naming that batch's images and what happened, not Dask's KilledWorker about a
    task key; the cluster stays usable."""
    def task(batch: list) -> list:
        if any(name.endswith("huge.png") for name in batch):
            os._exit(1)              # as the OOM killer ends a worker: no exception, no reply
        return [len(name) for name in batch]

    items = ["a.jpg", "/data/set/huge.png", "c.jpg", "d.jpg"]
    with pytest.raises(EngineError) as err:
        dask_backend.map_batches(task, items, batch_size=1, desc="evaluating")
    msg = str(err.value)
    # the batch Dask gives up on may be one queued on the same worker: the message names the others not done
    assert "huge.png (item 2 of 4)" in msg and "died 2 times" in msg and msg.startswith("evaluating: "), msg
    assert dask_backend.map_batches(task, ["a.jpg", "bb.jpg"], batch_size=1) == [[5], [6]]


def test_an_error_cancels_the_batches_not_yet_run(dask_backend, tmp_path):
    """A batch failing (a bad image) ends the run at once; the batches still queued are cancelled, not left
    running on the cluster for as long as the exception (and its traceback's futures) is kept, as a notebook
    keeps the last one."""
    release = str(tmp_path / "release")

    def blocked_or_bad(batch: list) -> list:
        if batch == ["bad.jpg"]:
            raise EngineError("bad.jpg: not a decodable image")
        blocked_until(release)       # not done before the check below: only a cancel takes them away
        return batch

    items = ["bad.jpg"] + [f"{k}.jpg" for k in range(12)]
    try:
        with pytest.raises(EngineError, match="bad.jpg: not a decodable image") as err:
            dask_backend.map_batches(blocked_or_bad, items, batch_size=1)

        def ours(dask_scheduler) -> list:
            return [k for k, ts in dask_scheduler.tasks.items() if str(k).startswith("blocked_or_bad-")]
        # the cancel is a message the scheduler handles when it gets to it: wait for what it does
        wait_for(lambda: dask_backend.client.run_on_scheduler(ours) == [],
                 "batches left on the cluster after the error")
        assert err.value is not None                 # the exception (and its traceback) still held here
    finally:
        open(release, "w").close()   # the batch running on a worker when cancelled returns, freeing its thread


def test_compare_on_dask_reports_every_run_and_stops_when_cancelled(model, qmodel, dask_backend):
    """compare(on_run=, cancel=) on a Dask backend: the same units as in this process (per image FLOAT,
    then each method in HYBRID and INT), reported as each batch's rows arrive, the total known up front;
    `cancel` stops the run between batches (on_run was never called and cancel never asked)."""
    import threading

    from engine.errors import Cancelled
    from engine.scale.compare import compare, run_units
    with blas_limit(1):
        stats = collect(model, PHOTOS[:2], progress=False)
    calls = []
    table = compare(SOURCE, stats, PHOTOS[:2], ["minmax", "log2"], progress=False, backend=dask_backend,
                    batch_size=1, on_run=lambda done, total, what: calls.append((done, total, what)))
    n = run_units(2, 2)
    assert sorted(r.method for r in table.results) == ["log2", "minmax"]
    assert [c[1] for c in calls] == [n] * (n + 1) and [c[0] for c in calls] == list(range(n + 1))
    assert calls[-1][2] == "done"
    assert {c[2] for c in calls[:-1]} == {f"{unit}, image {k} of 2" for k in (1, 2) for unit in
                                          ("FLOAT", "minmax: HYBRID", "minmax: INT", "log2: HYBRID", "log2: INT")}

    stop, seen = threading.Event(), []

    def on_run(done, total, what):
        seen.append(done)
        stop.set()                      # Cancel clicked as the first batch's rows arrive
    with pytest.raises(Cancelled):
        compare(SOURCE, stats, PHOTOS[:4], ["minmax"], progress=False, backend=dask_backend, batch_size=1,
                on_run=on_run, cancel=stop)
    assert seen == [0], seen


def test_shared_objects_are_released_beyond_the_most_recent(dask_backend):
    """Every compare ships its methods' quantized models (~9 MB each for yolov3-tiny): a backend kept for a
    notebook session must not keep every one it ever shipped alive on the cluster and in the scheduler."""
    import numpy as np
    arrays = [np.full(1000, k, np.int8) for k in range(3 * SHARED_KEEP)]
    refs = [dask_backend.share(a) for a in arrays]
    assert np.array_equal(refs[-1].result(timeout=WAIT).obj, arrays[-1])
    del refs

    def held(dask_scheduler) -> int:
        return sum(str(k).startswith("held-") for k in dask_scheduler.tasks)
    # releases reach the scheduler as messages: wait for their effect, not for a fixed time
    wait_for(lambda: dask_backend.client.run_on_scheduler(held) <= SHARED_KEEP,
             f"more than {SHARED_KEEP} shared objects still held by the scheduler")
    again = dask_backend.share(arrays[0])             # released, then shipped again when asked for
    assert np.array_equal(again.result(timeout=WAIT).obj, arrays[0])


def test_a_bad_image_is_one_clear_error_as_in_process(model, qmodel, dask_backend, tmp_path):
    """A file that is no image among good ones: the ImageError naming it, as in this process, and no worker
    "Compute Failed" log with a traceback beside it (a notebook shows the workers' stderr in the cell)."""
    from engine.errors import ImageError
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    images = [PHOTOS[0], bad, PHOTOS[1]]
    with pytest.raises(ImageError) as here:
        evaluate(model, qmodel, images, ("int",), InProcess(blas_threads=1))
    with pytest.raises(ImageError) as there:
        evaluate(SOURCE, qmodel, images, ("int",), dask_backend, batch_size=1)
    assert str(there.value) == str(here.value) and "notes.jpg: not a decodable image" in str(here.value)
    logs = dask_backend.client.get_worker_logs()
    failed = [msg for records in logs.values() for _, msg in records if "notes.jpg" in msg]
    assert failed == [], failed


def test_a_cluster_closed_during_a_run_is_one_clear_error(tmp_path):
    """The cluster shut down (another cell, the machine's admin) while a run waits: an EngineError naming the
    batch and what happened (it was Dask's FutureCancelledError "cancelled for reason: unknown", or, with
    the run cancelling its batches on a closed client, ClosedClientError about a "cancel-keys message")."""
    import threading
    cluster, client = secure_local_cluster(n_workers=2)
    release, started = str(tmp_path / "release"), tmp_path / "started"
    try:
        backend = DaskBackend(client)

        def blocked(batch: list) -> list:
            blocked_until(release, str(started))    # the run lasts until the cluster is closed, by construction
            return batch
        open(release, "w").close()
        assert backend.map_batches(blocked, ["a.jpg"]) == [["a.jpg"]]     # the workers are up
        os.remove(release)
        started.unlink()
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["result"] = backend.map_batches(blocked, [f"{k}.jpg" for k in range(12)], batch_size=1,
                                                        desc="calibrating")
            except Exception as err:            # noqa: BLE001  (asserted below)
                outcome["error"] = err
        runner = threading.Thread(target=run)
        runner.start()
        wait_for(started.exists, "no batch of the run started")    # the run is under way: close its cluster
        cluster.close()                 # (a closing worker's batch returns: the run gets at most 2 of its 12)
        runner.join(WAIT)
        assert not runner.is_alive(), "the run still waits after its cluster was closed"
        err = outcome.get("error")
        assert isinstance(err, EngineError), outcome
        assert re.search(r"^calibrating: Dask cancelled the batch of .*\.jpg \(item \d+ of 12\)"
                         r".*the cluster or this client was closed", str(err)), str(err)
    finally:
        open(release, "w").close()
        client.close()
        cluster.close()


def test_secure_cluster_serves_no_plain_http_pages_about_the_run(dask_backend):
    """secure_local_cluster says "no dashboard", yet its scheduler served /info (workers, their logs: image
    paths and errors) and /json over plain, unauthenticated HTTP on 127.0.0.1:8787, to every local user of a
    shared host, beside the TLS it sets up so they cannot reach the cluster (and a second user's cluster
    warned that 8787 was taken)."""
    import urllib.error
    import urllib.request

    def http_ports(dask_scheduler) -> list[int]:
        server = dask_scheduler.http_server
        return [s.getsockname()[1] for s in getattr(server, "_sockets", {}).values()] if server else []
    ports = dask_backend.client.run_on_scheduler(http_ports)
    assert 8787 not in ports, ports
    for port in ports:
        for page in ("info/main/workers.html", "json/counts.json"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/{page}", timeout=10).read()
            assert err.value.code == 404, page


def test_two_threads_sharing_one_object_ship_it_once(dask_backend, monkeypatch):
    """Two runs in one kernel (two views' Runs, a compare beside a Monte Carlo) share one backend: the second
    thread's `share` of the same payload, made while the first thread's submit is under way, must wait for it
    and get the same future, not see the key missing and ship the payload a second time."""
    import threading

    import numpy as np
    real, calls = dask_backend.client.submit, []
    second = threading.Event()

    def submit(*args, **kwargs):
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            second.wait(1.0)         # the other thread's share runs now: to a second submit, or to the lock
        else:
            second.set()
        return real(*args, **kwargs)
    monkeypatch.setattr(dask_backend.client, "submit", submit)
    payload, refs = np.arange(1000, dtype=np.int8), {}
    threads = [threading.Thread(target=lambda n=n: refs.setdefault(n, dask_backend.share(payload, key=("race", 1))),
                                name=f"run-{n}") for n in range(2)]
    threads[0].start()
    while not calls:
        time.sleep(0.005)
    threads[1].start()
    for t in threads:
        t.join(10)
    assert len(calls) == 1, f"shipped {len(calls)} times by {calls}"
    assert refs[0].key == refs[1].key and np.array_equal(refs[1].result(timeout=60).obj, payload)


def test_threads_sharing_the_same_objects_get_each_its_own_future():
    """Threads sharing the same objects (more of them than SHARED_KEEP) at once: one thread moving a key to the
    most recent end (pop, insert) or evicting it must not leave another thread that saw the key a KeyError or
    the future of another object."""
    import threading

    class Client:          # the scheduler plays no part in the bookkeeping raced here
        def scheduler_info(self, n_workers=-1):
            return {"workers": {}}

        def register_plugin(self, plugin, name=None):
            pass

        def submit(self, fn, payload, pure=False):
            return ("future", payload.obj)

    class Yielding(dict):  # another thread runs between a check of the bookkeeping and its pop
        def pop(self, *args):
            time.sleep(0.0005)
            return super().pop(*args)
    backend = DaskBackend(Client())
    backend._shared = Yielding()
    objects = [("object", k) for k in range(SHARED_KEEP + 2)]
    errors = []

    def run(n: int) -> None:
        try:
            for k in range(300):
                obj = objects[(k * (n + 1)) % len(objects)]
                ref = backend.share(obj, key=obj)
                assert ref == ("future", obj), (ref, obj)
        except Exception as err:     # noqa: BLE001  (every thread's failure is reported below)
            errors.append(repr(err))
    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


def test_a_run_with_no_worker_left_ends_with_one_clear_error():
    """Every worker gone mid-run while the scheduler stays (workers stopped or their machine gone, a cluster scaled
    to 0): the run waited forever behind a frozen progress bar. It must end within the backend's wait with one
    EngineError naming the scheduler and how far the run got, the batches received before kept on the error."""
    import threading
    cluster, client = secure_local_cluster(n_workers=2)
    try:
        backend = DaskBackend(client)
        backend.no_worker_wait = 1.5            # the default gives a nanny's restart or a scale-up more time

        def slow(batch: list) -> list:
            time.sleep(0.5)
            return [name.upper() for name in batch]
        assert backend.map_batches(slow, ["a.jpg"]) == [["A.JPG"]]     # the workers are up
        items = [f"{k}.jpg" for k in range(16)]
        outcome: dict = {}
        arrived = threading.Event()

        def run() -> None:
            try:
                outcome["result"] = backend.map_batches(slow, items, batch_size=1, desc="evaluating",
                                                        on_batch=lambda first, batch: arrived.set())
            except Exception as err:            # noqa: BLE001  (asserted below)
                outcome["error"] = err
        runner = threading.Thread(target=run)
        runner.start()
        assert arrived.wait(20), "no batch arrived"    # some batches done, most not (8 rounds of 0.5 s)
        cluster.scale(0)
        t0 = time.monotonic()
        runner.join(WAIT)
        waited = time.monotonic() - t0
        assert not runner.is_alive(), "the run still waits with no worker left"
        err = outcome.get("error")
        assert isinstance(err, EngineError), outcome
        address = client.scheduler.address
        msg = str(err)
        assert msg.startswith(f"evaluating: no Dask worker left on {address} for 1.5 s"), msg
        done = [k for k, part in enumerate(err.partial) if part is not None]
        assert f"the run stopped after {len(done)} of 16 items" in msg and 0 < len(done) < 16, msg
        assert all(err.partial[k] == [items[k].upper()] for k in done)
        # the backend's 1.5 s wait, not Dask's for ever nor the default's 30 s (the message above names the 1.5 s;
        # the time only tells the two apart, with room for a loaded host's slow scale-down)
        assert waited < NO_WORKER_WAIT, waited
    finally:
        client.close()
        cluster.close()
