"""Batch evaluation in-process or on a Dask cluster, with results equal to the in-process ones.

    from engine.scale.backends import DaskBackend, InProcess, collect_stats, evaluate, secure_local_cluster
    cluster, client = secure_local_cluster(n_workers=2)          # TLS, processes, 1 thread each
    stats = collect_stats("yolov3-tiny", images, DaskBackend(client))   # == collect(model, images)
    res = evaluate("yolov3-tiny", qmodel, images, ("hybrid", "int"), DaskBackend(client))

One task is a *batch* of images (a task costs ~2 ms of scheduling here, an image ~0.1-0.3 s).
Workers never receive the 35 MB model: they get a `ModelSource` (zoo name, engine `.npz`, or
cfg + `.weights`) and load it once per process (`load_source`, an LRU keyed by path + mtime).
A quantized model object is broadcast once (`backend.share`); a path is loaded by the workers.
Equality: calibration histograms merge exactly (engine/calib/histogram.py) and per-image
detections are computed by the same code in every backend, so the aggregated numbers
(`CalibrationStats`, `detection_agreement`) are identical, not merely close, provided the
BLAS thread count is the same: OpenBLAS may partition a GEMM differently with 2 threads than
with 1 and change a float's last bit. Workers run 1 BLAS thread when workers >= cores, so the
reference is `InProcess(blas_threads=1)` (or `with blas_limit(1):`).

`dask` is imported only by `DaskBackend` / `secure_local_cluster`; the engine runs without it.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from engine.calib.collect import CalibrationStats, collect, image_list
from engine.darknet.detect import Detection, detect_outputs
from engine.kernels.threads import blas_limit, blas_threads, set_blas_threads  # noqa: F401  (public here too)
from engine.quant.fitness import Agreement, detection_agreement

log = logging.getLogger(__name__)
MODES = ("float", "hybrid", "int")
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


# ------------------------------------------------------------------------------ BLAS threads
# blas_limit / blas_threads / set_blas_threads: the engine's one control, engine.kernels.threads


def threads_per_worker_blas(n_workers: int, cores: int | None = None) -> int:
    """BLAS threads per worker: 1 when workers >= cores (no oversubscription), else cores // workers."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, n_workers))


# ------------------------------------------------------------------------------ model sources
@dataclass(frozen=True)
class ModelSource:
    """What a worker loads: a zoo name, an engine `.npz`, or a cfg (+ `weights`).

    `size=(width, height)` overrides the cfg's input size (the same weights at another
    resolution, multiples of 32 for YOLO). `fingerprint` (sha256 of the float params, as in
    QuantizedModel) is checked once per worker when given, so an edited model is never replaced
    by a stale file silently.
    """
    path: str
    weights: str | None = None
    size: tuple[int, int] | None = None
    fingerprint: str | None = None

    def stamp(self) -> tuple:
        files = [p for p in (self.path, self.weights) if p and Path(p).exists()]
        return tuple((p, os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in files)


def as_source(src: Any, size: tuple[int, int] | None = None) -> "ModelSource | Any":
    """A ModelSource from a zoo name / path / (cfg, weights) / ModelSource; a Model passes through."""
    if isinstance(src, ModelSource):
        return replace(src, size=size) if size else src
    if isinstance(src, (str, Path)):
        return ModelSource(str(src), None, size)
    if isinstance(src, tuple) and len(src) == 2:
        return ModelSource(str(src[0]), str(src[1]), size)
    if hasattr(src, "forward") and hasattr(src, "cfg"):
        return src
    raise TypeError(f"model source {type(src).__name__}: expected a zoo name, a path, (cfg, weights), "
                    "a ModelSource or a Model")


def source_of(model) -> ModelSource:
    """The files a worker can load `model` from (raises ValueError if it has none, e.g. random weights)."""
    cfg, weights = model.cfg.file, model.source
    if weights and Path(weights).is_file() and cfg and Path(cfg).is_file():
        src = ModelSource(cfg, None if weights == cfg else weights)
    elif weights and Path(weights).is_file():
        src = ModelSource(weights)
    else:
        raise ValueError(f"model {model.graph.name!r} (source {weights!r}) has no file a worker can load; "
                         "save it first (model.save('m.npz')) and pass the path")
    c, h, w = model.input_shape
    from engine.quant.qmodel import fingerprint
    return replace(src, size=(w, h), fingerprint=fingerprint(model))


@lru_cache(maxsize=2)
def _load_cached(src: ModelSource, stamp: tuple):
    from engine.darknet.cfg import parse_cfg, read_cfg, with_input_size
    from engine.graph import build_layers
    from engine.model import Model, is_model_file, load
    from engine.darknet.weights import read_weights
    path = Path(src.path)
    if not path.exists() and src.weights is None:
        from engine.zoo import fetch
        cfg_path, weights = fetch(src.path, download=False)
        src, path = replace(src, path=str(cfg_path), weights=str(weights)), cfg_path
    if src.size is None or is_model_file(path):
        model = load(path, weights=src.weights)
        if src.size is not None and model.input_shape[1:] != (src.size[1], src.size[0]):
            raise ValueError(f"{path}: an engine model file has a fixed input size; size={src.size} cannot apply")
    else:
        cfg = parse_cfg(with_input_size(read_cfg(path).text, *src.size), str(path))
        layers = build_layers(cfg)
        header, params = read_weights(src.weights, layers)
        model = Model(cfg, layers, params, header, source=str(src.weights))
    if src.fingerprint is not None:
        from engine.quant.qmodel import fingerprint
        if fingerprint(model) != src.fingerprint:
            raise ValueError(f"{src.path}: the file's parameters differ from the client's model "
                             "(edited in memory?); save the edited model and pass that file")
    return model


def load_source(src: Any):
    """The Model for a source, loaded once per process (LRU of 2, keyed by the files' mtimes)."""
    src = as_source(src)
    if not isinstance(src, ModelSource):
        return src
    return _load_cached(src, src.stamp())


# ------------------------------------------------------------------------------ backends
@dataclass(frozen=True)
class Payload:
    """A wrapper so `scatter` ships one object (it would split a dict or list into many futures)."""
    obj: Any


def _unwrap(x: Any) -> Any:
    return x.obj if isinstance(x, Payload) else x


class InProcess:
    """Runs batches one after another in this process (the reference every backend must equal).

    `blas_threads`: run the batches with that many BLAS threads (then restore). Use the workers'
    count (1) when results must equal a Dask run bit for bit: OpenBLAS may split a GEMM differently
    with more threads, e.g. yolov3-tiny's 1x1 head convs at 224x224 then differ in the last bit.
    """
    n_workers = 1

    def __init__(self, blas_threads: int | None = None) -> None:
        self.blas_threads = blas_threads

    def share(self, obj: Any, key: Any = None) -> Any:
        return obj

    def portable(self, model_source: Any) -> Any:
        return model_source                       # a Model object is used as is

    def map_batches(self, fn: Callable, items: Sequence, batch_size: int | None = None,
                    progress: bool = False, desc: str = "batches", args: tuple = ()) -> list:
        """[fn(*args, batch) for each batch of `batch_size` items], in order."""
        batches = split(items, batch_size or len(items) or 1)
        bar = _bar(progress, len(items), desc)
        out = []
        limit = blas_limit(self.blas_threads) if self.blas_threads else contextlib.nullcontext()
        try:
            with limit:
                for b in batches:
                    out.append(fn(*args, b))
                    if bar is not None:
                        bar.update(len(b))
        finally:
            if bar is not None:
                bar.close()
        return out


class DaskBackend:
    """Runs batches as tasks on a `dask.distributed.Client` (results returned in batch order).

    On creation it limits BLAS threads on every worker (now and joining later, via a worker
    plugin) to `threads_per_worker_blas(workers on that host, host cores)` unless `blas_threads`
    is given: several single-threaded workers per host must not each start a BLAS pool per core.
    """

    def __init__(self, client, blas_threads: int | None = None) -> None:
        self.client = client
        self._shared: dict[int, Any] = {}
        from distributed.diagnostics.plugin import WorkerPlugin

        class BlasLimit(WorkerPlugin):
            name = "qwidgets-blas-threads"

            def __init__(self, n: int | None, per_host: int) -> None:
                self.n, self.per_host = n, per_host

            def setup(self, worker) -> None:
                n = self.n or threads_per_worker_blas(self.per_host * worker.state.nthreads)
                set_blas_threads(n)

        hosts: dict[str, int] = {}
        for w in client.scheduler_info(n_workers=-1)["workers"].values():
            hosts[w["host"]] = hosts.get(w["host"], 0) + 1
        client.register_plugin(BlasLimit(blas_threads, max(hosts.values(), default=1)),
                               name="qwidgets-blas-threads")

    @property
    def n_workers(self) -> int:
        return max(1, len(self.client.scheduler_info(n_workers=-1)["workers"]))

    def share(self, obj: Any, key: Any = None) -> Any:
        """Broadcast `obj` to every worker once per `key` (default: the object's identity); tasks
        receive the worker's copy."""
        key = ("id", id(obj)) if key is None else key
        if key not in self._shared:    # obj is kept alive beside its future, so ids stay unique
            self._shared[key] = (obj, self.client.scatter(Payload(obj), broadcast=True, hash=False))
        return self._shared[key][1]

    def portable(self, model_source: Any) -> Any:
        src = as_source(model_source)
        return source_of(src) if not isinstance(src, ModelSource) else src

    def map_batches(self, fn: Callable, items: Sequence, batch_size: int | None = None,
                    progress: bool = False, desc: str = "batches", args: tuple = ()) -> list:
        """[fn(*args, batch) for each batch], one task per batch, in batch order. `args` may hold
        futures from `share` (Dask resolves them to the worker's copy)."""
        from distributed import as_completed
        size = batch_size or default_batch_size(len(items), self.n_workers)
        batches = split(items, size)
        futures = [self.client.submit(fn, *args, b, pure=False) for b in batches]
        index = {f.key: k for k, f in enumerate(futures)}
        out: list = [None] * len(futures)
        bar = _bar(progress, len(items), desc)
        try:
            for fut in as_completed(futures):
                k = index[fut.key]
                out[k] = fut.result()
                if bar is not None:
                    bar.update(len(batches[k]))
        finally:
            if bar is not None:
                bar.close()
        return out


def default_batch_size(n_items: int, n_workers: int) -> int:
    """~4 batches per worker (load balance) but at most 16 images per task."""
    return max(1, min(16, math.ceil(n_items / (4 * max(1, n_workers)))))


def split(items: Sequence, size: int) -> list[list]:
    items = list(items)
    return [items[k:k + size] for k in range(0, len(items), max(1, size))]


def _bar(progress: bool, total: int, desc: str):
    if not progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="img")


# ------------------------------------------------------------------------------ quantized models
def _token(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    return h.hexdigest()


@lru_cache(maxsize=4)
def _qmodel_from_file(path: str, stamp: tuple):
    from engine.quant.qmodel import QuantizedModel
    return QuantizedModel.load(path)


_QCACHE: dict[tuple, Any] = {}


def _cached(key: tuple, make: Callable[[], Any], keep: int = 8) -> Any:
    if key not in _QCACHE:
        while len(_QCACHE) >= keep:
            _QCACHE.pop(next(iter(_QCACHE)))
        _QCACHE[key] = make()
    return _QCACHE[key]


def resolve_qmodel(ref: Any):
    """The QuantizedModel a reference stands for: ("path", p) is loaded once per worker process,
    ("arrays", token, arrays) is rebuilt once per token; objects pass through. (References are
    tuples because Dask replaces futures inside tuples, not inside other objects.)"""
    if not isinstance(ref, tuple):
        return ref
    if ref[0] == "path":
        st = os.stat(ref[1])
        return _qmodel_from_file(ref[1], (st.st_mtime_ns, st.st_size))
    from engine.quant.qmodel import QuantizedModel
    return _cached(("qmodel", ref[1]), lambda: QuantizedModel.from_arrays(_unwrap(ref[2])))


def _qmodel_arg(qmodel: Any, backend) -> Any:
    if qmodel is None or isinstance(backend, InProcess) and not isinstance(qmodel, (str, Path)):
        return qmodel
    if isinstance(qmodel, (str, Path)):
        return ("path", str(Path(qmodel).resolve()))
    arrays = qmodel.to_arrays()               # int8 weights: ~4x smaller than the objects' float copies
    token = _token(arrays)
    return ("arrays", token, backend.share(arrays, key=("qmodel", token)))


# ------------------------------------------------------------------------------ tasks (run on workers)
def _items(images) -> list:
    """Images as shippable items: paths become strings, PIL images / arrays pass as they are."""
    return [str(i) if isinstance(i, Path) else i for i in image_list(images)]


def label_of(item: Any, k: int) -> str:
    return Path(item).name if isinstance(item, (str, Path)) else f"image{k}"


def calib_batch(source: Any, resize: str, batch: list) -> CalibrationStats:
    """Calibration statistics of one batch (the in-process `collect`, unchanged)."""
    return collect(load_source(source), batch, resize, progress=False)


def detect_batch(source: Any, qref: Any, modes: tuple[str, ...], thresh: float, nms: float, resize: str,
                 batch: list) -> list[dict[str, list[Detection]]]:
    """Per image {mode: detections}; FLOAT always included (it is the ground truth)."""
    from engine.quant.executor import Executor
    model = load_source(source)
    qm = resolve_qmodel(qref)
    runners = {m: (model.forward if m == "float" else Executor(model, qm, m).forward) for m in modes}
    out = []
    for item in batch:
        pre = model.preprocess(item, resize)
        out.append({m: detect_outputs(model, run(pre.x), pre, thresh, nms) for m, run in runners.items()})
    return out


# ------------------------------------------------------------------------------ public API
def collect_stats(model_source: Any, images, backend=None, batch_size: int | None = None,
                  resize: str = "letterbox", progress: bool = False) -> CalibrationStats:
    """Calibration statistics over `images`, batches merged in order: equal to `collect(model, images)`."""
    backend = backend or InProcess()
    parts = backend.map_batches(calib_batch, _items(images), batch_size, progress, "calibrating",
                                args=(backend.portable(model_source), resize))
    stats = CalibrationStats()
    for p in parts:
        stats = stats.merge(p)
    return stats


@dataclass
class EvalResult:
    images: list[str]
    detections: dict[str, list[list[Detection]]]      # mode -> per image
    agreement: dict[str, Agreement]                   # quantized mode -> agreement with FLOAT

    def to_dict(self) -> dict:
        return {"images": self.images, "agreement": {m: a.to_dict() for m, a in self.agreement.items()},
                "detections": {m: [[d.to_dict() for d in ds] for ds in per] for m, per in self.detections.items()}}

    def summary(self) -> str:
        rows = [f"{'mode':<8}{'mAP50':>8}{'matched':>9}{'missed':>8}{'extra':>7}{'mean IoU':>10}"]
        for m, a in self.agreement.items():
            rows.append(f"{m:<8}{a.map50:>8.3f}{a.matched:>9}{a.missed:>8}{a.extra:>7}{a.mean_iou:>10.3f}")
        return "\n".join(rows)


def evaluate(model_source: Any, qmodel: Any, images, modes: Sequence[str] = ("hybrid", "int"), backend=None,
             batch_size: int | None = None, thresh: float = 0.25, nms: float = 0.45, resize: str = "letterbox",
             progress: bool = False) -> EvalResult:
    """FLOAT vs quantized detections per image and `detection_agreement` per mode.

    qmodel: a QuantizedModel (broadcast once) or the path of its `.npz` (loaded by each worker).
    Raises ValueError for an unknown mode.
    """
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"modes {bad}: expected some of {', '.join(MODES)}")
    backend = backend or InProcess()
    run_modes = tuple(["float"] + [m for m in modes if m != "float"])
    items = _items(images)
    parts = backend.map_batches(detect_batch, items, batch_size, progress, "evaluating",
                                args=(backend.portable(model_source), _qmodel_arg(qmodel, backend), run_modes,
                                      thresh, nms, resize))
    per_image = [d for p in parts for d in p]
    dets = {m: [d[m] for d in per_image] for m in run_modes}
    agreement = {m: detection_agreement(dets["float"], dets[m]) for m in run_modes if m != "float"}
    return EvalResult([label_of(i, k) for k, i in enumerate(items)], dets, agreement)


# ------------------------------------------------------------------------------ method comparison
def _method_rows(model, qm, pre, outs) -> dict:
    """One image, one quantized model: what `engine.quant.compare.evaluate` gathers per image."""
    from engine.quant.executor import Executor, FloatView
    from engine.quant.fitness import local_stats, propagated_stats
    row: dict[str, Any] = {}
    for mode in ("hybrid", "int"):
        ex = Executor(model, qm, mode)
        values, records = ex.run(pre.x)
        prop = propagated_stats(outs, values, records)
        row[mode] = detect_outputs(model, FloatView(values), pre)
        row[f"{mode}_sqnr"] = [s.sqnr_db for s in prop]
        if mode == "int":
            row["saturation"] = [s.saturation for s in prop]
            row["range_use"] = [s.range_use for s in prop]
            row["int_local_sqnr"] = [s.sqnr_db if s else np.nan for s in local_stats(ex, pre.x, outs)]
    return row


def compare_batch(source: Any, stats_ref: tuple, methods: tuple[str, ...], per_channel: bool, resize: str,
                  batch: list) -> list[dict]:
    """Per image: FLOAT detections and, per method, the rows of `_method_rows` (quantized on the worker,
    once per statistics token; quantization is deterministic, so it equals the client's)."""
    from engine.quant.qmodel import quantize_model
    model = load_source(source)
    token, stats = stats_ref[0], _unwrap(stats_ref[1])
    key = source.stamp() if isinstance(source, ModelSource) else id(source)
    qms = {m: _cached(("quantize", token, m, per_channel, key),
                      lambda m=m: quantize_model(model, stats, m, per_channel=per_channel)) for m in methods}
    out = []
    for item in batch:
        pre = model.preprocess(item, resize)
        outs = model.forward(pre.x)
        out.append({"float": detect_outputs(model, outs, pre), **{m: _method_rows(model, qm, pre, outs)
                                                                   for m, qm in qms.items()}})
    return out


def compare_distributed(model_source: Any, stats: CalibrationStats, images,
                        methods: Sequence[str] = ("log2", "kl", "minmax", "percentile", "mse"),
                        per_channel: bool = False, backend=None, batch_size: int | None = None,
                        resize: str = "letterbox", progress: bool = False):
    """`engine.quant.compare.compare` with the per-image work spread over `backend`; returns the
    same CompareTable (same numbers, same ranking) as the in-process function."""
    from engine.quant.compare import CompareTable, MethodResult, _mean
    from engine.quant.fitness import model_size
    from engine.quant.qmodel import quantize_model
    backend = backend or InProcess()
    items = _items(images)
    token = _token(stats.to_arrays())
    stats_ref = (token, backend.share(stats, key=("stats", token)))
    rows = [r for part in backend.map_batches(compare_batch, items, batch_size, progress, "comparing",
                                              args=(backend.portable(model_source), stats_ref, tuple(methods),
                                                    per_channel, resize)) for r in part]
    model = load_source(model_source)
    truth = [r["float"] for r in rows]
    results = []
    for method in methods:
        qm = quantize_model(model, stats, method, per_channel=per_channel)
        per = [r[method] for r in rows]
        agreement = {mode: detection_agreement(truth, [p[mode] for p in per]) for mode in ("hybrid", "int")}
        keys = ("hybrid_sqnr", "int_sqnr", "int_local_sqnr", "saturation", "range_use")
        means = {k: _mean([p[k] for p in per]) for k in keys}
        layers = [{"layer": i, "kind": l.kind, **{k: float(means[k][i]) for k in keys}}
                  for i, l in enumerate(model.layers)]
        results.append(MethodResult(method, qm.per_channel, agreement, layers, model_size(model, qm).to_dict(), qm))
    results.sort(key=lambda r: tuple(-v if np.isfinite(v) else np.inf for v in r.key()))
    return CompareTable(results, [label_of(i, k) for k, i in enumerate(items)])


# ------------------------------------------------------------------------------ clusters
def secure_local_cluster(n_workers: int = 2, blas_threads: int | None = None, **kwargs: Any):
    """(LocalCluster, Client): TLS between all parties (`security=True`: temporary certificates, so
    other local users cannot submit code), one process per worker, one task thread each, BLAS
    threads per worker = `threads_per_worker_blas(n_workers)` unless given, no dashboard.

    The BLAS limit goes into the environment before the worker processes start (OpenBLAS reads
    it once, at import) and again through the DaskBackend plugin.
    """
    import dask
    from distributed import Client, LocalCluster
    n = blas_threads or threads_per_worker_blas(n_workers)
    env = {k: str(n) for k in BLAS_ENV}
    opts = dict(n_workers=n_workers, processes=True, threads_per_worker=1, security=True, env=env,
                dashboard_address=None, silence_logs=logging.WARNING)
    opts.update(kwargs)
    with dask.config.set({f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in env.items()}):
        cluster = LocalCluster(**opts)
    try:
        client = Client(cluster)
    except Exception:
        cluster.close()
        raise
    return cluster, client


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
    for path, text in ((cert, sec.tls_ca_file), (key, sec.tls_client_key)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    client_sec = Security(tls_ca_file=str(cert), tls_client_cert=str(cert), tls_client_key=str(key),
                          require_encryption=True)
    return client_sec, ["--tls-ca-file", str(cert), "--tls-cert", str(cert), "--tls-key", str(key)]
