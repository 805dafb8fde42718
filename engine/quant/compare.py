"""Compare calibration methods on the same statistics and images; rank them by fitness to FLOAT.

One calibration pass serves every method (thresholds are pure functions of the histograms).
Each method is run in HYBRID and INT on the evaluation images; the table ranks methods by INT
detection agreement (mAP@0.5 vs FLOAT), then HYBRID agreement, then mean per-layer SQNR.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from engine.calib.collect import CalibrationStats, image_list
from engine.darknet.detect import detect_outputs
from engine.quant.executor import Executor, FloatView
from engine.quant.fitness import Agreement, detection_agreement, local_stats, model_size, propagated_stats
from engine.quant.qmodel import QuantizedModel, quantize_model
from engine.quant.modes import QUANT_MODES


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
        return (self.agreement["int"].map50, self.agreement["hybrid"].map50, self.mean_sqnr)

    def to_dict(self) -> dict:
        return {"method": self.method, "per_channel": self.per_channel, "mean_int_sqnr_db": self.mean_sqnr,
                "agreement": {m: a.to_dict() for m, a in self.agreement.items()}, "size": self.size,
                "layers": self.layers}


@dataclass
class CompareTable:
    results: list[MethodResult]                # ranked, best first
    images: list[str]

    @property
    def best(self) -> MethodResult:
        return self.results[0]

    def to_dict(self) -> dict:
        return {"ranking": [r.method for r in self.results], "best": self.best.method,
                "images": self.images, "methods": [r.to_dict() for r in self.results]}

    def __str__(self) -> str:
        lines = [f"{'rank':<5}{'method':<13}{'INT mAP50':>10}{'HYB mAP50':>10}{'INT found':>10}{'extra':>7}"
                 f"{'mean SQNR':>11}{'int8 MB':>9}"]
        for k, r in enumerate(self.results, 1):
            a, h = r.agreement["int"], r.agreement["hybrid"]
            lines.append(f"{k:<5}{r.method:<13}{a.map50:>10.3f}{h.map50:>10.3f}{a.matched:>6}/{a.matched + a.missed:<3}"
                         f"{a.extra:>7}{r.mean_sqnr:>9.1f}dB{r.size['int8_bytes'] / 1e6:>9.2f}")
        lines.append(f"most fit to FLOAT: {self.best.method}")
        return "\n".join(lines)

    def layer_table(self) -> str:
        head = f"{'layer':<16}" + "".join(f"{r.method:>13}" for r in self.results)
        rows = [head + "   (INT propagated SQNR, dB)"]
        for i, first in enumerate(self.results[0].layers):
            rows.append(f"{i:>3} {first['kind']:<12}" + "".join(f"{r.layers[i]['int_sqnr']:>13.1f}" for r in self.results))
        return "\n".join(rows)


def evaluate(model, qmodel: QuantizedModel, inputs, float_runs) -> tuple[dict[str, Agreement], list[dict]]:
    """Agreement per mode and per-layer statistics averaged over the inputs."""
    agreement: dict[str, Agreement] = {}
    per_layer: dict[str, list] = {}
    truth = [dets for _, dets in float_runs]
    for mode in QUANT_MODES:
        ex = Executor(model, qmodel, mode)
        preds, sqnr = [], []
        local, sat, use = [], [], []
        for pre, (outs, _) in zip(inputs, float_runs):
            values, records = ex.run(pre.x)
            preds.append(detect_outputs(model, FloatView(values), pre))
            prop = propagated_stats(outs, values, records)
            sqnr.append([s.sqnr_db for s in prop])
            if mode == "int":
                sat.append([s.saturation for s in prop])
                use.append([s.range_use for s in prop])
                local.append([s.sqnr_db if s else np.nan for s in local_stats(ex, pre.x, outs)])
        agreement[mode] = detection_agreement(truth, preds)
        per_layer[f"{mode}_sqnr"] = _mean(sqnr)
        if mode == "int":
            per_layer["int_local_sqnr"] = _mean(local)
            per_layer["saturation"] = _mean(sat)
            per_layer["range_use"] = _mean(use)
    layers = [{"layer": i, "kind": l.kind, **{k: float(v[i]) for k, v in per_layer.items()}}
              for i, l in enumerate(model.layers)]
    return agreement, layers


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


def compare(model, stats: CalibrationStats, images, methods: Sequence[str] = ("log2", "kl", "minmax", "percentile", "mse"),
            per_channel: bool = False, resize: str = "letterbox", progress: bool = True,
            on_method: Callable[[MethodResult, int, int], object] | None = None) -> CompareTable:
    """Quantize with each method from the same statistics, evaluate on `images`, rank.

    `on_method(result, done, total)` is called after each method (for widgets' progress bars).
    """
    items = image_list(images)
    inputs = [model.preprocess(i, resize) for i in items]
    float_runs = []
    for pre in inputs:
        outs = model.forward(pre.x)
        float_runs.append((outs, detect_outputs(model, outs, pre)))
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(methods), desc="comparing methods", unit="method")
    results = []
    try:
        for method in methods:
            qm = quantize_model(model, stats, method, per_channel=per_channel)
            agreement, layers = evaluate(model, qm, inputs, float_runs)
            results.append(MethodResult(method, qm.per_channel, agreement, layers, model_size(model, qm).to_dict(), qm))
            if bar is not None:
                bar.update(1)
            if on_method is not None:
                on_method(results[-1], len(results), len(methods))
    finally:
        if bar is not None:
            bar.close()
    results.sort(key=lambda r: tuple(-v if np.isfinite(v) else np.inf for v in r.key()))
    return CompareTable(results, [getattr(i, "name", str(i)) for i in items])
