"""Which statistics calibrate which tensor: the rules every method but `yolo2_light` follows.

A calibrator is a pure function of one histogram; these rules decide which histogram that is and
which tensors must share a scale, from how the int8 path uses each tensor:

* `one_sided`: a leaky / relu output (and maxpool / upsample / route of such outputs) is read from
  its positive-side histogram. Its negatives are at most 0.1x the pre-activation and nearly all lie
  inside [-T, 0]; folded into |x| they pile into a dense peak near 0 that drags KL / percentile /
  mse thresholds down (KL clipped yolov3-tiny's layer 0 at 5.8 of 47.9).
* `shared_scales`: maxpool, upsample, reorg and dropout keep their input's scale in INT mode, so a
  tensor read only by such a layer is calibrated on what that reader passes on (a maxpool's output
  has the heavier tail: it keeps the maxima) and the chain shares one scale (HYBRID then quantizes
  the next convolution's input with the scale INT actually uses). An upsample with `scale=` multiplies
  its values (INT runs it at its input's scale times the factor), so it is calibrated on its own and
  the device profile stores its run-time grid (`Profile.tie_grids`).
* `first_layer`: the image and the first convolution's output are never clipped. Pixels are exact
  multiples of 1/255 in [0, 1]; the first conv's rare large values are edges and colour contrast,
  the signal every later layer builds on (kept FLOAT alone this layer recovers most of KL's loss).
  A power of two cannot equal that range: log2 takes its least-error power of two there instead
  (`Calibrator.group_threshold`; rounding the range up cost the image half its levels).
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.calib.base import Calibrator
from engine.calib.collect import CalibrationStats, one_sided_ids, positive_key, quantizable_ids
from engine.calib.histogram import AbsHistogram

RULES = ("one_sided", "shared_scales", "first_layer")


def readers(model) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {"input": []}
    for layer in model.layers:
        out.setdefault(str(layer.index), [])
        for s in layer.inputs:
            out.setdefault("input" if s < 0 else str(s), []).append(layer.index)
    return out


def scale_groups(model) -> dict[str, str]:
    """nid -> the tensor whose histogram calibrates it: follow single readers that keep the scale."""
    rd = readers(model)
    keepers = {str(layer.index) for layer in model.layers if layer.keeps_scale}
    out = {}
    for nid in quantizable_ids(model):
        cur = nid
        while len(rd.get(cur, [])) == 1 and str(rd[cur][0]) in keepers:
            cur = str(rd[cur][0])
        out[nid] = cur
    for nid in quantizable_ids(model):      # a scale keeper shares its producer's group
        if nid in keepers:
            src = model.layers[int(nid)].inputs[0]
            out[nid] = out["input" if src < 0 else str(src)]
    return out


def first_layer_ids(model) -> set[str]:
    """The image and every layer reading it directly (and whatever shares their scale)."""
    return {"input"} | {str(layer.index) for layer in model.layers if any(s < 0 for s in layer.inputs)}


@dataclass
class TensorView:
    hist: AbsHistogram          # the histogram the calibrator reads
    source: str                 # its key in the statistics ("3+" = positive side of tensor 3)
    full_range: bool            # threshold = the largest |x| seen (power-of-two methods: their own rule)
    tensor: AbsHistogram | None = None      # the group's |x| histogram, both signs (the one-sided view's source)


def views(model, stats: CalibrationStats, rules=RULES) -> dict[str, TensorView]:
    """The histogram each quantizable tensor is calibrated on under `rules` (a subset of RULES)."""
    unknown = set(rules) - set(RULES)
    if unknown:
        raise ValueError(f"calibration rules {sorted(unknown)}: expected a subset of {', '.join(RULES)}")
    groups = scale_groups(model) if "shared_scales" in rules else {n: n for n in quantizable_ids(model)}
    sided = one_sided_ids(model) if "one_sided" in rules else set()
    first = first_layer_ids(model) if "first_layer" in rules else set()
    full_groups = {groups[n] for n in first if n in groups}
    out = {}
    for nid in quantizable_ids(model):
        src = groups[nid]
        key = positive_key(src) if src in sided and positive_key(src) in stats.hists else src
        h = stats.hists[key]
        if key != src and h.total == 0:
            key, h = src, stats.hists[src]
        out[nid] = TensorView(h, key, src in full_groups, stats.hists[src])
    return out


def activation_scales(model, stats: CalibrationStats, calibrator, rules=None,
                      symmetric: bool = True) -> tuple[dict, dict, dict]:
    """(scales, thresholds, sources) of every quantizable tensor; rules default to the calibrator's.
    `symmetric`: the thresholds set symmetric int8 grids (a calibrator's `group_threshold`); False for zero-point
    grids, which keep each group's threshold as the rules give it (the range, or `threshold` of the view)."""
    rules = calibrator.rules if rules is None else tuple(rules)
    from engine.kernels.threads import own_threads, parallel_items
    vs = views(model, stats, rules)
    first: dict[tuple[str, bool], object] = {}
    for v in vs.values():     # a shared group's histogram is searched once
        first.setdefault((v.source, v.full_range), v)
    keys = list(first)
    memo: dict[tuple[str, bool], float] = {}

    def one(_part: int, k: int) -> None:      # one group per work item: searches are pure functions of a histogram
        v = first[keys[k]]
        t = calibrator.group_threshold(v) if symmetric else Calibrator.group_threshold(calibrator, v)
        memo[keys[k]] = t if v.hist.amax > 0 else 0.0

    with own_threads():
        parallel_items(len(keys), one)
    thresholds = {nid: memo[(v.source, v.full_range)] for nid, v in vs.items()}
    scales = {nid: calibrator.scale_for(t) if t > 0 else calibrator.scale_for(1.0) for nid, t in thresholds.items()}
    return scales, thresholds, {nid: v.source for nid, v in vs.items()}
