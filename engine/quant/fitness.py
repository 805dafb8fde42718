"""How close a quantized run is to FLOAT: per-layer error statistics and detection agreement.

Per layer (SQNR, cosine, MSE, max abs error, range utilisation, saturation rate), either
*local* (the layer alone in int8 on the FLOAT run's inputs) or *propagated* (the quantized
network's output at that layer). End to end: COCO mAP@0.5 and mAP@[.5:.95] of the quantized
detections with the FLOAT detections as ground truth (engine/quant/metrics.py), and model size.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from engine.darknet.detect import Detection
from engine.kernels.threads import own_threads, parallel_items
from engine.quant.executor import INT8, Executor, Value
from engine.quant.intops import band_buffer
from engine.quant.metrics import coco_map
from engine.quant.qtensor import QTensor


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


STATS_BLOCK = 1 << 15   # elements per block of error_stats: its float64 copies stay in L2
SERIAL_BLOCKS = 4       # fewer blocks than this run in the calling thread


def _sums(ref: np.ndarray, y: np.ndarray | QTensor, rr: float | None = None,
          noise_only: bool = False) -> tuple[float, float, float, float, float]:
    """(r.r, e.e, y.y, r.y, max|e|) in float64 with e = y - r, over fixed blocks.

    This is most of a method comparison's statistics time. Whole-tensor float64 copies (4 per call
    before) cost memory passes, and a 2-thread BLAS dot product spins and joins on a busy machine
    (measured 3x slower than 1 thread at load 10): so blocks are converted while in cache into
    per-thread buffers, their dots run on single-threaded BLAS, blocks are spread over the kernel
    threads, and the partial sums are added in block order, which makes the result the same on any
    thread count. r.y = r.r + r.e (one dot fewer); `rr`: r.r when known (the same FLOAT reference
    is compared with every method and mode: `value_stats` keeps it in a memo). `y` an int8 QTensor:
    dequantized block by block (QTensor.dequantize's float32 values), never as a whole float copy.
    `noise_only` (with rr): e.e alone, y.y / r.y / max|e| NaN; e is the same float64 difference (one
    subtraction with float64 operands), summed by the same dot, so e.e has the same bits.
    """
    qt = y if isinstance(y, QTensor) else None
    r, yv = ref.reshape(-1), (qt.q if qt is not None else y).reshape(-1)
    n = r.size
    count = -(-n // STATS_BLOCK)
    parts = np.zeros((count, 6))

    def lean(part: int, i: int) -> None:
        lo, hi = i * STATS_BLOCK, min(n, (i + 1) * STATS_BLOCK)
        eb = band_buffer("stats-e", part, (hi - lo,))
        yb = yv[lo:hi] if qt is None else dequantized_block(yv[lo:hi], qt, band_buffer("stats-y", part, (hi - lo,),
                                                                                         np.float32))
        np.subtract(yb, r[lo:hi], out=eb, dtype=np.float64)     # float64(y) - float64(r), as `block`
        parts[i, 1] = eb @ eb

    def block(part: int, i: int) -> None:
        lo, hi = i * STATS_BLOCK, min(n, (i + 1) * STATS_BLOCK)
        rb, eb = band_buffer("stats-r", part, (hi - lo,)), band_buffer("stats-e", part, (hi - lo,))
        np.copyto(rb, r[lo:hi])
        if qt is None:
            np.copyto(eb, yv[lo:hi])
        else:
            np.copyto(eb, dequantized_block(yv[lo:hi], qt, band_buffer("stats-y", part, (hi - lo,), np.float32)))
        yy = eb @ eb
        eb -= rb                   # exact: float32 values, their difference in float64
        parts[i] = (rb @ rb if rr is None else 0.0), eb @ eb, yy, rb @ eb, eb.max(), -eb.min()

    if noise_only and rr is None:
        raise ValueError("noise_only needs r.r (rr)")
    with own_threads():
        _blocks(count, lean if noise_only else block)
    if noise_only:
        nan = float("nan")
        return rr, float(parts[:, :4].sum(axis=0)[1]), nan, nan, nan
    rsum, ee, yy, re = (float(v) for v in parts[:, :4].sum(axis=0))
    rsum = rsum if rr is None else rr
    return rsum, ee, yy, rsum + re, float(parts[:, 4:].max()) + 0.0 if count else 0.0   # + 0.0: never -0.0 (a -min of zeros)


def _blocks(count: int, fn) -> None:
    """fn(part, i) for every block: on the kernel threads, or here for a few blocks (a small layer's
    statistics are not worth a thread hand-off, which on a busy host can wait a time slice). The sums
    are added in block order afterwards, so this changes no bit."""
    if count < SERIAL_BLOCKS:
        for i in range(count):
            fn(0, i)
    else:
        parallel_items(count, fn)


def dequantized_block(qb: np.ndarray, qt: QTensor, out: np.ndarray) -> np.ndarray:
    """qt.dequantize() of the elements qb of qt.q, into float32 `out` (the same float32 values)."""
    if qt.zero_point:
        return np.multiply((qb.astype(np.int32) - np.int32(qt.zero_point)).astype(np.float32),
                           np.float32(qt.scale), out=out)
    return np.multiply(qb, np.float32(qt.scale), out=out, dtype=np.float32)


def ref_power(ref: np.ndarray) -> float:
    """r.r of a FLOAT reference, the same sums in the same order as `_sums` (so the same bits)."""
    r = ref.reshape(-1)
    n = r.size
    count = -(-n // STATS_BLOCK)
    parts = np.zeros((count, 6))

    def block(part: int, i: int) -> None:
        lo, hi = i * STATS_BLOCK, min(n, (i + 1) * STATS_BLOCK)
        rb = band_buffer("stats-r", part, (hi - lo,))
        np.copyto(rb, r[lo:hi])
        parts[i, 0] = rb @ rb

    with own_threads():
        _blocks(count, block)
    return float(parts[:, :4].sum(axis=0)[0])


def error_stats(ref: np.ndarray, y: np.ndarray | QTensor, q: np.ndarray | None = None, saturated: int = 0,
                rr: float | None = None, sqnr_only: bool = False) -> ErrorStats:
    """ref (FLOAT) vs y (quantized run, dequantized, or its QTensor): sums in float64 (see _sums;
    rr: r.r if known). `sqnr_only`: SQNR, MSE, range use and saturation alone (the same bits),
    cosine and max_abs NaN: a method comparison's table reads no more, and this is half its cost."""
    if sqnr_only and rr is None:
        rr = ref_power(ref)
    sig, noise, yy, ry, max_abs = _sums(ref, y, rr, noise_only=sqnr_only)
    sqnr = float("inf") if noise == 0 else (10 * np.log10(sig / noise) if sig > 0 else float("-inf"))
    ny, nr = float(np.sqrt(yy)), float(np.sqrt(sig))
    cos = float(ry / (nr * ny)) if nr > 0 and ny > 0 else float(nr == ny)
    if sqnr_only:
        cos = float("nan")
    if q is None or not q.size:
        use = float("nan")
    elif q.dtype == np.uint8:           # asymmetric profiles: the share of the 256 codes spanned
        use = float(int(q.max()) - int(q.min())) / 255
    else:
        use = max(int(q.max()), -int(q.min())) / 127
    return ErrorStats(sqnr, cos, noise / max(1, ref.size), max_abs, use, saturated / max(1, ref.size))


def value_stats(ref: np.ndarray, v: Value, sat: int, memo=None, sqnr_only: bool = False) -> ErrorStats:
    """error_stats of a layer value against its FLOAT reference; with a memo (engine/quant/layermemo.py),
    taken from an identical comparison already made there (same arrays, same grid, same saturation)."""
    y = v.q if v.f is None else v.f
    if memo is None:
        return error_stats(ref, y, v.q.q if v.q is not None else None, sat, sqnr_only=sqnr_only)
    a = v.f if v.f is not None else v.q.q
    key = ("stats", id(ref), id(a), None if v.f is not None else (v.q.scale, v.q.zero_point), sat, sqnr_only)
    hit = memo.get(key)
    if hit is None:
        rr = memo.get(("r.r", id(ref)))
        if rr is None:
            rr = ref_power(ref)
            memo.put(("r.r", id(ref)), rr, ref)
        hit = error_stats(ref, y, v.q.q if v.q is not None else None, sat, rr, sqnr_only)
        memo.put(key, hit, ref, a)
    return hit


def propagated_stats(float_outs: Sequence[np.ndarray], values: Sequence[Value], records,
                     memo=None, sqnr_only: bool = False) -> list[ErrorStats]:
    """Quantized network vs FLOAT network, layer by layer, on the same input (`sqnr_only`: see error_stats)."""
    out = []
    for ref, v, rec in zip(float_outs, values, records):
        sat = rec.stats.get("saturated", 0) + rec.stats.get("input_saturated", 0)
        out.append(value_stats(ref, v, sat, memo, sqnr_only))
    return out


def local_stats(ex: Executor, x: np.ndarray, float_outs: Sequence[np.ndarray],
                propagated: Sequence[ErrorStats] | None = None, memo=None,
                sqnr_only: bool = False) -> list[ErrorStats | None]:
    """Each int8 layer alone, on FLOAT inputs (quantized with their calibrated scales), vs FLOAT.

    `propagated`: `propagated_stats` of a run of the same executor on the same x; a layer that reads
    only the network input has the same inputs there, so its statistics are taken, not recomputed
    (layer 0, the costliest int8 layer of a YOLO). `memo`: see Executor.run_layer; `sqnr_only`: see
    error_stats (an entry taken from `propagated` is passed on as it is)."""
    xv = Value(f=ex.checked_input(x, memo))
    floats = [Value(f=y) for y in float_outs]
    out: list[ErrorStats | None] = []
    for i, ref in enumerate(float_outs):
        if ex.precision(i) != INT8:
            out.append(None)
            continue
        if propagated is not None and all(src < 0 for src in ex.model.layers[i].inputs):
            out.append(propagated[i])
            continue
        v, rec = ex.run_layer(i, ex.inputs_of(i, xv, floats), memo=memo)
        sat = rec.stats.get("saturated", 0) + rec.stats.get("input_saturated", 0)
        out.append(value_stats(ref, v, sat, memo, sqnr_only))
    return out


@dataclass
class Agreement:
    map50: float                       # COCO mAP@0.5 over classes present in the FLOAT detections
    per_class: dict[str, float]        # AP@0.5 per class
    matched: int                       # FLOAT detections found (IoU >= iou, same class)
    missed: int                        # FLOAT detections lost
    extra: int
    mean_iou: float                    # of the matched pairs
    map50_95: float = float("nan")     # COCO mAP averaged over IoU 0.50:0.95

    def to_dict(self) -> dict:
        return asdict(self)


def detection_agreement(truth: Sequence[Sequence[Detection]], preds: Sequence[Sequence[Detection]],
                        iou: float = 0.5) -> Agreement:
    """COCO mAP@0.5 and mAP@[.5:.95] of `preds` against `truth` (FLOAT detections as ground truth)
    over a set of images (engine/quant/metrics.py); matched / missed / extra counted at IoU `iou`."""
    r = coco_map(truth, preds)
    names = {d.class_id: d.name for dets in list(truth) + list(preds) for d in dets}
    per_class = {names.get(k, str(k)): float(ap[0]) for k, ap in r.per_class.items()}
    if iou == 0.5:
        matched, ious = r.tp50, r.ious50
    else:
        _, ious_all = _matches_at(truth, preds, iou)
        matched, ious = len(ious_all), ious_all
    return Agreement(r.map50, per_class, matched, r.n_truth - matched, r.n_preds - matched,
                     float(np.mean(ious)) if ious else float("nan"), r.map50_95)


def _matches_at(truth, preds, iou: float) -> tuple[int, list[float]]:
    from engine.quant.metrics import match
    ious: list[float] = []
    for gts, ps in zip(truth, preds):
        for k in {d.class_id for d in gts}:
            dt = sorted((d for d in ps if d.class_id == k), key=lambda d: -d.score)
            tp, miou = match(dt, [d for d in gts if d.class_id == k], np.array([iou]))
            ious.extend(miou[0][tp[0]].tolist())
    return len(ious), ious


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
    biases and the scales (batch norm is folded, so its vectors disappear); a layer the quantized model
    keeps FLOAT (`qmodel.float_layers`, mixed precision) is stored as its float32 parameters."""
    kept = set(qmodel.float_layers)
    rest = sum(l.num_params for l in model.layers if l.index not in qmodel.layers or l.index in kept)
    int8 = qmodel.int8_bytes([i for i in qmodel.layers if i not in kept])
    return SizeReport(int(4 * model.graph.total_params), int(int8 + 4 * rest))
