"""How close a quantized run is to FLOAT: per-layer error statistics and detection agreement.

Per layer (SQNR, cosine, MSE, max abs error, range utilisation, saturation rate), either
*local* (the layer alone in int8 on the FLOAT run's inputs) or *propagated* (the quantized
network's output at that layer). End to end: mAP@0.5 of the quantized detections with the
FLOAT detections as ground truth, per class and mean, and model size.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from engine.darknet.detect import Detection
from engine.quant.executor import INT8, Executor, Value


@dataclass
class ErrorStats:
    sqnr_db: float
    cosine: float
    mse: float
    max_abs: float
    range_use: float          # max |q| / 127 of the int8 tensor (nan for float tensors)
    saturation: float         # saturated values / values

    def to_dict(self) -> dict:
        return asdict(self)


def error_stats(ref: np.ndarray, y: np.ndarray, q: np.ndarray | None = None, saturated: int = 0) -> ErrorStats:
    r = ref.astype(np.float64).ravel()
    e = y.astype(np.float64).ravel() - r
    sig, noise = float(r @ r), float(e @ e)
    sqnr = float("inf") if noise == 0 else (10 * np.log10(sig / noise) if sig > 0 else float("-inf"))
    ny = float(np.linalg.norm(y.astype(np.float64)))
    nr = float(np.sqrt(sig))
    cos = float(r @ y.astype(np.float64).ravel() / (nr * ny)) if nr > 0 and ny > 0 else float(nr == ny)
    if q is None or not q.size:
        use = float("nan")
    elif q.dtype == np.uint8:           # asymmetric profiles: the share of the 256 codes spanned
        use = float(int(q.max()) - int(q.min())) / 255
    else:
        use = float(np.abs(q.astype(np.int16)).max() / 127)
    return ErrorStats(sqnr, cos, noise / max(1, r.size), float(np.abs(e).max()) if e.size else 0.0, use,
                      saturated / max(1, r.size))


def propagated_stats(float_outs: Sequence[np.ndarray], values: Sequence[Value], records) -> list[ErrorStats]:
    """Quantized network vs FLOAT network, layer by layer, on the same input."""
    out = []
    for ref, v, rec in zip(float_outs, values, records):
        sat = rec.stats.get("saturated", 0) + rec.stats.get("input_saturated", 0)
        out.append(error_stats(ref, v.float(), v.q.q if v.q is not None else None, sat))
    return out


def local_stats(ex: Executor, x: np.ndarray, float_outs: Sequence[np.ndarray]) -> list[ErrorStats | None]:
    """Each int8 layer alone, on FLOAT inputs (quantized with their calibrated scales), vs FLOAT."""
    xv = Value(f=ex.model.check_input(x))
    floats = [Value(f=y) for y in float_outs]
    out: list[ErrorStats | None] = []
    for i, ref in enumerate(float_outs):
        if ex.precision(i) != INT8:
            out.append(None)
            continue
        v, rec = ex.run_layer(i, ex.inputs_of(i, xv, floats))
        sat = rec.stats.get("saturated", 0) + rec.stats.get("input_saturated", 0)
        out.append(error_stats(ref, v.float(), v.q.q if v.q is not None else None, sat))
    return out


def _iou(a: Detection, b: Detection) -> float:
    ix = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    iy = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = ix * iy
    union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter
    return inter / union if union > 0 else 0.0


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-point interpolated AP."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    idx = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[idx + 1] - r[idx]) * p[idx + 1]))


@dataclass
class Agreement:
    map50: float                       # mean AP over classes present in the FLOAT detections
    per_class: dict[str, float]
    matched: int                       # FLOAT detections found (IoU >= 0.5, same class)
    missed: int
    extra: int
    mean_iou: float                    # of the matched pairs

    def to_dict(self) -> dict:
        return asdict(self)


def detection_agreement(truth: Sequence[Sequence[Detection]], preds: Sequence[Sequence[Detection]],
                        iou: float = 0.5) -> Agreement:
    """mAP@iou of `preds` against `truth` (FLOAT detections as ground truth), over a set of images."""
    classes = sorted({d.class_id for dets in truth for d in dets})
    names = {d.class_id: d.name for dets in list(truth) + list(preds) for d in dets}
    per_class: dict[str, float] = {}
    matched = missed = extra = 0
    ious: list[float] = []
    for k in classes:
        scored = []   # (score, is_true_positive)
        n_truth = 0
        for gts, ps in zip(truth, preds):
            gt = [d for d in gts if d.class_id == k]
            n_truth += len(gt)
            used = [False] * len(gt)
            for p in sorted((d for d in ps if d.class_id == k), key=lambda d: -d.score):
                cands = [(_iou(p, g), j) for j, g in enumerate(gt) if not used[j]]
                best = max(cands, default=(0.0, -1))
                tp = best[0] >= iou
                if tp:
                    used[best[1]] = True
                    ious.append(best[0])
                scored.append((p.score, tp))
        scored.sort(key=lambda t: -t[0])
        tps = np.cumsum([t for _, t in scored]) if scored else np.zeros(0)
        fps = np.cumsum([not t for _, t in scored]) if scored else np.zeros(0)
        recall = tps / max(1, n_truth)
        precision = tps / np.maximum(1, tps + fps)
        per_class[names.get(k, str(k))] = average_precision(recall, precision) if scored else 0.0
        tp_total = int(tps[-1]) if scored else 0
        matched += tp_total
        missed += n_truth - tp_total
        extra += len(scored) - tp_total
    extra += sum(1 for ps in preds for d in ps if d.class_id not in classes)
    map50 = float(np.mean(list(per_class.values()))) if per_class else float(not any(preds))
    return Agreement(map50, per_class, matched, missed, extra, float(np.mean(ious)) if ious else float("nan"))


@dataclass
class SizeReport:
    float_bytes: int
    int8_bytes: int

    @property
    def compression(self) -> float:
        """Size saved, in percent of the float model."""
        return 100.0 * (1 - self.int8_bytes / self.float_bytes) if self.float_bytes else 0.0

    def to_dict(self) -> dict:
        return {"float_bytes": self.float_bytes, "int8_bytes": self.int8_bytes, "compression_pct": self.compression}


def model_size(model, qmodel) -> SizeReport:
    """float32 parameter bytes (as in .weights) vs what an int8 device stores: int8 weights, int32
    biases and the scales (batch norm is folded, so its vectors disappear)."""
    rest = sum(l.num_params for l in model.layers if l.index not in qmodel.layers)
    return SizeReport(int(4 * model.graph.total_params), int(qmodel.int8_bytes() + 4 * rest))
