"""Where batches run: `InProcess` (the reference) or `DaskBackend` (a Dask cluster), same results.

    from engine.scale.backends import DaskBackend, secure_local_cluster
    from engine.scale.evaluate import collect_stats, evaluate
    cluster, client = secure_local_cluster(n_workers=2)          # TLS, processes, 1 thread each
    stats = collect_stats("yolov3-tiny", images, DaskBackend(client))   # == collect(model, images)
    res = evaluate("yolov3-tiny", qmodel, images, ("hybrid", "int"), DaskBackend(client))

A backend maps a task function over batches of images (`map_batches`), ships an object once
(`share`) and says what a worker loads for a model (`portable`); the algorithms that run on it
(engine/scale/evaluate.py, engine/scale/compare.py, engine/scale/montecarlo.py) are written once.
One task is a *batch* of images (a task costs ~2 ms of scheduling here, an image ~0.1-0.3 s).
Equality: calibration histograms merge exactly (engine/calib/histogram.py) and per-image
detections are computed by the same code in every backend, so the aggregated numbers
(`CalibrationStats`, `detection_agreement`) are identical, not merely close, provided the
BLAS thread count is the same: OpenBLAS may partition a GEMM differently with 2 threads than
with 1 and change a float's last bit. Workers run 1 BLAS thread when workers >= cores, so the
reference is `InProcess(blas_threads=1)` (or `with blas_limit(1):`). The conv kernels give the same bits on
any count provided they can make BLAS single-threaded in the thread that runs them: a worker's BLAS plugin
gives threadpoolctl's control of the count up after setting it, so its task thread can (`release_blas_control`).

`dask` is imported only by `DaskBackend` / `secure_local_cluster`; the engine runs without it.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import uuid
import warnings
from concurrent.futures import CancelledError
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from engine.calib.collect import image_list
from engine.errors import EngineError
from engine.kernels.threads import blas_limit, blas_threads, set_blas_threads  # noqa: F401  (public here too)
from engine.kernels.threads import release_blas_control
from engine.scale.dask_arrivals import NO_WORKER_WAIT, NoWorkers, arrivals, result_of
from engine.scale.sources import ModelSource, Payload, as_source, held, source_of, token

log = logging.getLogger(__name__)
SHARED_KEEP = 8     # objects a DaskBackend keeps shipped (workers rebuild 8 quantized models each: sources.py)
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


# ------------------------------------------------------------------------------ BLAS threads
# blas_limit / blas_threads / set_blas_threads: the engine's one control, engine.kernels.threads


def threads_per_worker_blas(n_workers: int, cores: int | None = None) -> int:
    """BLAS threads per worker: 1 when workers >= cores (no oversubscription), else cores // workers."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, n_workers))


# ------------------------------------------------------------------------------ backends
PROGRESS_BATCH = 8       # items per batch under a progress bar when none is asked: 4 per kernel thread, one ORT feed
class InProcess:
    """Runs batches one after another in this process (the reference every backend must equal).

    `blas_threads`: run the batches with that many BLAS threads (then restore). Use the workers'
    count (1) when results must equal a Dask run bit for bit: OpenBLAS may split a GEMM differently
    with more threads, e.g. yolov3-tiny's 1x1 head convs at 224x224 then differ in the last bit.
    `runtime`: what computes the forwards, "numpy" | "onnxruntime" | "auto" (engine/export/ort_backend.py).
    """
    n_workers = 1

    def __init__(self, blas_threads: int | None = None, runtime: str = "numpy") -> None:
        from engine.export.ort_backend import check_backend
        self.blas_threads = blas_threads
        self.runtime = check_backend(runtime)

    def share(self, obj: Any, key: Any = None) -> Any:
        return obj

    def portable(self, model_source: Any) -> Any:
        return model_source                       # a Model object is used as is

    def map_batches(self, fn: Callable, items: Sequence, batch_size: int | None = None,
                    progress: bool = False, desc: str = "batches", args: tuple = (),
                    on_batch: Callable[[int, list], object] | None = None) -> list:
        """[fn(*args, batch) for each batch of `batch_size` items], in order. `on_batch(first, batch)` after
        each batch's result (`first`: the index of its first item); it may raise to stop the run.
        Without `batch_size` one batch holds every item (the kernel threads share them out), except under
        a progress bar: batches of PROGRESS_BATCH, or the bar would sit at 0 until the end. The results are
        the same bits either way (each item runs alone on a thread)."""
        size = batch_size or (min(PROGRESS_BATCH, len(items)) if progress else len(items)) or 1
        batches = split(items, size)
        bar = _bar(progress, len(items), desc)
        out = []
        limit = blas_limit(self.blas_threads) if self.blas_threads else contextlib.nullcontext()
        try:
            with limit:
                for k, b in enumerate(batches):
                    out.append(fn(*args, b))
                    if bar is not None:
                        bar.update(len(b))
                    if on_batch is not None:
                        on_batch(k * size, b)
        finally:
            if bar is not None:
                bar.close()
        return out


def quiet_large_graph_warning() -> None:
    """Silence distributed's "Sending large graph" warning, which `share` meets on purpose (its payload is the
    graph, sent once). A lasting filter, added once (filterwarnings drops an equal one first): a
    warnings.catch_warnings around each submit swapped the process-wide filter list while other threads ran,
    and its restore dropped any filter they added meanwhile. `module` keeps the filter to distributed's client."""
    warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning,
                            module=r"distributed\.client")


class DaskBackend:
    """Runs batches as tasks on a `dask.distributed.Client` (results returned in batch order).

    On creation it limits BLAS threads on every worker (now and joining later, via a worker
    plugin) to `threads_per_worker_blas(workers on that host, host cores)` unless `blas_threads`
    is given: several single-threaded workers per host must not each start a BLAS pool per core.
    `runtime`: what computes the forwards on the workers (engine/export/ort_backend.py).
    `no_worker_wait`: seconds a run waits while the cluster has no worker at all, then stops (map_batches).
    """

    def __init__(self, client, blas_threads: int | None = None, runtime: str = "numpy",
                 no_worker_wait: float = NO_WORKER_WAIT) -> None:
        from engine.export.ort_backend import check_backend
        self.client = client
        self.no_worker_wait = no_worker_wait
        self.runtime = check_backend(runtime)
        self._shared: dict[int, Any] = {}
        # one backend serves every run of a kernel (two views' Runs, a compare beside a Monte Carlo): without it
        # a second thread shipped a payload being shipped again, or popped a key another was about to return
        self._share_lock = threading.Lock()
        quiet_large_graph_warning()
        from distributed.diagnostics.plugin import WorkerPlugin

        class BlasLimit(WorkerPlugin):
            name = "qwidgets-blas-threads"

            def __init__(self, n: int | None, per_host: int) -> None:
                self.n, self.per_host = n, per_host

            def setup(self, worker) -> None:
                n = self.n or threads_per_worker_blas(self.per_host * worker.state.nthreads)
                set_blas_threads(n)
                # setup runs on the worker's event loop, the batches on its task thread: kept, threadpoolctl's
                # control of OpenBLAS would stay with this thread, the task's kernels could not make BLAS
                # single-threaded and would sum in other orders than this process (local:1's mean IoU 1e-7 off)
                release_blas_control()

        hosts: dict[str, int] = {}
        for w in client.scheduler_info(n_workers=-1)["workers"].values():
            hosts[w["host"]] = hosts.get(w["host"], 0) + 1
        client.register_plugin(BlasLimit(blas_threads, max(hosts.values(), default=1)),
                               name="qwidgets-blas-threads")

    @property
    def n_workers(self) -> int:
        return max(1, len(self.client.scheduler_info(n_workers=-1)["workers"]))

    def share(self, obj: Any, key: Any = None) -> Any:
        """Ship `obj` to the cluster once per `key` (default: the object's identity); tasks receive the
        worker's copy (a worker fetches it once from another). The `SHARED_KEEP` most recently used stay
        shipped; an older one is released, and shipped again if asked for.

        It is the result of a task that returns it, not scattered data: the scheduler keeps that task, so a
        copy lost with its worker (killed, out of memory; the nanny starts a new one) is made again. Scattered
        data lost with every worker that held it is gone for good: the run, and every later run on this
        backend that needs it, failed with Dask's "cancelled for reason: lost dependencies". Thread-safe: runs
        in several threads may share through one backend."""
        key = ("id", id(obj)) if key is None else key
        with self._share_lock:             # held through the submit: the payload is shipped once
            if key not in self._shared:    # obj is kept alive beside its future, so ids stay unique
                self._shared[key] = (obj, self.client.submit(held, Payload(obj), pure=False))
            self._shared[key] = self._shared.pop(key)          # the most recently used last
            while len(self._shared) > SHARED_KEEP:
                # each compare ships new quantized models: kept all, a session's cluster and scheduler would fill
                # up. Dropping our future is safe: tasks submitted with it keep it until they are done.
                self._shared.pop(next(iter(self._shared)))
            return self._shared[key][1]

    def portable(self, model_source: Any) -> Any:
        src = as_source(model_source)
        return source_of(src) if not isinstance(src, ModelSource) else src

    def map_batches(self, fn: Callable, items: Sequence, batch_size: int | None = None,
                    progress: bool = False, desc: str = "batches", args: tuple = (),
                    on_batch: Callable[[int, list], object] | None = None) -> list:
        """[fn(*args, batch) for each batch], one task per batch, in batch order. `args` may hold
        futures from `share` (Dask resolves them to the worker's copy). `on_batch(first, batch)` in this
        process as each batch's result arrives, in the order they finish (`first`: the index of its first
        item); it may raise to stop the run (Cancelled).

        A worker that dies running a batch is replaced (its nanny) and the batch runs again; when workers
        die on the same batch more often than the scheduler allows (`allowed-failures`), EngineError names
        that batch's items. On any error (a task's own, Ctrl-C) the run's batches are cancelled: those not
        done would otherwise keep the cluster busy while the exception (a notebook keeps the last) is alive.
        With no worker left on the cluster for `no_worker_wait` seconds the run stops (Dask would wait for one
        forever); that error's `partial` holds the batches' results received so far (None for the others).

        Raises:
            EngineError: workers kept dying on one batch (killed from outside, out of memory), the cluster
                cancelled a batch (closed, restarted) or had no worker left; and any EngineError a task raised
                (a bad image)."""
        from distributed import KilledWorker
        size = batch_size or default_batch_size(len(items), self.n_workers)
        batches = split(items, size)
        name = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", "batch")
        futures = [self.client.submit(refusing, fn, *args, b, key=f"{name}-{uuid.uuid4().hex}") for b in batches]
        index = {f.key: k for k, f in enumerate(futures)}
        out: list = [None] * len(futures)
        bar = _bar(progress, len(items), desc)
        try:
            try:
                for fut, given in arrivals(self.client, futures, self.no_worker_wait):
                    k = index[fut.key]
                    try:
                        out[k] = result_of(fut, given)
                    except KilledWorker as err:
                        raise _killed(desc, err.allowed_failures + 1, k, batches, futures, size) from err
                    except CancelledError as err:        # not by this run: it cancels only after it stopped
                        raise EngineError(f"{desc}: Dask cancelled the batch of {_batch_names(batches, k, size)} "
                                          f"({err}): the cluster or this client was closed or restarted during the "
                                          "run; the run stopped, no result is kept") from err
                    if isinstance(out[k], Refused):
                        raise out[k].error
                    if bar is not None:
                        bar.update(len(batches[k]))
                    if on_batch is not None:
                        on_batch(k * size, batches[k])
            except NoWorkers as err:
                received = sum(len(b) for b, r in zip(batches, out) if r is not None)
                stop = EngineError(f"{desc}: {err}: the run stopped after {received} of {len(items)} items")
                stop.partial = out
                raise stop from err
        except BaseException:
            with contextlib.suppress(Exception):     # a closed client or cluster: the first error is the news
                self.client.cancel(futures)
            raise
        finally:
            if bar is not None:
                bar.close()
        return out


@dataclass(frozen=True)
class Refused:
    """What a task returns instead of raising an EngineError (bad input: an image, a model file)."""
    error: EngineError


def refusing(fn: Callable, *args: Any) -> Any:
    """fn(*args) on a worker, an EngineError returned as `Refused` for the client to raise: raised on the
    worker, it also printed Dask's "Compute Failed" log with a traceback (a notebook shows the workers'
    stderr), beside the one clear error the same input gives in this process."""
    try:
        return fn(*args)
    except EngineError as err:
        return Refused(err)


def default_batch_size(n_items: int, n_workers: int) -> int:
    """~4 batches per worker (load balance) but at most 16 images per task."""
    return max(1, min(16, math.ceil(n_items / (4 * max(1, n_workers)))))


def _killed(desc: str, deaths: int, k: int, batches: list[list], futures: list, size: int) -> EngineError:
    """The error of a run whose batch `k` Dask gave up on, its workers having died `deaths` times."""
    total = sum(map(len, batches))
    # a worker dies with every batch queued on it: the batch Dask gave up on may be a bystander
    others = [(j * size + i, item) for j, f in enumerate(futures) if j != k and f.status != "finished"
              for i, item in enumerate(batches[j])]
    beside = (f"; the cause may also be a batch queued on the same workers, among those not finished: "
              f"{_names(others, total)}" if others else "")
    return EngineError(f"{desc}: Dask worker processes died {deaths} times while running the batch of "
                       f"{_batch_names(batches, k, size)} (killed from outside, or out of "
                       f"memory: see the workers' logs){beside}; the run stopped, no result is kept")


def _batch_names(batches: list[list], k: int, size: int) -> str:
    return _names(list(enumerate(batches[k], k * size)), sum(map(len, batches)))


def _names(indexed: Sequence[tuple[int, Any]], total: int, most: int = 4) -> str:
    """(index, item) pairs as an error names them: "dog.jpg (item 3 of 40)", a non-file by its place."""
    names = [f"{Path(item).name} (item {k + 1} of {total})" if isinstance(item, (str, Path))
             else f"item {k + 1} of {total}" for k, item in indexed]
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def split(items: Sequence, size: int) -> list[list]:
    items = list(items)
    return [items[k:k + size] for k in range(0, len(items), max(1, size))]


def _bar(progress: bool, total: int, desc: str):
    if not progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="img")


# ------------------------------------------------------------------------------ what tasks receive
def shippable_items(images) -> list:
    """Images as shippable items: paths become strings, PIL images / arrays pass as they are."""
    return [str(i) if isinstance(i, Path) else i for i in image_list(images, "evaluation")]


def label_of(item: Any, k: int) -> str:
    return Path(item).name if isinstance(item, (str, Path)) else f"image{k}"


def qmodel_ref(qmodel: Any, backend) -> Any:
    """What a task receives for a quantized model (engine.scale.sources.resolve_qmodel turns it back):
    the object itself in this process, else its file path or its arrays broadcast once."""
    if qmodel is None or isinstance(backend, InProcess) and not isinstance(qmodel, (str, Path)):
        return qmodel
    if isinstance(qmodel, (str, Path)):
        return ("path", str(Path(qmodel).resolve()))
    arrays = qmodel.to_arrays()               # int8 weights: ~4x smaller than the objects' float copies
    key = token(arrays)
    return ("arrays", key, backend.share(arrays, key=("qmodel", key)))


# ------------------------------------------------------------------------------ clusters
def secure_local_cluster(n_workers: int = 2, blas_threads: int | None = None, **kwargs: Any):
    """(LocalCluster, Client): TLS between all parties (`security=True`: temporary certificates, so
    other local users cannot submit code), one process per worker, one task thread each, BLAS
    threads per worker = `threads_per_worker_blas(n_workers)` unless given, no dashboard (unless
    `dashboard_address` is given: the scheduler's plain-HTTP pages then serve every local user).

    The BLAS limit goes into the environment before the worker processes start (OpenBLAS reads
    it once, at import) and again through the DaskBackend plugin.
    """
    import dask
    from distributed import Client, LocalCluster
    n = blas_threads or threads_per_worker_blas(n_workers)
    env = {k: str(n) for k in BLAS_ENV}
    opts = dict(n_workers=n_workers, processes=True, threads_per_worker=1, security=True, env=env,
                dashboard_address=None, silence_logs=logging.WARNING)
    config = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in env.items()}
    if "dashboard_address" not in kwargs:
        # without a dashboard the scheduler still serves /info (workers, their logs) and /json over plain HTTP
        # on :8787, to every local user: only its health check stays, on a free loopback port
        opts["scheduler_kwargs"] = {"dashboard_address": "127.0.0.1:0", **kwargs.pop("scheduler_kwargs", {})}
        config["distributed.scheduler.http.routes"] = ["distributed.http.health"]
    opts.update(kwargs)
    with dask.config.set(config):
        cluster = LocalCluster(**opts)
    try:
        client = Client(cluster)
    except Exception:
        cluster.close()
        raise
    return cluster, client


def dask_workers(spec: str, option: str = "--dask") -> int | None:
    """N for "local:N" (1..64), None for a scheduler address ("tcp://host:8786"); raises ArgumentError for
    anything else. The form alone, so a command checks it before its slow work (nothing is started here)."""
    from engine.errors import ArgumentError
    if spec.startswith("local:"):
        n = spec[len("local:"):]
        if not (n.isascii() and n.isdigit() and 1 <= int(n) <= 64):
            raise ArgumentError(f"{option} {spec!r}: expected local:N with 1 <= N <= 64 worker processes")
        return int(n)
    if "://" in spec and spec.split("://", 1)[1]:
        return None
    raise ArgumentError(f"{option} {spec!r}: expected local:N (N worker processes here) or a scheduler "
                        "address such as tcp://host:8786")


@contextlib.contextmanager
def dask_backend(spec: str, runtime: str = "numpy", option: str = "--dask", **cluster_options: Any):
    """A DaskBackend for `spec`: "local:N" starts N worker processes on this machine (`secure_local_cluster`,
    with `cluster_options`) and closes them afterwards; a scheduler address ("tcp://host:8786") is connected to and left running.
    Raises ArgumentError for another spec, EngineError when distributed (or for local:N, cryptography) is
    missing, a tls:// address has no certificates in Dask's configuration, or the scheduler is not reached (10 s)."""
    try:
        import distributed
    except ImportError:
        raise EngineError(f"{option}: needs the 'distributed' package (pip install 'qwidgets[dask]')") from None
    n = dask_workers(spec, option)
    if n is not None:
        try:        # the cluster's temporary TLS certificates; distributed does not depend on it
            import cryptography  # noqa: F401
        except ImportError:
            raise EngineError(f"{option} {spec}: a local cluster's TLS needs the 'cryptography' package "
                              "(pip install cryptography)") from None
        cluster, client = secure_local_cluster(n, **cluster_options)
    else:
        cluster = None
        if spec.startswith("tls://") and distributed.Security().tls_ca_file is None:
            # the Client would raise a bare TypeError about a missing ssl_context: the CLI has no certificate
            # options, so Dask's own configuration is where this client's certificates come from
            raise EngineError(f"{option} {spec}: a tls:// scheduler needs this client's certificates: set "
                              "DASK_DISTRIBUTED__COMM__TLS__CA_FILE, DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT and "
                              "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY (engine.scale.backends.temporary_tls writes "
                              "them for a scheduler started by hand)")
        try:
            client = distributed.Client(spec, timeout="10s")
        except (OSError, TimeoutError, ValueError) as err:
            raise EngineError(f"{option} {spec}: cannot reach the Dask scheduler ({err})") from None
    try:
        yield DaskBackend(client, runtime=runtime)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def temporary_tls(folder: str | Path) -> tuple[Any, list[str]]:
    """Self-signed TLS for a `dask scheduler` + `dask worker` pair started by hand.

    Writes `dask-tls.pem` (certificate, also the CA) and `dask-tls.key` (mode 0600) into `folder`
    and returns (a `Security` for the Client, the CLI options for both commands):

        dask scheduler --protocol tls --host 127.0.0.1 <opts>;  dask worker tls://127.0.0.1:8786 <opts>
    """
    from distributed.security import Security
    sec = Security.temporary()
    folder = Path(folder)
    cert, key = folder / "dask-tls.pem", folder / "dask-tls.key"
    from engine.atomic import atomic_write
    for path, text in ((cert, sec.tls_ca_file), (key, sec.tls_client_key)):
        atomic_write(path, text, mode=0o600)   # created 0600: the key is never readable by others
    client_sec = Security(tls_ca_file=str(cert), tls_client_cert=str(cert), tls_client_key=str(key),
                          require_encryption=True)
    return client_sec, ["--tls-ca-file", str(cert), "--tls-cert", str(cert), "--tls-key", str(key)]
