"""The one BLAS thread control of the engine, and the kernels' own worker threads.

BLAS threads are read and set through `threadpoolctl` (`blas_threads`, `set_blas_threads`,
`blas_limit`): whatever BLAS NumPy (and SciPy) loaded, no ctypes guessing at library symbols.

Why the kernels run their own threads: a 2-thread OpenBLAS splits every GEMM call in two and
joins, and its worker busy-waits after each call; a second NumPy thread then competes with it,
and under CPU contention every join waits for a descheduled thread (measured 5-15x slower medians
at load 10 on 2 cores). So inside `own_threads()` the kernels run BLAS single-threaded and spread
*whole* work items (bands, Winograd GEMMs, row blocks, channel blocks) over as many threads as BLAS
was allowed, pulled dynamically from a shared counter. NumPy releases the GIL inside GEMMs,
copies and ufuncs. If no BLAS can be controlled, BLAS keeps its own threads and the NumPy passes
run in the calling thread.

Determinism is the kernels' business (gemm.SPLIT): threads only decide who runs which piece.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from typing import Iterator

import numpy as np
from threadpoolctl import ThreadpoolController

PARALLEL_MIN = 1 << 16   # elements below which a pass runs in the calling thread only
# the GIL switch interval while the kernel threads run: a thread whose NumPy call has returned waits
# for the GIL while the other runs Python between its calls, up to the interval (5 ms by default)
# when that stretch releases nothing; 0.5 ms: forwards 1.5-2.2% faster (yolov3-tiny FLOAT / INT, yolov3)
SWITCH_INTERVAL = 0.0005
_threads = 1             # threads for parallel_for/parallel_items: set by own_threads()
_local = threading.local()  # .busy: this thread already runs a part of a parallel job
_numpy_blas: list | None = None
_turn = threading.RLock()  # one Python thread's kernels at a time (own_threads)


def _blas_libs(numpy_only: bool = False) -> list:
    """threadpoolctl's controllers of the loaded BLAS libraries; with numpy_only, the one NumPy's
    wheel bundles (in numpy.libs/ beside numpy/) if it can be told apart, else all of them."""
    libs = ThreadpoolController().select(user_api="blas").lib_controllers
    if not numpy_only:
        return libs
    site = os.path.realpath(os.path.dirname(os.path.dirname(np.__file__)))
    own = [lib for lib in libs if os.path.realpath(os.path.dirname(lib.filepath)) in
           (os.path.join(site, "numpy.libs"), os.path.join(site, "numpy", ".dylibs"))]
    return own or libs


def _kernel_blas() -> list:
    """NumPy's BLAS (looked up once: the kernels toggle it around every conv)."""
    global _numpy_blas
    if _numpy_blas is None:
        _numpy_blas = _blas_libs(numpy_only=True)
    return _numpy_blas


def blas_threads() -> int:
    """BLAS threads of this process, as NumPy's BLAS has them (0 if no BLAS can be controlled)."""
    libs = _blas_libs(numpy_only=True)
    return int(libs[0].get_num_threads()) if libs else 0


def set_blas_threads(n: int) -> int:
    """Limit every loaded BLAS to `n` threads; returns the count now in effect (0 if none)."""
    for lib in _blas_libs():
        lib.set_num_threads(int(n))
    return blas_threads()


def release_blas_control() -> None:
    """Let the next Python thread that sets BLAS's count set it (this thread gave its count up).

    threadpoolctl (3.6 and later, OpenBLAS on its own threads) lets only one Python thread change
    OpenBLAS's count, the first that set it, and silently ignores every other thread's `set_num_threads`.
    A thread that sets the count for work other threads run (a Dask worker's plugin, on the worker's
    event loop, for the tasks on its task threads) calls this after, or those threads' kernels cannot
    make BLAS single-threaded (`own_threads`) and sum in other orders. Does nothing for a thread that
    holds no control, or on a threadpoolctl without that rule.
    """
    for cls in {type(lib) for lib in _blas_libs()}:
        clear = getattr(cls, "clear_controlling_thread", None)
        if clear is not None:
            clear()


@contextlib.contextmanager
def blas_limit(n: int) -> Iterator[int]:
    """Run a block with `n` BLAS threads, then restore the previous count.

    Float64 reductions such as the SQNR's dot products may differ in the last bit when BLAS
    splits them over threads; a reference run that must match single-threaded Dask workers bit
    for bit uses `with blas_limit(1):`. (The conv kernels give the same bits on any count.)
    """
    before = blas_threads()
    try:
        yield set_blas_threads(n)
    finally:
        if before:
            set_blas_threads(before)


class own_threads:
    """Context: BLAS single-threaded, kernels on their own threads (as many as BLAS had), and the GIL
    switch interval at most SWITCH_INTERVAL meanwhile (restored after).

    Python threads take turns: a second thread's kernel (a view's background worker, or a JupyterLab subshell
    handling widget messages, beside the kernel's main thread) waits until the first one's is done, so it never
    runs with the BLAS and thread settings the first one restores halfway. Parts of a job (helpers) run under
    their caller's turn. Known gap: threadpoolctl ignores BLAS limits set from a thread other than the first
    that set them, so another thread's GEMMs keep OpenBLAS's own threads and can differ from the main thread's
    in the last bits (8.6e-5 on yolov3-tiny's layer 0), and under CPU load they run n kernel threads over an
    n-thread BLAS (a yolov3-tiny INT run 0.8-2.1 s on such a thread against 0.1 s on the main one, stop 34).
    Setting OpenBLAS's count from there, globally or per thread (`openblas_set_num_threads_local`, stop 33),
    or pinning it to one thread for good from the first call (stop 34), made the bits equal and the thread
    fast but stalled the yolov3 Explorer's colour switch for up to 30 s in JupyterLab; running that thread's
    kernels inline instead gained nothing (docs/performance.md). So none is done. A Dask worker's task thread
    is not such a thread: the worker's BLAS plugin gives the control up (`release_blas_control`), so the
    first task thread takes it here.
    """

    def __enter__(self) -> None:
        self.restore = 0
        self.turn = not getattr(_local, "busy", False)
        if self.turn:
            _turn.acquire()
        try:
            self._setup()
        except BaseException:
            if self.turn:
                _turn.release()
            raise

    def _setup(self) -> None:
        global _threads
        if _threads == 1 and not getattr(_local, "busy", False):
            libs = _kernel_blas()
            n = libs[0].get_num_threads() if libs else 1
            if n > 1:
                self.restore = n
                for lib in libs:
                    lib.set_num_threads(1)
                _threads = n
                self.switch = sys.getswitchinterval()
                sys.setswitchinterval(min(self.switch, SWITCH_INTERVAL))

    def __exit__(self, *exc: object) -> None:
        global _threads
        if self.restore:
            _threads = 1
            for lib in _kernel_blas():
                lib.set_num_threads(self.restore)
            sys.setswitchinterval(self.switch)
        if self.turn:
            _turn.release()


def in_part() -> bool:
    """True inside a part of a parallel job (its nested jobs run inline, in this thread): work that keeps
    buffers per model must take this thread's own (engine.kernels.scratch.thread_scratch) there."""
    return getattr(_local, "busy", False)


def kernel_threads() -> int:
    """Threads the parallel passes use right now (inside own_threads: what BLAS had; else 1)."""
    return _threads


class _Helper:
    """One kernel thread, asleep on a lock between jobs: a hand-off is a lock release to post a job and
    one acquire to wait for it (ThreadPoolExecutor's Future, Condition and queue cost more per pass)."""

    def __init__(self) -> None:
        self.go, self.done, self.state = threading.Lock(), threading.Lock(), threading.Lock()
        self.go.acquire()
        self.done.acquire()
        self.job: Callable[[], None] | None = None
        self.error: BaseException | None = None
        threading.Thread(target=self._loop, name="qw-kernel", daemon=True).start()

    def _loop(self) -> None:
        while True:
            self.go.acquire()
            with self.state:
                job, self.job = self.job, None
            if job is None:            # revoked before this thread woke up
                continue
            try:
                job()
            except BaseException as e:  # noqa: BLE001 - handed to the caller in wait()
                self.error = e
            # drop the job before sleeping: its closure holds the caller's arrays (a whole comparison's
            # quantized models, when the job was images), which would live on until the next job
            job = None
            self.done.release()

    def post(self, job: Callable[[], None]) -> None:
        with self.state:
            self.job = job
        if self.go.locked():           # unlocked: a wake-up is still pending (a revoked job's); it takes this one
            self.go.release()

    def wait(self, revoke: bool) -> None:
        """Wait for the posted job; with `revoke`, take it back instead if it has not started."""
        if revoke:
            with self.state:
                if self.job is not None:
                    self.job = None
                    return
        self.done.acquire()
        if self.error is not None:
            e, self.error = self.error, None
            raise e


_helpers: list[_Helper] = []
_posting = threading.Lock()  # the helpers serve one caller at a time; another caller runs its parts inline


def _run_parts(parts: int, worker: Callable[[int], None], dynamic: bool = False) -> None:
    """worker(0) here and worker(1..parts-1) on the helper threads; nested jobs inside a part run inline.

    `dynamic`: the workers pull from a shared queue, so when worker(0) returns the work is all taken;
    a helper part not started by then is revoked instead of waited for (on a busy host, waiting for
    a descheduled thread to start only to find nothing left costs a time slice per pass)."""
    def part(i: int) -> None:
        _local.busy = True
        try:
            worker(i)
        finally:
            _local.busy = False

    if not _posting.acquire(blocking=False):
        for i in range(parts):         # the same pieces, in this thread: the same results
            part(i)
        return
    try:
        _run_posted(parts, part, dynamic)
    finally:
        _posting.release()


def _run_posted(parts: int, part: Callable[[int], None], dynamic: bool) -> None:
    while len(_helpers) < parts - 1:
        _helpers.append(_Helper())

    for i in range(1, parts):
        _helpers[i - 1].post(lambda i=i: part(i))
    try:
        part(0)
    finally:
        error = None
        for h in _helpers[:parts - 1]:
            try:
                h.wait(dynamic)
            except BaseException as e:  # noqa: BLE001 - every helper is waited for, then the first error
                error = error or e
        if error is not None:
            raise error


def parallel_for(n: int, fn: Callable[[int, int], None], work: int) -> None:
    """Run fn(lo, hi) over [0, n) split into _threads contiguous parts (inline if `work` is small).

    `work` is the number of elements the whole job touches; the split only pays off for big jobs.
    """
    parts = min(_threads, n) if work >= PARALLEL_MIN and not getattr(_local, "busy", False) else 1
    if parts <= 1:
        fn(0, n)
        return
    bounds = [n * i // parts for i in range(parts + 1)]
    _run_parts(parts, lambda i: fn(bounds[i], bounds[i + 1]))


def parallel_items(count: int, fn: Callable[[int, int], None]) -> None:
    """fn(part, item) for item in [0, count), items pulled dynamically by _threads parts.

    `part` (0.._threads-1) names per-thread scratch buffers. A descheduled thread only delays its
    current item: the others keep pulling.
    """
    parts = min(_threads, count) if not getattr(_local, "busy", False) else 1
    if parts <= 1:
        for i in range(count):
            fn(0, i)
        return
    items = iter(range(count))  # next() on a range iterator is atomic under the GIL

    def worker(part: int) -> None:
        for i in items:
            fn(part, i)

    _run_parts(parts, worker, dynamic=True)


def parallel_map(count: int, fn: Callable[[int], object]) -> list:
    """[fn(0), ..., fn(count - 1)], in order, the items pulled by the kernel threads (`own_threads`): for
    whole images side by side, each image's kernels single-threaded (their nested jobs run inline)."""
    out: list = [None] * count

    def item(_part: int, k: int) -> None:
        out[k] = fn(k)

    with own_threads():
        parallel_items(count, item)
    return out
