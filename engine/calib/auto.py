"""`auto`: per tensor, the calibrator whose threshold causes the least error downstream.

A threshold that is best for a tensor's own histogram (least local MSE, least KL) is not always
best for the detections: the error it causes is amplified or absorbed by the layers after it.
`auto` measures that directly. Starting from `minmax` everywhere, it visits the scale groups
(tensors sharing one scale, engine/calib/views.py) in network order and, for each, tries every
candidate method's threshold with the rest of the network as chosen so far; it keeps the one with
the least error at the detection heads' inputs (sum over heads of |INT - FLOAT|^2 / |FLOAT|^2,
INT mode, on a few calibration images). One sweep, coordinate-descent style; the choice per
tensor is stored in the quantized model's meta["auto"].
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from engine.calib.base import CALIBRATORS, Calibrator, make
from engine.calib.histogram import AbsHistogram
from engine.errors import EngineError

CANDIDATES = ("minmax", "percentile", "mse", "kl")


@CALIBRATORS.register("auto")
class AutoCalibrator(Calibrator):
    name = "auto"
    needs_images = True           # quantize_model(..., images=...) runs `choose`

    def __init__(self, candidates: str = ",".join(CANDIDATES), probe_images: int = 2, **settings) -> None:
        names = [c.strip() for c in str(candidates).split(",") if c.strip()]
        bad = [c for c in names if c not in CALIBRATORS or c == "auto"]
        if bad or not names:
            raise ValueError(f"auto candidates {bad or names}: expected calibration methods other than auto")
        super().__init__(**({"candidates": ",".join(names)} if names != list(CANDIDATES) else {}),
                         **({"probe_images": int(probe_images)} if int(probe_images) != 2 else {}), **settings)
        self.candidates, self.probe_images = names, max(1, int(probe_images))

    def threshold(self, h: AbsHistogram) -> float:
        raise EngineError("method 'auto' chooses per tensor by running the model: call quantize_model(model, "
                          "stats, 'auto', images=...) (the CLI passes the calibration images)")


def head_error(model, qmodel, inputs: Sequence, float_heads: Sequence[dict[int, np.ndarray]], feeders) -> float:
    """Sum over detection-head feeders of |INT - FLOAT|^2 / |FLOAT|^2, summed over the inputs."""
    from engine.quant.executor import Executor
    ex = Executor(model, qmodel, "int")
    err = 0.0
    for x, ref in zip(inputs, float_heads):
        values, _ = ex.run(x)
        for i in feeders:
            f = ref[i].astype(np.float64)
            d = values[i].float().astype(np.float64) - f
            err += float((d * d).sum() / max((f * f).sum(), 1e-30))
    return err


def choose(model, stats, calibrator: AutoCalibrator, images: Sequence, per_channel: bool, rules=None):
    """(scales, thresholds, choice) where choice maps every tensor to the method picked for it."""
    from engine.calib.collect import image_list
    from engine.calib.views import activation_scales
    from engine.quant.executor import head_feeders
    from engine.quant.qmodel import quantize_model, rescaled
    items = image_list(images)[: calibrator.probe_images]
    inputs = [x if isinstance(x, np.ndarray) else model.preprocess(x).x for x in items]
    feeders = sorted(head_feeders(model))
    float_heads = []
    for x in inputs:
        outs = model.forward(x)
        float_heads.append({i: outs[i] for i in feeders})
    per_method = {}
    for name in calibrator.candidates:
        scales, thresholds, sources = activation_scales(model, stats, make(name), rules)
        per_method[name] = (scales, thresholds)
    first = calibrator.candidates[0]
    scales, thresholds = dict(per_method[first][0]), dict(per_method[first][1])
    choice = {nid: first for nid in scales}
    qm = quantize_model(model, stats, first, per_channel=per_channel, rules=rules)
    qm = rescaled(model, qm, scales)
    groups: dict[str, list[str]] = {}
    for nid, src in sources.items():
        groups.setdefault(src, []).append(nid)
    best_err = head_error(model, qm, inputs, float_heads, feeders)
    for src, members in groups.items():
        tried = {round(thresholds[members[0]], 9)}
        for name in calibrator.candidates[1:]:
            t = per_method[name][1][members[0]]
            if round(t, 9) in tried:
                continue
            tried.add(round(t, 9))
            trial = rescaled(model, qm, {n: per_method[name][0][n] for n in members})
            err = head_error(model, trial, inputs, float_heads, feeders)
            if err < best_err:
                best_err, qm = err, trial
                for n in members:
                    scales[n], thresholds[n], choice[n] = per_method[name][0][n], per_method[name][1][n], name
    return scales, thresholds, choice
