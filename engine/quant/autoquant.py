"""`auto` run: per scale group, the candidate method whose threshold causes the least error at the
detection heads (engine/calib/auto.py declares the method). `quantize(model, stats, method, ...)` is
quantize_model for every method, `auto` included (it needs the calibration images).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from engine.calib import make
from engine.calib.auto import AutoCalibrator
from engine.calib.collect import image_list, network_input
from engine.calib.views import activation_scales
from engine.errors import EngineError
from engine.quant.executor import Executor, head_feeders
from engine.quant.qmodel import QuantizedModel, quantize_model, rescaled


def quantize(model, stats, method: str = "minmax", per_channel: bool = False, images=None,
             rules=None, profile: str = "qwidgets", resize: str = "letterbox", **settings: Any) -> QuantizedModel:
    """quantize_model, plus `auto` (which runs the model on `images`, resized as the calibration pass did, its
    choice in meta["auto"])."""
    if method != "auto":
        return quantize_model(model, stats, method, per_channel=per_channel, rules=rules, profile=profile, **settings)
    if images is None:
        raise EngineError("method 'auto' runs the model to choose: pass images=... (calibration images)")
    try:
        calibrator = make("auto", **settings)
    except (TypeError, ValueError) as err:
        raise EngineError(f"method 'auto': {err}") from None
    if profile != "qwidgets":
        raise EngineError(f"method 'auto' chooses symmetric int8 scales (profile qwidgets), not for profile {profile!r}")
    qm = quantize_model(model, stats, calibrator.candidates[0], per_channel=per_channel, rules=rules)
    scales, thresholds, choice = choose(model, stats, calibrator, images, per_channel, rules, resize)
    qm = rescaled(model, qm, scales)
    qm.method, qm.settings, qm.thresholds = "auto", calibrator.settings, thresholds
    qm.meta["auto"] = choice
    return qm


def head_error(model, qmodel, inputs: Sequence, float_heads: Sequence[dict[int, np.ndarray]], feeders) -> float:
    """Sum over detection-head feeders of |INT - FLOAT|^2 / |FLOAT|^2, summed over the inputs."""
    ex = Executor(model, qmodel, "int")
    err = 0.0
    for x, ref in zip(inputs, float_heads):
        values, _ = ex.run(x)
        for i in feeders:
            f = ref[i].astype(np.float64)
            d = values[i].float().astype(np.float64) - f
            err += float((d * d).sum() / max((f * f).sum(), 1e-30))
    return err


def choose(model, stats, calibrator: AutoCalibrator, images: Sequence, per_channel: bool, rules=None,
           resize: str = "letterbox"):
    """(scales, thresholds, choice) where choice maps every tensor to the method picked for it."""
    items = image_list(images)[: calibrator.probe_images]
    # as calibration reads them: an (H, W, 3) photo array is an image, not a network input
    inputs = [network_input(model, x, resize) for x in items]
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
