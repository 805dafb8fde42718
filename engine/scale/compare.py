"""Compare calibration methods on the same statistics and images; rank them by fitness to FLOAT.

One calibration pass serves every method (thresholds are pure functions of the histograms).
Each method is run in HYBRID and INT on the evaluation images; the table ranks methods by INT
detection agreement (COCO mAP@[.5:.95] vs FLOAT, then mAP@0.5), then HYBRID agreement, then
fewer lost detections, then mean per-layer SQNR.

One algorithm, any backend: `compare_batch` does the per-image work (it runs where the backend
puts it: this process, or a Dask worker), `compare` quantizes, ships the quantized models,
gathers the rows and ranks. engine.scale.evaluate.compare_distributed is this function.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from engine.calib.collect import CalibrationStats
from engine.darknet.detect import detect_outputs
from engine.kernels.threads import parallel_map
from engine.quant.executor import Executor, FloatView, LayerRecord, reference_outputs
from engine.quant.layermemo import LayerMemo, acc_layers
from engine.quant.fitness import Agreement, detection_agreement, local_stats, model_size, propagated_stats
from engine.quant.modes import QUANT_MODES, Mode, float_layer_indices
from engine.quant.progress import CancelHook, Progress, Steps, StepsBar, fan_out
from engine.quant.autoquant import quantize
from engine.quant.qmodel import QuantizedModel
from engine.quant.refine.pipeline import AFTER, MARGIN_K, check as check_refine, needs_float_inputs, refine_after
from engine.scale.backends import InProcess, label_of, qmodel_ref, shippable_items
from engine.export.ort_backend import ORT, forward_on, int_values, ort_forward, resolve, split_backend
from engine.scale.sources import load_source, resolve_qmodel

KEEP_BYTES = 512 << 20     # FLOAT outputs kept from calibration for the comparison (yolov3-tiny @416: 15 images)
LAYER_KEYS = ("hybrid_sqnr", "int_sqnr", "int_local_sqnr", "saturation", "range_use")


@dataclass
class MethodResult:
    method: str
    per_channel: bool
    agreement: dict[str, Agreement]            # mode -> agreement with FLOAT
    layers: list[dict]                         # per layer: kind, sqnr per mode (propagated), local int sqnr, ...
    size: dict
    qmodel: QuantizedModel = field(repr=False, default=None)

    @property
    def mean_sqnr(self) -> float:
        vals = [r["int_sqnr"] for r in self.layers if np.isfinite(r.get("int_sqnr", np.nan))]
        return float(np.mean(vals)) if vals else float("nan")

    def key(self) -> tuple:
        a, h = self.agreement[Mode.INT8], self.agreement[Mode.HYBRID]
        return (a.map50_95, a.map50, h.map50_95, -a.missed, self.mean_sqnr)

    def to_dict(self) -> dict:
        return {"method": self.method, "per_channel": self.per_channel, "mean_int_sqnr_db": self.mean_sqnr,
                "agreement": {m: a.to_dict() for m, a in self.agreement.items()}, "size": self.size,
                "layers": self.layers}


@dataclass
class CompareTable:
    results: list[MethodResult]                # ranked, best first
    images: list[str]
    refine: tuple[str, ...] = ()               # refinements applied to every method after calibration
    float_layers: tuple[int, ...] = ()         # kept FLOAT by every method (mixed precision)

    @property
    def best(self) -> MethodResult:
        return self.results[0]

    def to_dict(self) -> dict:
        return {"ranking": [r.method for r in self.results], "best": self.best.method,
                "images": self.images, "methods": [r.to_dict() for r in self.results],
                **({"refine": list(self.refine)} if self.refine else {}),      # only when asked: the contract's keys stay
                **({"float_layers": list(self.float_layers)} if self.float_layers else {})}

    def __str__(self) -> str:
        lines = [f"{'rank':<5}{'method':<13}{'INT mAP':>8}{'INT mAP50':>10}{'HYB mAP':>8}{'HYB mAP50':>10}"
                 f"{'INT found':>10}{'lost':>5}{'extra':>6}{'mean SQNR':>11}{'int8 MB':>9}"]
        for k, r in enumerate(self.results, 1):
            a, h = r.agreement[Mode.INT8], r.agreement[Mode.HYBRID]
            lines.append(f"{k:<5}{r.method:<13}{a.map50_95:>8.3f}{a.map50:>10.3f}{h.map50_95:>8.3f}{h.map50:>10.3f}"
                         f"{a.matched:>6}/{a.matched + a.missed:<3}{a.missed:>5}{a.extra:>6}{r.mean_sqnr:>9.1f}dB"
                         f"{r.size['int8_bytes'] / 1e6:>9.2f}")
        lines.append("mAP = COCO mAP@[.5:.95] of the quantized detections against FLOAT's; lost = FLOAT detections "
                     "with no match at IoU 0.5")
        if self.refine:
            lines.append(f"every method refined after calibration with: {', '.join(self.refine)}")
        if self.float_layers:
            lines.append(f"every method keeps layers {', '.join(map(str, self.float_layers))} FLOAT in HYBRID and INT")
        lines.append(f"most fit to FLOAT: {self.best.method}")
        return "\n".join(lines)

    def layer_table(self) -> str:
        head = f"{'layer':<16}" + "".join(f"{r.method:>13}" for r in self.results)
        rows = [head + "   (INT propagated SQNR, dB)"]
        for i, first in enumerate(self.results[0].layers):
            rows.append(f"{i:>3} {first['kind']:<12}" + "".join(f"{r.layers[i]['int_sqnr']:>13.1f}" for r in self.results))
        return "\n".join(rows)


def method_rows(model, executors: dict[str, Executor], pre, float_outs, int_run=None, memo=None,
                before: Callable[[str], object] | None = None) -> dict:
    """One image, one quantized model (its executor per quantized mode): detections and per-layer
    statistics in HYBRID and INT. `int_run`: an ONNX Runtime INT forward with every layer's output
    (engine/export/ort_backend.py) that replaces the executor's INT run; its saturation column is then NaN
    (not measured: ORT does not report how many values it clipped). `memo`: a LayerMemo shared by
    the methods on this image (engine/quant/layermemo.py): what they compute alike is computed once.
    `before(mode)`: called before each mode's run (progress; it may raise Cancelled)."""
    row: dict = {}
    if executors:        # a cross-layer-equalized model's layers compare with the equalized twin's outputs
        float_outs = reference_outputs(model, next(iter(executors.values())).qmodel, float_outs)
    for mode, ex in executors.items():
        if before is not None:
            before(mode)
        if mode == Mode.INT8 and int_run is not None:
            values = int_values(ex, int_run(pre.x), int_run.grids)
            records = [LayerRecord(i, ex.precision(i)) for i in range(len(values))]
        else:
            values, records = ex.run(pre.x, memo=memo)
        prop = propagated_stats(float_outs, values, records, memo, sqnr_only=True)   # what the table reads
        row[mode] = detect_outputs(model, FloatView(values), pre)
        row[f"{mode}_sqnr"] = [s.sqnr_db for s in prop]
        if mode == Mode.INT8:
            local = local_stats(ex, pre.x, float_outs, prop, memo, sqnr_only=True)   # ORT's INT values: the executor's
            row["saturation"] = [s.saturation if int_run is None else np.nan for s in prop]
            row["range_use"] = [s.range_use for s in prop]
            row["int_local_sqnr"] = [s.sqnr_db if s else np.nan for s in local]
    return row


class KeptForwards:
    """The FLOAT outputs of a calibration pass (engine.calib.collect's `keep`), image by image in pass
    order, up to `max_bytes`: `compare` takes them as its FLOAT reference instead of running FLOAT
    again on the same images (same model, same preprocessing: the same arrays bit for bit)."""

    def __init__(self, max_bytes: int = KEEP_BYTES) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.outputs: list[tuple[np.ndarray, list[np.ndarray]] | None] = []    # (input, outputs)

    def add(self, x: np.ndarray, outs) -> None:
        size = sum(o.nbytes for o in outs)
        keep = self.nbytes + size <= self.max_bytes
        self.outputs.append((x, list(outs)) if keep else None)
        self.nbytes += size if keep else 0

    def float_outputs(self, model):
        """What the refinements read of these images (engine.calib.floats.FloatOutputs, no new pass), or
        None when an image was not kept or they pass FloatOutputs' own memory cap."""
        from engine.calib.floats import FloatOutputs
        if any(o is None for o in self.outputs):
            return None
        floats = FloatOutputs(model)
        for x, outs in self.outputs:
            floats.add(x, outs)
        return floats if floats.complete else None


def _stepping(task: Callable, step: Callable[[int, str], object]) -> Callable:
    """`task` (compare_batch) reporting its units through `step`, each batch numbering its images from where
    the one before ended (InProcess runs the batches in order, in this process)."""
    first = [0]

    def run(*args_and_batch) -> list[dict]:
        batch = args_and_batch[-1]
        start, first[0] = first[0], first[0] + len(batch)
        return task(*args_and_batch, step=step, first=start)
    return run


def _batch_units(unit: Callable[[int, str], object], methods: list[str]) -> Callable[[int, list], None]:
    """`on_batch` of a backend whose tasks run elsewhere (Dask: no callback reaches this process from a
    task): a batch's units reported, in the order they ran, when its rows arrive."""
    names = ["FLOAT", *(f"{m}: {str(mode).upper()}" for m in methods for mode in QUANT_MODES)]

    def report(first: int, batch: list) -> None:
        for k in range(first, first + len(batch)):
            for what in names:
                unit(k, what)
    return report


def _item_key(item) -> tuple:
    return ("path", str(item)) if isinstance(item, (str, Path)) else ("object", id(item))


# compare_batch runs whole images on the kernel threads (False: one image at a time, each layer split over
# the threads; the same rows bit for bit, tests/engine/test_compare_parallel.py). Two images are in flight
# at once: their layer results and memos (LayerMemo's budget each) are alive together.
IMAGE_PARALLEL = True


def run_units(n_images: int, n_methods: int) -> int:
    """The units of a comparison's runs that `compare(on_run=)` reports: per image its FLOAT reference, then
    every method in each quantized mode (HYBRID, INT)."""
    return n_images * (1 + n_methods * len(QUANT_MODES))


def compare_batch(source, qrefs: tuple, resize: str, runtime: str, batch: list, kept: dict | None = None,
                  step: Callable[[int, str], object] | None = None, first: int = 0) -> list[dict]:
    """The task: per image, FLOAT detections and `method_rows` of every (method, quantized model
    reference) in `qrefs` (a tuple: Dask resolves shared futures inside tuples). `runtime`: where
    FLOAT and INT run (engine/export/ort_backend.py); HYBRID and the local statistics run on NumPy.
    `kept`: FLOAT outputs already computed here for some items (by `_item_key`), numpy runtime only.
    `step(index, what)`: called before each unit of `run_units` (in this process only: it is no shippable
    task argument), `index` the image's place among all images (`first` is batch[0]'s), `what` the unit
    ("FLOAT", "kl: INT"); it may raise Cancelled, which stops the batch."""
    model = load_source(source)
    qms = {method: resolve_qmodel(ref) for method, ref in qrefs}
    executors = {method: {mode: Executor(model, qm, mode) for mode in QUANT_MODES} for method, qm in qms.items()}
    float_run = forward_on(runtime, model, None, Mode.FLOAT.value, all_outputs=True)
    int_runs = {method: ort_forward(model, qm, Mode.INT8.value, all_outputs=True)
                if resolve(runtime, model, qm, Mode.INT8.value, all_outputs=True) == ORT else None
                for method, qm in qms.items()}
    shared = acc_layers(model, list(qms.values()))

    def one(k: int) -> dict:
        item = batch[k]
        if step is not None:
            step(first + k, "FLOAT")
        pre = model.preprocess(item, resize)
        hit = kept.get(_item_key(item)) if kept else None
        # only for the very input it was computed on (an array item may be preprocessed differently)
        same = hit is not None and hit[0].shape == pre.x.shape and np.array_equal(hit[0], pre.x)
        outs = hit[1] if same else list(float_run(pre.x))
        memo = LayerMemo(share_acc=shared)      # this image's shared layer results, dropped with it
        def before(method: str):
            return None if step is None else lambda mode: step(first + k, f"{method}: {str(mode).upper()}")
        return {Mode.FLOAT.value: detect_outputs(model, outs, pre),
                **{method: method_rows(model, exs, pre, outs, int_runs[method], memo, before(method))
                   for method, exs in executors.items()}}

    if runtime == "numpy" and IMAGE_PARALLEL:
        # whole images on the kernel threads: no hand-off per layer, and the same bits (every kernel splits
        # its work by shape, and the statistics add their blocks in order, on any thread count)
        return parallel_map(len(batch), one)
    return [one(k) for k in range(len(batch))]


def _mean(rows: list[list[float]]) -> np.ndarray:
    """Column means ignoring inf/nan (a float layer has no int8 statistics: its column stays nan)."""
    a = np.array(rows, np.float64)
    if not a.size:
        return a
    a[np.isinf(a)] = np.nan
    ok = ~np.isnan(a)
    sums = np.where(ok, a, 0.0).sum(axis=0)
    counts = ok.sum(axis=0)
    return np.divide(sums, counts, out=np.full(a.shape[1], np.nan), where=counts > 0)


def method_result(model, method: str, qm: QuantizedModel, rows: list[dict]) -> MethodResult:
    """Agreement with FLOAT per mode and per-layer statistics averaged over the images' rows."""
    truth = [r[Mode.FLOAT.value] for r in rows]
    per = [r[method] for r in rows]
    agreement = {mode: detection_agreement(truth, [p[mode] for p in per]) for mode in QUANT_MODES}
    means = {k: _mean([p[k] for p in per]) for k in LAYER_KEYS}
    layers = [{"layer": i, "kind": l.kind, **{k: float(means[k][i]) for k in LAYER_KEYS}}
              for i, l in enumerate(model.layers)]
    return MethodResult(method, qm.per_channel, agreement, layers, model_size(model, qm).to_dict(), qm)


def compare(model, stats: CalibrationStats, images, methods: Sequence[str] = ("log2", "kl", "minmax", "percentile", "mse"),
            per_channel: bool = False, resize: str = "letterbox", progress: bool = True,
            on_method: Callable[[MethodResult, int, int], object] | None = None, *, backend=None,
            batch_size: int | None = None, calib_images=None, profile: str = "qwidgets",
            float_outputs: KeptForwards | None = None, refine: Sequence[str] = (),
            margin_k: float = MARGIN_K, on_quantize: Progress | None = None, on_run: Progress | None = None,
            cancel: CancelHook = None, float_layers: Sequence[int] = ()) -> CompareTable:
    """Quantize with each method from the same statistics, evaluate on `images`, rank.

    `model`: a Model, or (with a Dask backend) anything engine.scale.sources.as_source takes.
    `backend`: where the per-image work runs (default InProcess(): here, in order), or a runtime name
    "numpy" | "onnxruntime" | "auto" (engine/export/ort_backend.py: FLOAT and INT on ONNX Runtime, INT only
    with profile="onnxruntime"; HYBRID and the local statistics stay on NumPy).
    `on_method(result, done, total)` is called as each method's result is ready (widgets' progress).
    `calib_images`: what methods that run the model (`auto`) choose on (default: the evaluation images).
    `profile`: the device profile every method quantizes for (engine/quant/profiles).
    `float_outputs`: the FLOAT outputs of a calibration pass over the same `images` (KeptForwards),
    used as the reference where kept (in-process NumPy runs only).
    `refine`: refinements applied to every method's quantized model after calibration, on the calibration
    images (`calib_images`, default the evaluation images), in engine.quant.refine.pipeline's order:
    gptq, eq, bias, head, margin (`margin_k`); cle / cle_act change the float model and are refused here.
    `on_quantize(done, total, what)` follows the work before the runs (engine.quant.progress's convention:
    before each unit, then (n, n, "done")): one unit per method quantized ("quantize kl"; `auto` runs the
    model) and, with `refine`, one per method refined ("refine kl (gptq, eq)": seconds each).
    `on_run(done, total, what)` follows the comparison's runs the same way, the total known up front
    (`run_units`): per image its FLOAT reference ("FLOAT, image 3 of 15"), then each method in HYBRID and INT
    ("kl: INT, image 3 of 15"). With `progress`, a "comparing" bar shows the same units. With a Dask backend
    a batch's units are reported together when its rows arrive (a task cannot call back into this process).
    `cancel` (engine.quant.progress.CancelHook) is asked before every unit of both phases (with Dask: as
    each batch's rows arrive; the batches not done are then cancelled).
    `float_layers`: layers every method's quantized model keeps FLOAT (mixed precision, as
    `quantize --target-map` sets them: after calibration and refinements), so runs, statistics and sizes are
    those of that deployment.

    Raises:
        Cancelled: `cancel` answered True, or `on_quantize` / `on_run` raised it (nothing is returned).
        ValueError: a float layer the model does not have (before any work).
    """
    backend, runtime = split_backend(backend)
    backend = backend or InProcess()
    source = backend.portable(model)
    model = load_source(model)
    float_kept = float_layer_indices(model, float_layers)
    items = shippable_items(images)
    names = tuple(r for r in AFTER if r in check_refine(refine, AFTER, "compare refine"))    # in the order they run
    methods = list(dict.fromkeys(methods))
    steps = Steps(len(methods) * (2 if names else 1), on_quantize, cancel)
    qms = {}
    for m in methods:
        steps.start(f"quantize {m}")
        qms[m] = quantize(model, stats, m, per_channel=per_channel, profile=profile,
                          **({"images": calib_images or items, "resize": resize} if m == "auto" else {}))
    if names:
        cal = calib_images or items
        floats = None
        if needs_float_inputs(names):          # one set of FLOAT outputs of the calibration images for every method
            if calib_images is None and float_outputs is not None and len(float_outputs.outputs) == len(items):
                floats = float_outputs.float_outputs(model)    # the calibration pass's, kept for the reference
            if floats is None:
                from engine.calib.floats import float_outputs as calibration_floats
                floats = calibration_floats(model, cal, resize)
        for m, qm in qms.items():
            steps.start(f"refine {m} ({', '.join(names)})")
            qms[m] = refine_after(model, qm, names, cal, floats, resize, margin_k)
    steps.finish()
    if float_kept:                       # each model is this call's own: set as quantize --target-map sets them
        for qm in qms.values():
            qm.float_layers = float_kept
    for qm in qms.values():              # refused here, before the per-image work
        resolve(runtime, model, qm, Mode.INT8.value, all_outputs=True)
    resolve(runtime, model, None, Mode.FLOAT.value, all_outputs=True)
    qrefs = tuple((m, qmodel_ref(qm, backend)) for m, qm in qms.items())
    task = compare_batch
    if float_outputs is not None and isinstance(backend, InProcess) and runtime == "numpy" \
            and len(float_outputs.outputs) == len(items):
        kept = {_item_key(i): o for i, o in zip(items, float_outputs.outputs) if o is not None}
        task = partial(compare_batch, kept=kept)
    here = isinstance(backend, InProcess)
    bar = StepsBar("comparing", "run") if progress else None
    runs = Steps(run_units(len(items), len(qms)), fan_out(on_run, bar), cancel)

    def unit(k: int, what: str) -> None:
        runs.start(f"{what}, image {k + 1} of {len(items)}")
    if here:
        task = _stepping(task, unit)
    try:
        rows = [r for part in backend.map_batches(task, items, batch_size, False, "comparing",
                                                  args=(source, qrefs, resize, runtime),
                                                  on_batch=None if here else _batch_units(unit, list(qms)))
                for r in part]
        runs.finish()
    finally:
        if bar is not None:
            bar.close()
    results = []
    for method, qm in qms.items():
        results.append(method_result(model, method, qm, rows))
        if on_method is not None:
            on_method(results[-1], len(results), len(qms))
    results.sort(key=lambda r: tuple(-v if np.isfinite(v) else np.inf for v in r.key()))
    return CompareTable(results, [label_of(i, k) for k, i in enumerate(items)], names, float_kept)
