"""Near-threshold error of the heads' logits, and the recall margin (`--refine margin`): remove the heads'
bias where detections cross the threshold, then move the objectness and class logits up by k robust deviations of
their own errors.

Why: a lost detection is a FLOAT detection at score >= thresh whose INT score falls below it
(docs/quantization.md, rounds 1-5). Their error is mostly spread, not bias, and an unbiased error of
int8's size (.03 in score) loses FLOAT detections sitting within .003 of the threshold about half the
time. Measured here where that happens: at the head positions whose FLOAT score (objectness x best
class) lies in a band around the threshold, per head, the INT - FLOAT objectness logit, best-class logit,
and their combination as an *objectness-equivalent* error e = o_q - logit(s_f / p_q): how far the INT
objectness logit is from the one that would give the position its FLOAT score back with the INT class
probability. A lost detection is e < 0 at a FLOAT score just above the threshold.

fit_shifts (round 5's rule, `rule="objectness"`): first the near-threshold bias correction (objectness and
class logits minus their mean INT - FLOAT difference; the class logit of head 15 is biased low by .07-.13
on most sets, objectness is not), then objectness += k * s(e) - m(e) of the corrected errors, m and s the
median and MAD-based standard deviation (e has heavy tails), on each position's FLOAT-best class.

fit_logit_shifts (the default, `rule="logits"`): the same bias correction, then k robust deviations of each
logit's own error on that logit, over every (position, class) pair in the band. Why: a [yolo] head reports
every class over the threshold, not only the best one, and the detections the objectness rule lost were
such second classes (a car at a position whose best class is truck, a horse where cow leads: objectness
+2.5 to +4.5, class logit near -.9). There objectness is saturated, a shift of it barely moves the score,
and e, which converts the class error into objectness units, spreads 1.7-5x wider than on best classes.
The log score log sig(o) + log sig(c) moves by about (1 - sig(o)) d_o + (1 - sig(c)) d_c; shifting o by
k s_o and c by k s_c moves it by k ((1 - sig(o)) s_o + (1 - sig(c)) s_c), at least k times the spread of
that pair's own log-score error whatever the correlation of the two errors (Minkowski), so every pair,
objectness-led or class-led, gets k deviations of its own error.

Every score at a position moves up by one monotone map per class (class ranking kept): it trades lost
detections for extra INT detections just over the threshold, which enter at the bottom of each class's
ranking. Estimated on the calibration images and random compositions of them
(engine/quant/valset.fitting_images), never on validation images, and folded into the int32 biases as
`--refine head` is (b_q += round(shift / acc_scale)): the integer path is unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import ArgumentError, EngineError
from engine.quant.layerquant import LayerQuant
from engine.quant.qmodel import QuantizedModel
from engine.quant.refine.headbias import head_convs
from engine.quant.refine.pipeline import MARGIN_K


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


@dataclass
class NearErrors:
    """Per selected position (a FLOAT score in the band): FLOAT score, FLOAT objectness and best-class logits,
    their INT - FLOAT differences, and the objectness-equivalent error e (see the module)."""
    score: np.ndarray
    fobj: np.ndarray
    fcls: np.ndarray
    dobj: np.ndarray
    dcls: np.ndarray

    @property
    def e(self) -> np.ndarray:
        return self.fobj + self.dobj - _logit(self.score / _sigmoid(self.fcls + self.dcls))

    def shifted(self, d_obj: float, d_cls: float) -> "NearErrors":
        """The errors once the INT objectness / class logits move by d_obj / d_cls."""
        return NearErrors(self.score, self.fobj, self.fcls, self.dobj + d_obj, self.dcls + d_cls)

    @classmethod
    def concat(cls, parts: list["NearErrors"]) -> "NearErrors":
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) if parts else np.zeros(0)
                     for k in ("score", "fobj", "fcls", "dobj", "dcls")))


def near_errors(f: np.ndarray, q: np.ndarray, anchors: int, classes: int,
                band: tuple[float, float] = (0.15, 0.40), every_class: bool = False) -> NearErrors:
    """The errors at the positions of one head conv's FLOAT / INT outputs (C, H, W) whose FLOAT score
    (objectness sigmoid x best class sigmoid, the class chosen by FLOAT) lies in `band`, in anchor, position
    order. every_class: every (anchor, class, position) whose FLOAT objectness x that class lies in `band`
    (each is a detection once over the threshold), in anchor, class, position order."""
    per = 5 + classes
    f = f.reshape(anchors, per, -1).astype(np.float64)
    q = q.reshape(anchors, per, -1).astype(np.float64)
    if every_class:
        s_all = _sigmoid(f[:, 4:5]) * _sigmoid(f[:, 5:])        # (A, K, P)
        a, c, p = np.nonzero((s_all >= band[0]) & (s_all <= band[1]))
        return NearErrors(s_all[a, c, p], f[a, 4, p], f[a, 5 + c, p], q[a, 4, p] - f[a, 4, p],
                          q[a, 5 + c, p] - f[a, 5 + c, p])
    k = f[:, 5:].argmax(axis=1)                                  # (A, P) FLOAT's best class
    fc = np.take_along_axis(f[:, 5:], k[:, None], axis=1)[:, 0]
    qc = np.take_along_axis(q[:, 5:], k[:, None], axis=1)[:, 0]
    s_f = _sigmoid(f[:, 4]) * _sigmoid(fc)
    sel = (s_f >= band[0]) & (s_f <= band[1])
    return NearErrors(s_f[sel], f[:, 4][sel], fc[sel], q[:, 4][sel] - f[:, 4][sel], qc[sel] - fc[sel])


def margin_stats(errors: NearErrors) -> dict:
    """[mean, std] of dobj, dcls and e, the count, and e's robust centre and spread "e_robust": [median,
    1.4826 x median absolute deviation]. e has heavy tails (where the INT class probability nears the FLOAT
    score, logit(s_f / p_q) runs off: std 2.6-5 logits against a MAD-based .2-.3), so the margin reads
    the robust pair."""
    out = {"n": int(errors.e.size)}
    for key in ("e", "dobj", "dcls"):
        v = getattr(errors, key)
        out[key] = [float(v.mean()), float(v.std())] if v.size else [0.0, 0.0]
    e = errors.e
    med = float(np.median(e)) if e.size else 0.0
    out["e_robust"] = [med, float(1.4826 * np.median(np.abs(e - med))) if e.size else 0.0]
    return out


def collect_near_errors(model, qmodel: QuantizedModel, images, resize: str = "letterbox",
                        band: tuple[float, float] = (0.15, 0.40), every_class: bool = False) -> dict[int, NearErrors]:
    """{head conv: NearErrors} over FLOAT and INT runs of `images` (every_class: as near_errors)."""
    from engine.quant.executor import Executor, FloatView, equalized_for
    heads = head_convs(model, qmodel)
    if not heads:
        raise EngineError("head margin: no int8 convolution feeds a [yolo] / [region] head")
    from engine.kernels.threads import parallel_map
    fm = equalized_for(model, qmodel)
    ex = Executor(model, qmodel, "int")
    items = list(images)

    def one(j: int) -> list[NearErrors]:
        p = model.preprocess(getattr(items[j], "image", items[j]), resize)
        fo, qo = fm.forward(p.x), FloatView(ex.run(p.x)[0])
        return [near_errors(np.asarray(fo[c]), np.asarray(qo[c]), a, k, band, every_class)
                for c, a, k in heads]

    per = parallel_map(len(items), one)       # whole images on the kernel threads, concatenated in order
    return {c: NearErrors.concat([errs[h] for errs in per]) for h, (c, _, _) in enumerate(heads)}


def shift_heads(model, qmodel: QuantizedModel, shifts: dict[int, tuple[float, float]], key: str,
                report: dict) -> QuantizedModel:
    """A copy of `qmodel` whose head convs' logits move by (objectness, class) shifts: int32 biases += the
    shift in accumulator steps, box channels untouched. `report` goes to meta[key]."""
    heads = {c: (a, k) for c, a, k in head_convs(model, qmodel)}
    twin = qmodel.copy()
    for c, (d_obj, d_cls) in shifts.items():
        if c not in heads:
            raise ArgumentError(f"head shift: layer {c} is not an int8 conv feeding a detection head")
        a, k = heads[c]
        lq = qmodel.layers[c]
        add = np.zeros((a, 5 + k))
        add[:, 4], add[:, 5:] = d_obj, d_cls
        b_q = np.clip(lq.b_q.astype(np.int64) + np.rint(add.ravel() / lq.acc_scale).astype(np.int64),
                      -(2 ** 31) + 1, 2 ** 31 - 1).astype(np.int32)
        twin.layers[c] = LayerQuant(lq.w_q, lq.w_scale, b_q, lq.in_scale, lq.scheme)
    twin.meta[key] = report
    return twin


def fit_shifts(errors: NearErrors, k: float) -> tuple[float, float, dict]:
    """(objectness shift, class shift, report) of one head: first the near-threshold bias correction (minus the
    mean INT - FLOAT objectness and best-class logit), then the margin on what is left: objectness += k * s(e)
    - m(e) of the corrected errors (robust centre and spread, margin_stats)."""
    before = margin_stats(errors)
    d_obj, d_cls = -before["dobj"][0], -before["dcls"][0]
    after = margin_stats(errors.shifted(d_obj, d_cls))
    m, sd = after["e_robust"]
    d_obj += k * sd - m
    return d_obj, d_cls, {"k": float(k), "objectness_shift": d_obj, "class_shift": d_cls, "before": before,
                          "after_bias": after}


def _robust_sd(v: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(v - np.median(v)))) if v.size else 0.0


def fit_logit_shifts(errors: NearErrors, k: float) -> tuple[float, float, dict]:
    """(objectness shift, class shift, report) of one head by the per-logit rule (see the module): the
    near-threshold bias correction (minus the mean INT - FLOAT objectness and class logit), then each logit
    += k x the MAD-based standard deviation of its own error. `errors`: every class in the band
    (near_errors(..., every_class=True)). Measured against fit_shifts: docs/quantization.md, round 11."""
    before = margin_stats(errors)
    d_obj, d_cls = -before["dobj"][0], -before["dcls"][0]
    s_obj, s_cls = _robust_sd(errors.dobj), _robust_sd(errors.dcls)     # a shift leaves the MAD as it is
    after = margin_stats(errors.shifted(d_obj, d_cls))
    d_obj, d_cls = d_obj + k * s_obj, d_cls + k * s_cls
    return d_obj, d_cls, {"k": float(k), "objectness_shift": d_obj, "class_shift": d_cls, "before": before,
                          "after_bias": after, "logits_robust_sd": [s_obj, s_cls]}


RULES = {"logits": (fit_logit_shifts, True), "objectness": (fit_shifts, False)}   # fit, every_class


def head_margin(model, qmodel: QuantizedModel, images, k: float = MARGIN_K, resize: str = "letterbox",
                band: tuple[float, float] = (0.15, 0.40), rule: str = "logits") -> QuantizedModel:
    """`qmodel` with each head's objectness and class biases moved by the margin, the errors measured on
    `images` (the calibration images and augmentations of them: valset.fitting_images). rule: "logits"
    (fit_logit_shifts over every class in the band, the default) or "objectness" (fit_shifts on each
    position's best class, rounds 5-9 of docs/quantization.md). k = 0: the near-threshold bias correction
    alone. meta["head_margin"]: per head conv, the shifts, the rule and the statistics."""
    if not np.isfinite(k) or k < 0:
        raise ArgumentError(f"head margin k={k}: expected a finite number >= 0")
    if rule not in RULES:
        raise ArgumentError(f"head margin rule={rule!r}: expected one of {', '.join(map(repr, RULES))}")
    fit, every_class = RULES[rule]
    errs = collect_near_errors(model, qmodel, images, resize, band, every_class)
    shifts, report = {}, {}
    for c, v in errs.items():
        if v.score.size < 20:
            each = "every class at a position counted, " if every_class else ""
            raise EngineError(f"head margin: only {v.score.size} positions of head conv {c} score in {band} on "
                              f"the fitting images ({each}20 needed): give more or other images")
        d_obj, d_cls, report[str(c)] = fit(v, k)
        report[str(c)].update(band=list(band), rule=rule)
        shifts[c] = (d_obj, d_cls)
    return shift_heads(model, qmodel, shifts, "head_margin", report)
