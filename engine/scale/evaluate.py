"""Batch calibration statistics and FLOAT-vs-quantized evaluation, on any backend.

    stats = collect_stats("yolov3-tiny", images, DaskBackend(client))   # == collect(model, images)
    res = evaluate("yolov3-tiny", qmodel, images, ("hybrid", "int"), DaskBackend(client))
    table = compare_distributed("yolov3-tiny", stats, images, ("kl", "minmax"), backend=DaskBackend(client))

The task functions (`calib_batch`, `detect_batch`) run on the workers; every backend runs the
same code, so the results equal the in-process ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from engine.calib.collect import CalibrationStats, collect
from engine.darknet.detect import Detection
from engine.quant.fitness import Agreement, detection_agreement
from engine.quant.modes import MODES, QUANT_MODES, Mode
from engine.scale.backends import InProcess, label_of, qmodel_ref, shippable_items
from engine.scale.compare import compare
from engine.export.ort_backend import detect_each, feed_size, forward_on, resolve, split_backend
from engine.scale.sources import load_source, resolve_qmodel


# ------------------------------------------------------------------------------ tasks (run on workers)
def calib_batch(source: Any, resize: str, batch: list) -> CalibrationStats:
    """Calibration statistics of one batch (the in-process `collect`, unchanged)."""
    return collect(load_source(source), batch, resize, progress=False)


def detect_batch(source: Any, qref: Any, modes: tuple[str, ...], thresh: float, nms: float, resize: str,
                 runtime: str, batch: list) -> list[dict[str, list[Detection]]]:
    """Per image {mode: detections}; FLOAT always included (it is the ground truth). `runtime`:
    numpy | onnxruntime | auto (engine/export/ort_backend.py)."""
    model = load_source(source)
    qm = resolve_qmodel(qref)
    runners = {m: forward_on(runtime, model, qm, m) for m in modes}
    out = []
    size = feed_size(*runners.values())           # ORT runs images in batches, NumPy one per kernel thread
    for start in range(0, len(batch), size):
        pres = [model.preprocess(item, resize) for item in batch[start:start + size]]
        dets = {m: detect_each(model, run, pres, thresh, nms) for m, run in runners.items()}
        out.extend({m: dets[m][k] for m in runners} for k in range(len(pres)))
    return out


# ------------------------------------------------------------------------------ public API
def collect_stats(model_source: Any, images, backend=None, batch_size: int | None = None,
                  resize: str = "letterbox", progress: bool = False) -> CalibrationStats:
    """Calibration statistics over `images`, batches merged in order: equal to `collect(model, images)`."""
    backend = backend or InProcess()
    parts = backend.map_batches(calib_batch, shippable_items(images), batch_size, progress, "calibrating",
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


def evaluate(model_source: Any, qmodel: Any, images, modes: Sequence[str] = QUANT_MODES, backend=None,
             batch_size: int | None = None, thresh: float = 0.25, nms: float = 0.45, resize: str = "letterbox",
             progress: bool = False) -> EvalResult:
    """FLOAT vs quantized detections per image and `detection_agreement` per mode.

    qmodel: a QuantizedModel (broadcast once) or the path of its `.npz` (loaded by each worker).
    backend: "numpy" | "onnxruntime" | "auto" (in this process), or an InProcess / DaskBackend (its
    `runtime`). Raises ValueError for an unknown mode, EngineError for a mode ORT cannot run.
    """
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"modes {bad}: expected some of {', '.join(MODES)}")
    backend, runtime = split_backend(backend)
    backend = backend or InProcess()
    run_modes = tuple([Mode.FLOAT.value] + [m for m in modes if m != Mode.FLOAT])
    if runtime == "onnxruntime":          # refused here, before any work is shipped
        model, qm = load_source(model_source), resolve_qmodel(qmodel)
        for m in run_modes:
            resolve(runtime, model, qm, m)
    items = shippable_items(images)
    parts = backend.map_batches(detect_batch, items, batch_size, progress, "evaluating",
                                args=(backend.portable(model_source), qmodel_ref(qmodel, backend), run_modes,
                                      thresh, nms, resize, runtime))
    per_image = [d for p in parts for d in p]
    dets = {m: [d[m] for d in per_image] for m in run_modes}
    agreement = {m: detection_agreement(dets[Mode.FLOAT], dets[m]) for m in run_modes if m != Mode.FLOAT}
    return EvalResult([label_of(i, k) for k, i in enumerate(items)], dets, agreement)


def compare_distributed(model_source: Any, stats: CalibrationStats, images,
                        methods: Sequence[str] = ("log2", "kl", "minmax", "percentile", "mse"),
                        per_channel: bool = False, backend=None, batch_size: int | None = None,
                        resize: str = "letterbox", progress: bool = False):
    """`engine.scale.compare.compare` on `backend` (the same algorithm: same numbers, same ranking),
    for a model given as a source a worker can load (zoo name, path, (cfg, weights), or a Model)."""
    return compare(model_source, stats, images, methods, per_channel=per_channel, resize=resize, progress=progress,
                   backend=backend, batch_size=batch_size)
