"""Head bias correction (`--refine head`): remove the mean shift the whole int8 network leaves on the
detection heads' logits, measured through the INT network itself, weighted where objects are.

Why: the lost detections of an all-int8 yolov3-tiny are FLOAT detections just above the threshold that
end just below it (docs/quantization.md). Measured on the calibration photos and on unseen variants,
the INT logits of the head convs are biased low at the positions that carry objects (minmax, uint8
zero points: objectness -.03 to -.06, the best class -.05 to -.12 on both, with per-position spread
.15-.22): the rounding of every upstream activation and weight adds up to a systematic shrink of the
heads' evidence, which bias correction per layer (FLOAT inputs, the layer alone, engine/quant/refine/
bias.py) cannot see. This correction is that of the heads only, but with the real INT inputs (the
empirical bias correction of Nagel et al. 2019 / NNCF's full BiasCorrection, restricted to the two
layers whose outputs are the detections).

Weighting: box channels are left alone by default (`boxes=True`: each gets its mean over every
position; measured .004 mAP@[.5:.95] worse on both variant sets, the same lost detections). An objectness
channel's shift is its mean weighted by the FLOAT objectness sigmoid (the positions
whose score can cross a threshold), and the class channels of a head share one shift: their mean
weighted by the FLOAT score sigmoid(obj) * sigmoid(class) over all classes, pooled because the
calibration photos show only a handful of classes (a shift per class would fit those few objects).
`weighting="slope"` weights each logit instead by the squared derivative of the score in it (the
least-squares fit of the linearised score error): it removes the mean score error on unseen variants
(+.0004 / +.0021 after, −.0055 / −.0039 before) but not one lost detection (docs/quantization.md).
The shift goes into the int32 bias (b_q -= round(shift / acc_scale)): no other integer changes.
Cost: one INT pass over the calibration images (their FLOAT head outputs come from the calibration
pass, engine/calib/floats.py).
"""
from __future__ import annotations

import numpy as np

from engine.calib.floats import FloatOutputs, float_outputs
from engine.errors import ArgumentError, EngineError
from engine.layers.activations import logistic
from engine.quant.layerquant import LayerQuant
from engine.quant.qmodel import QuantizedModel


def head_convs(model, qmodel: QuantizedModel) -> list[tuple[int, int, int]]:
    """(conv index, anchors, classes) of every int8 conv whose output is read by an anchor-based head only."""
    from engine.quant.heads import head_layout
    out = []
    for layer in model.layers:
        lay = head_layout(layer)
        if lay is None:
            continue
        c = layer.inputs[0]
        if c in qmodel.layers and c not in qmodel.float_layers and model.layers[c].kind == "convolutional":
            out.append((c, len(lay[0]), lay[1]))
    return out


def head_shifts(f: np.ndarray, q: np.ndarray, anchors: int, classes: int,
                boxes: bool = False, weighting: str = "score") -> tuple[np.ndarray, np.ndarray]:
    """(weighted sum of INT - FLOAT, sum of weights) per output channel of one head conv's output (C, H, W),
    channels laid out per anchor as x, y, w, h, objectness, classes. Class channels of the head are pooled
    (same sums on each of them). weighting: "score" (as the module says) or "slope"."""
    per = 5 + classes
    f = f.reshape(anchors, per, -1).astype(np.float64)
    d = q.reshape(anchors, per, -1).astype(np.float64) - f
    num, den = np.zeros((anchors, per)), np.zeros((anchors, per))
    if boxes:
        num[:, :4], den[:, :4] = d[:, :4].sum(axis=2), d.shape[2]
    obj = logistic(f[:, 4].copy())                           # (A, P); logistic works in place
    cls = logistic(f[:, 5:].copy())                          # (A, classes, P)
    if weighting not in ("score", "slope"):
        raise ArgumentError(f"head bias weighting={weighting!r}: expected 'score' or 'slope'")
    if weighting == "slope":
        w_obj = (obj * (1.0 - obj) * cls.max(axis=1)) ** 2
        w_cls = (obj[:, None, :] * cls * (1.0 - cls)) ** 2
    else:
        w_obj, w_cls = obj, obj[:, None, :] * cls
    num[:, 4], den[:, 4] = (d[:, 4] * w_obj).sum(axis=1), w_obj.sum(axis=1)
    num[:, 5:], den[:, 5:] = (d[:, 5:] * w_cls).sum(), w_cls.sum()
    return num.ravel(), den.ravel()


def head_bias_correction(model, qmodel: QuantizedModel, floats: FloatOutputs | None = None, images=None,
                         resize: str = "letterbox", boxes: bool = False,
                         weighting: str = "score") -> QuantizedModel:
    """A copy of `qmodel` whose head convs' int32 biases cancel the mean INT - FLOAT shift of their outputs
    on the calibration images (weighted as the module says). The images' FLOAT inputs and head outputs come
    from `floats` (kept by the calibration pass) or a FLOAT pass over `images`. The per-head shifts
    (objectness mean, class) are kept in meta["head_bias"]."""
    from engine.quant.executor import Executor, FloatView, equalized_for
    if weighting not in ("score", "slope"):
        raise ArgumentError(f"head bias weighting={weighting!r}: expected 'score' or 'slope'")
    heads = head_convs(model, qmodel)
    if not heads:
        raise EngineError("head bias correction: no int8 convolution feeds a [yolo] / [region] head")
    if floats is None or not floats.complete:
        if images is None and floats is None:
            raise ArgumentError("head bias correction needs the calibration images' FLOAT outputs: pass "
                                "floats=... or images=...")
        if images is not None:                   # the calibration pass kept no / not every image
            floats = float_outputs(equalized_for(model, qmodel), images, resize)
    if len(floats) == 0:
        raise EngineError("head bias correction: no FLOAT outputs were kept (no calibration images, or over "
                          "the memory cap)")
    ex = Executor(model, qmodel, "int")
    sums = {c: [0.0, 0.0] for c, _, _ in heads}
    for kept in floats.images:
        view = FloatView(ex.run(kept[-1])[0])
        for c, a, k in heads:
            num, den = head_shifts(kept[c], np.asarray(view[c]), a, k, boxes, weighting)
            sums[c][0] = sums[c][0] + num
            sums[c][1] = sums[c][1] + den
    twin = qmodel.copy()
    report = {}
    for c, a, k in heads:
        lq = qmodel.layers[c]
        shift = sums[c][0] / np.maximum(sums[c][1], 1e-12)
        b_q = np.clip(lq.b_q.astype(np.int64) - np.rint(shift / lq.acc_scale).astype(np.int64),
                      -(2 ** 31) + 1, 2 ** 31 - 1).astype(np.int32)
        twin.layers[c] = LayerQuant(lq.w_q, lq.w_scale, b_q, lq.in_scale, lq.scheme)
        per = shift.reshape(a, 5 + k)
        report[str(c)] = {"objectness": [float(v) for v in per[:, 4]], "class": float(per[0, 5])}
    twin.meta["head_bias"] = report
    return twin
