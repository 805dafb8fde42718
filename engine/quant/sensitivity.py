"""Sensitivity sweep: which layer's quantization hurts most?

For every layer with an int8 path in the session's mode, the network runs twice on the session's
image: with only that layer quantized, and with only that layer kept FLOAT. Layers are ranked by
the damage of quantizing them alone (detection agreement with FLOAT, then head SQNR).
"""
from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from engine.darknet.detect import detect_outputs
from engine.errors import EngineError
from engine.quant.executor import Executor
from engine.quant.fitness import detection_agreement, error_stats
from engine.quant.modes import Mode
from engine.quant.progress import stop_hook


@dataclass
class SensitivityRow:
    index: int
    kind: str
    only_quantized_map50: float      # agreement with FLOAT when only this layer is int8
    only_quantized_sqnr: float       # mean SQNR (dB) of the detection heads' inputs, same run
    only_float_map50: float          # agreement when every int8-capable layer but this one is int8
    only_float_sqnr: float
    rank: int = 0                    # 1 = hurts most when quantized

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SensitivityTable:
    rows: list[SensitivityRow]       # in rank order
    mode: str
    cancelled: bool = False

    def to_dict(self) -> dict:
        return {"mode": self.mode, "cancelled": self.cancelled, "rows": [r.to_dict() for r in self.rows]}

    def ranks(self) -> dict[str, float]:
        """Overlay for the graph view: node id -> rank."""
        return {str(r.index): float(r.rank) for r in self.rows}


def _head_sqnr(model, ref, outs) -> float:
    heads = [l.inputs[0] for l in model.layers if l.is_head] or [len(model.layers) - 1]
    vals = [error_stats(ref[i], outs[i]).sqnr_db for i in heads]
    vals = [min(v, 200.0) for v in vals]
    return float(np.mean(vals))


def sensitivity(session, progress: bool = True, cancel: threading.Event | Callable[[], bool] | None = None
                ) -> SensitivityTable:
    """Sweep every int8-capable layer (cancellable: set the event or return True from the callable).

    Raises:
        ArgumentError: `cancel` is neither None, an event (has `is_set()`) nor callable (before any work)."""
    stop = stop_hook(cancel)
    if session.mode == Mode.FLOAT or session.qmodel is None:
        raise EngineError("the sensitivity sweep needs HYBRID or INT mode and a quantized model")
    model, pre = session.model, session.pre
    base = Executor(model, session.qmodel, session.mode, ())
    candidates = [i for i in range(len(model.layers)) if base.has_int_path(i)]
    ref = session.float_reference()
    truth = [detect_outputs(model, ref, pre, session.thresh, session.nms)]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(candidates), desc="sensitivity", unit="layer")
    rows, cancelled = [], False
    try:
        for i in candidates:
            if stop():
                cancelled = True
                break
            measures = []
            for float_layers in ([j for j in candidates if j != i], [i]):
                outs = Executor(model, session.qmodel, session.mode, float_layers).forward(pre.x)
                dets = [detect_outputs(model, outs, pre, session.thresh, session.nms)]
                measures += [detection_agreement(truth, dets).map50, _head_sqnr(model, ref, outs)]
            rows.append(SensitivityRow(i, model.layers[i].kind, *measures))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    rows.sort(key=lambda r: (r.only_quantized_map50, r.only_quantized_sqnr))
    for k, r in enumerate(rows, 1):
        r.rank = k
    return SensitivityTable(rows, session.mode, cancelled)
