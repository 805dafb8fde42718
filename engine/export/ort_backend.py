"""Which runtime computes a batch evaluation's forwards: the NumPy engine or ONNX Runtime.

    run = forward_on("onnxruntime", model, qmodel, "int")     # ORT's integer kernels (profile onnxruntime)
    dets = detect_outputs(model, run(pre.x), pre)               # == the NumPy INT run's detections

`backend="numpy"` (the default) is the engine itself. `"onnxruntime"` runs FLOAT as the exporter's float
graph (engine/export/onnx_float.py, BN folded: head outputs within 1e-4 relative of ours) and INT as its
integer graph (engine/export/onnx_int8.py: QLinearConv/ConvInteger, bit-exact with our INT executor when the
quantized model's profile is `onnxruntime`, so the detections are identical; with int8 weights on a VNNI
host, uint8 elsewhere: `signed_weights`). What ORT cannot compute the
NumPy engine's way raises an EngineError saying why and what to use: HYBRID, INT under another profile,
INT under a profile whose device this host's ORT is not (`Profile.host_mismatch`: `avx2_u8s8` on a VNNI CPU,
whose ORT sums the pairs that profile saturates exactly), layers kept FLOAT between int8 layers, layers the
exporter has no ONNX form for. `"auto"` runs each mode on
ORT when it can and on NumPy otherwise. STEP, CROSS and editing always run on NumPy.

The detection heads ([yolo], [region]) are left out of the ONNX graphs ("raw" heads) and run by the
engine's own layer code on ORT's head inputs, so decoding sees the same activations as a NumPy run.
Sessions are built in memory (no file is written) and cached per (model, quantized model, mode, float
layers, input size, outputs, threads); ORT's intra-op threads = the engine's BLAS thread count, with
spinning off (a busy shared host), and ORT's full graph optimization (ENABLE_ALL: FLOAT still within
1e-4, INT still identical). INT results do not depend on the thread count (integer sums); FLOAT gave
the same bits on 1 and 2 threads too (tests/engine/test_ort_backend.py). A batch of 2+ images with 2+
threads runs instead on a single-threaded session, one image per thread side by side (`run_split`): on
2 cores 1.05-1.11x the images/s of one 2-thread session (benchmarks/bench_throughput.py), same bits.
A static batch axis, or spinning (scoped to runs by `session.force_spinning_stop`), measured no faster in
any layout on this shared host and spinning costs CPU (benchmarks/bench_ort_sessions.py, docs/performance.md).

Batches: the graphs have a symbolic batch axis, so a run takes one (3, H, W) input (outputs (C, H, W),
as before) or a batch (N, 3, H, W) (outputs (N, C, H, W), as `Model.forward`); image k of a batch gives
the bits of a batch-of-one run of image k (ORT runs a conv image by image). `run.batch` is the batch a
caller should feed (`BATCH`, fewer when every layer's output is kept, so that a batch's outputs fit in
`BATCH_BYTES`); NumPy forwards have none (`detect_each` runs their images side by side on the kernel
threads). `forward_each(run, xs)` yields each image's outputs, batching when the run has a `batch`: what
batch evaluation (engine/scale/) loops over.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from engine.errors import ArgumentError, EngineError, UnsupportedError
from engine.quant.modes import Mode

BACKENDS = ("numpy", "onnxruntime", "auto")
ORT = "onnxruntime"
CACHE_SIZE = 6
BATCH = 8                      # measured: benchmarks/bench_throughput.py (docs/performance.md)
BATCH_BYTES = 256 << 20        # a batch's kept outputs at most (all_outputs: yolov3 runs one image per call)
_SESSIONS: "OrderedDict[tuple, Any]" = OrderedDict()
_LOCK = threading.Lock()       # a view's worker thread and the notebook may ask for sessions at once
_POOL: ThreadPoolExecutor | None = None   # run_split's helper threads (engine BLAS threads - 1)


def check_backend(name: Any) -> str:
    """The runtime name, or ArgumentError listing the valid ones."""
    if name not in BACKENDS:
        raise ArgumentError(f"backend={name!r}: expected one of {', '.join(BACKENDS)}")
    return name


def split_backend(backend: Any) -> tuple[Any, str]:
    """(where batches run, runtime) from a `backend` argument: a runtime name (or None) runs in this
    process (None is returned: the caller's InProcess()); an InProcess / DaskBackend object brings its
    own `runtime` attribute (default numpy)."""
    if backend is None or isinstance(backend, str):
        return None, check_backend(backend or "numpy")
    return backend, check_backend(getattr(backend, "runtime", "numpy"))


def ort_missing() -> str | None:
    """Why ORT cannot run here at all (a package missing), or None."""
    for mod, why in (("onnxruntime", "pip install onnxruntime"), ("onnx", "pip install 'qwidgets[reference]'")):
        try:
            __import__(mod)
        except ImportError:
            return f"the '{mod}' package is not installed ({why})"
    return None


def why_not(model, qmodel, mode: str, float_layers: Sequence[int] | None = None) -> str | None:
    """Why `mode` cannot run on ONNX Runtime with the NumPy engine's results, or None if it can.
    (A layer the exporter has no ONNX form for is found when the graph is built.)"""
    missing = ort_missing()
    if missing:
        return missing
    if mode == Mode.FLOAT:
        return None
    if mode == Mode.HYBRID:
        return "HYBRID (int8 weights on float activations) has no ONNX Runtime form"
    from engine.export.onnx_int8 import FORMAT, INT_KINDS
    from engine.quant.executor import Executor
    from engine.quant.profiles import get_profile
    profile = get_profile(qmodel.profile)
    if profile.exportable != FORMAT:
        return (f"INT under profile '{qmodel.profile}' is not what ORT's integer kernels compute (they compute the "
                f"'onnxruntime' profile's rules): quantize with profile='onnxruntime' (--profile onnxruntime)")
    # an avx2_u8s8 model on a VNNI host: this ORT sums the pairs exactly, not as the device the profile models
    if (host := profile.host_mismatch()) is not None:
        return f"INT under profile '{qmodel.profile}' is not what this host's ONNX Runtime computes: {host}"
    ex = Executor(model, qmodel, mode, float_layers)
    inner = [i for i, l in enumerate(model.layers) if l.kind in INT_KINDS and ex.precision(i) == "float"]
    if inner:
        return (f"layers {inner} run FLOAT between int8 layers (mixed precision); the integer ONNX graph cannot "
                f"hold them bit-exactly")
    return None


def resolve(backend: str, model, qmodel, mode: str, float_layers: Sequence[int] | None = None,
            all_outputs: bool = False) -> str:
    """"numpy" or "onnxruntime" for one mode. backend="onnxruntime" raises EngineError naming why ORT
    cannot run it; "auto" falls back to NumPy instead. On ORT the session is built here (and cached,
    `all_outputs` as the caller will run it): a layer without an ONNX form is found now, not mid-batch."""
    if check_backend(backend) == "numpy":
        return "numpy"
    reason = why_not(model, qmodel, mode, float_layers)
    if reason is None:
        try:
            session(model, qmodel, mode, _float_layers(qmodel, float_layers), all_outputs)
            return ORT
        except UnsupportedError as err:
            reason = str(err)
    if backend == "auto":
        return "numpy"
    raise EngineError(f"backend='onnxruntime' cannot run {mode.upper()} with the NumPy engine's results: {reason}; "
                      f"use backend='numpy' (--backend numpy), or 'auto' to run on ORT only what it can")


def _float_layers(qmodel, float_layers: Sequence[int] | None) -> Sequence[int]:
    if float_layers is None:
        return qmodel.float_layers if qmodel is not None else ()
    return float_layers


class HeadOutputs(Sequence):
    """Layer outputs of one ORT run, as `Model.forward` lists them: ORT's `layer<i>` tensors, and the
    detection heads computed by the engine's layer code on demand (raw heads are not in the graph)."""

    def __init__(self, model, got: dict[int, np.ndarray], batched: bool = False) -> None:
        self.model, self.got, self.batched = model, got, batched

    def image(self, k: int) -> "HeadOutputs":
        """Image k of a batched run, as a batch-of-one run of it would give (heads computed per image)."""
        return HeadOutputs(self.model, {i: y[k] for i, y in self.got.items() if not self.model.layers[i].is_head})

    def __len__(self) -> int:
        return len(self.model.layers)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        index = range(len(self))[index]
        if index not in self.got:
            layer = self.model.layers[index]
            if not layer.is_head or any(j < 0 or j not in self.got and not self.model.layers[j].is_head
                                        for j in layer.inputs):
                raise EngineError(f"layer {index} [{layer.kind}] is not an output of this ONNX Runtime run "
                                  "(ask for all_outputs=True)")
            run = self.model.run_layer_batch if self.batched else self.model.run_layer
            y = run(index, [self[j] for j in layer.inputs])
            y.flags.writeable = False
            self.got[index] = y
        return self.got[index]


def _threads() -> int:
    from engine.kernels.threads import blas_threads
    return max(1, blas_threads())


def signed_weights(qmodel) -> bool:
    """Whether INT sessions get int8 weights: an `onnxruntime` model's uint8 weights (zero point 128) sum
    exactly on every x86 kernel, but on a host whose u8 x s8 kernel is VNNI (exact too) the same weights as
    int8 give the same integers and run that kernel, 1.7x the u8 x u8 kernel's images/s here
    (benchmarks/bench_throughput.py). Elsewhere int8 weights would saturate pairs: keep the profile's."""
    from engine.quant.profiles import get_profile
    from engine.quant.profiles.avx2_u8s8 import host_u8s8_kernel
    return get_profile(qmodel.profile).signed_weights or host_u8s8_kernel() == "vnni"


def _key(model, qmodel, mode: str, float_layers: tuple, all_outputs: bool, threads: int) -> tuple:
    from engine.quant.qmodel import fingerprint
    qkey = None
    if mode != Mode.FLOAT:
        h = hashlib.sha256()
        for k, v in sorted(qmodel.to_arrays().items()):
            h.update(k.encode())
            h.update(np.ascontiguousarray(v).tobytes())
        qkey = (h.hexdigest(), signed_weights(qmodel))
    # the content, not the object: a model edited in memory gets a new session
    return (fingerprint(model), model.input_shape, qkey, mode, float_layers, all_outputs, threads)


def _build(model, qmodel, mode: str, float_layers: tuple, all_outputs: bool, threads: int):
    from engine.export.onnx_float import build_onnx
    from engine.export.onnx_graph import ort_session
    from engine.export.onnx_int8 import build_int8
    if mode == Mode.FLOAT:
        proto = build_onnx(model, heads="raw", all_outputs=all_outputs, dynamic_batch=True)
    else:
        twin = qmodel.copy()
        twin.float_layers = float_layers
        proto = build_int8(model, twin, heads="raw", all_outputs=all_outputs, dynamic_batch=True,
                           signed_weights=signed_weights(qmodel))
    sess, names = ort_session(proto, "the onnxruntime backend", threads=threads)
    return sess, names, [int(n[5:]) for n in names]


def session(model, qmodel, mode: str, float_layers: Sequence[int] = (), all_outputs: bool = False,
            threads: int | None = None):
    """(InferenceSession, output names, layer indices), built once per key (module doc) and kept in memory;
    `threads`: its intra-op threads (default the engine's BLAS thread count)."""
    fl = tuple(sorted(int(i) for i in float_layers))
    threads = threads or _threads()
    key = _key(model, qmodel, mode, fl, all_outputs, threads)
    with _LOCK:
        if key in _SESSIONS:
            _SESSIONS.move_to_end(key)
            return _SESSIONS[key]
        built = _build(model, qmodel, mode, fl, all_outputs, threads)
        _SESSIONS[key] = built
        while len(_SESSIONS) > CACHE_SIZE:
            _SESSIONS.popitem(last=False)
        return built


def clear_sessions() -> None:
    _SESSIONS.clear()


def run_split(sess, names: list[str], shapes: list[tuple], xb: np.ndarray, workers: int) -> list[np.ndarray]:
    """`sess.run(names, {"input": xb})` with the images shared by `workers` threads (this one and the
    pool's), each running one image at a time on the single-threaded session `sess` and pulling the next
    when done: a descheduled thread holds up one image, not half the batch. ORT releases the GIL in a
    run and computes each image as a batch-of-one run would (tested), and writes it straight into image
    k of the batch's outputs (IO binding; `shapes`: each output's shape for one image)."""
    global _POOL
    n = len(xb)
    parts = min(workers, n)
    with _LOCK:
        if _POOL is None or _POOL._max_workers < parts - 1:
            _POOL = ThreadPoolExecutor(parts - 1, thread_name_prefix="qw-ort")
    outs = [np.empty((n, *shape), np.float32) for shape in shapes]
    items = iter(range(n))                   # next() on a range iterator is atomic under the GIL

    def worker() -> None:
        bind = sess.io_binding()
        for k in items:
            bind.bind_cpu_input("input", xb[k:k + 1])
            for name, out in zip(names, outs):
                bind.bind_output(name, "cpu", 0, np.float32, [1, *out.shape[1:]], out[k:k + 1].ctypes.data)
            sess.run_with_iobinding(bind)
    futures = [_POOL.submit(worker) for _ in range(parts - 1)]
    try:
        worker()
    finally:
        for f in futures:
            if not f.cancel():               # a pool thread not started yet finds nothing left: skip it
                f.result()
    return outs


def ort_forward(model, qmodel, mode: str, float_layers: Sequence[int] | None = None,
                all_outputs: bool = False) -> Callable[[np.ndarray], Sequence[np.ndarray]]:
    """x (3, H, W) or (N, 3, H, W) -> HeadOutputs of one ORT run (its session built or taken from the
    cache now); outputs (C, H, W), or (N, C, H, W) for a batch."""
    fl = _float_layers(qmodel, float_layers)
    threads = _threads()
    sess, names, layers = session(model, qmodel, mode, fl, all_outputs)
    shapes = [tuple(model.layers[i].out_shape) for i in layers]

    def run(x: np.ndarray) -> Sequence[np.ndarray]:
        x = model.check_input(x, batch=True)
        xb = np.ascontiguousarray(x, np.float32).reshape((-1, *model.input_shape))
        if threads > 1 and len(xb) > 1:     # images side by side, one intra-op thread each
            ys = run_split(session(model, qmodel, mode, fl, all_outputs, threads=1)[0], names, shapes, xb, threads)
        else:
            ys = sess.run(names, {"input": xb})
        if x.ndim == 4:
            return HeadOutputs(model, dict(zip(layers, ys)), batched=True)
        return HeadOutputs(model, {i: y[0] for i, y in zip(layers, ys)})
    meta = sess.get_modelmeta().custom_metadata_map
    run.grids = {int(k): (v[0], int(v[1])) for k, v in json.loads(meta.get("grids", "{}")).items()}
    per_image = sum(4 * int(np.prod(model.layers[i].out_shape)) for i in layers)
    run.batch = max(1, min(BATCH, BATCH_BYTES // max(1, per_image)))
    return run


def feed_size(*runs: Callable) -> int:
    """How many images to preprocess at a time for these forwards: the largest `batch`, and on NumPy one
    image per kernel thread (`detect_each` runs them side by side)."""
    return max([getattr(r, "batch", _threads()) for r in runs] or [1])


def forward_each(run: Callable, xs: Sequence[np.ndarray]) -> Iterator[Sequence[np.ndarray]]:
    """Each input's outputs in order, as `run(x)` gives them for one (3, H, W) input `x`: a run with a
    `batch` (ORT) is fed stacked batches of that many, a NumPy forward one image at a time (lazily: one
    image's outputs alive at once)."""
    size = getattr(run, "batch", 1)
    for start in range(0, len(xs), size):
        chunk = xs[start:start + size]
        if len(chunk) == 1:
            yield run(chunk[0])
            continue
        outs = run(np.stack(chunk))
        for k in range(len(chunk)):
            yield outs.image(k)


def detect_each(model, run: Callable, pres: Sequence, thresh: float, nms: float,
                stop: Callable[[], bool] | None = None) -> list:
    """The detections of each preprocessed image through `run`, fed as `forward_each` feeds it; a NumPy
    run (no `batch`) takes whole images on the kernel threads, one per thread with its kernels
    single-threaded (no hand-off per layer; the same bits as one image at a time).

    `stop` ("stop now?", engine.quant.progress.stop_hook) is asked before each image (NumPy; each thread
    before the image it takes next) or each batch (ORT); once it answers True no other image starts.

    Raises:
        Cancelled: `stop` answered True before the last image or batch started."""
    from engine.darknet.detect import detect_outputs
    if stop is not None:
        run = _stoppable(run, stop, len(pres))
    if getattr(run, "batch", None) is None and len(pres) > 1:
        from engine.kernels.threads import parallel_map
        return parallel_map(len(pres), lambda k: detect_outputs(model, run(pres[k].x), pres[k], thresh, nms))
    outs_each = forward_each(run, [p.x for p in pres])
    return [detect_outputs(model, outs, pre, thresh, nms) for outs, pre in zip(outs_each, pres)]


def _stoppable(run: Callable, stop: Callable[[], bool], n: int) -> Callable:
    """`run` asking `stop` before each call (one image, or one ORT batch), its `batch` kept. After one
    True answer every later call raises too (the other kernel threads must not start their next image)."""
    from engine.errors import Cancelled
    started, stopped = [0], [False]

    def stoppable(x):
        if stopped[0] or stop():
            stopped[0] = True
            raise Cancelled(f"cancelled between images ({min(started[0], n)} of {n} started)")
        started[0] += x.shape[0] if x.ndim == 4 else 1
        return run(x)
    if getattr(run, "batch", None) is not None:
        stoppable.batch = run.batch                  # ORT: still fed in batches
    return stoppable


def int_values(ex, outs: Sequence[np.ndarray], grids: dict[int, tuple[float, int]]) -> list:
    """An ORT INT run's outputs (all_outputs) as the executor's Values: each int8 layer's uint8 codes
    recovered exactly from ORT's dequantized float32 ((q - zp) * scale, q <= 255) beside the floats."""
    from engine.quant.executor import INT8, Value
    from engine.quant.qtensor import QTensor
    values = []
    for i in range(len(outs)):
        f = outs[i]
        if ex.precision(i) == INT8 and not ex.int32_out(i) and i in grids:
            scale, zp = grids[i]
            q = (np.rint(f / np.float32(scale)) + zp).astype(np.uint8)
            values.append(Value(f=f, q=QTensor(q, scale, zp)))
        else:
            values.append(Value(f=f))
    return values


def forward_on(backend: str, model, qmodel, mode: str, float_layers: Sequence[int] | None = None,
               all_outputs: bool = False) -> Callable[[np.ndarray], Sequence[np.ndarray]]:
    """The forward function of `mode` on the runtime `backend` resolves to (see `resolve`):
    x (3, H, W) or (N, 3, H, W) -> every layer's output (NumPy), or HeadOutputs (ORT; every layer with
    all_outputs; `run.batch` images per call suit it best: `forward_each`)."""
    if resolve(backend, model, qmodel, mode, float_layers, all_outputs) == ORT:
        return ort_forward(model, qmodel, mode, float_layers, all_outputs)
    if mode == Mode.FLOAT:
        return model.forward
    from engine.quant.executor import Executor
    return Executor(model, qmodel, mode, float_layers).forward
