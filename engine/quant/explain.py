"""Which FLOAT detections a quantized run keeps, shifts or loses, and which layers to blame.

`match_detections(float_dets, dets)`: each FLOAT detection against the run's detections of the same
class (greedy, highest FLOAT score first, best IoU among the unused ones): "matched" (IoU >= 0.9),
"shifted" (0.5 <= IoU < 0.9) or "lost" (no same-class box with IoU >= 0.5); run detections left over
are "extra".

`Explainer`: for a shifted or lost detection, the layers ranked by how much running that one layer in
FLOAT (its output substituted, every other layer as the run had it) recovers the detection, and a
small set of layers whose FLOAT execution brings it back. Quality of a run for detection d is
q = max over same-class boxes b of score(b) * IoU(b, d), read from detections at a low threshold
(`MEASURE_THRESH`) so partial recoveries count; FLOAT's own quality is d.score.
recovery(L) = (q_L - q_run) / (d.score - q_run); the culprits are the layers with recovery > 0 (a layer
whose FLOAT run alone recovers nothing, a maxpool exact in int8 or one of many small error sources, is
ranked but not blamed). The fix set grows in culprit order (one layer at a
time) until the detection is back (same class, IoU >= 0.5 with the FLOAT box, at the session's
threshold; for a lost one, paired with it by `match_detections` as the diff pairs them: a box another
FLOAT detection claims first does not bring it back), is pruned of layers it does not need, and is
verified by a fresh full INT/HYBRID run with those layers FLOAT, exactly what
`python -m engine detect --mode int --float-layers ...` computes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from engine.darknet.detect import Detection, detect_outputs
from engine.quant.executor import INT8, Executor, Value

MATCH_IOU = 0.9          # at or above: "matched"
SAME_IOU = 0.5           # below: not the same object ("lost")
MEASURE_THRESH = 0.01    # detection threshold used to measure partial recoveries


def box_iou(a: Detection, b: Detection) -> float:
    ix = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    iy = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = ix * iy
    union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Match:
    """One FLOAT detection and what the run made of it."""
    index: int                       # position in the FLOAT detections (score order)
    det: Detection                   # the FLOAT detection
    status: str                      # "matched" | "shifted" | "lost"
    iou: float                       # IoU with the partner (when lost: the best same-class IoU, a box
                                     # another FLOAT detection took included)
    other: Detection | None          # the run's partner box (None when lost)

    @property
    def int_score(self) -> float | None:
        return None if self.other is None else self.other.score


@dataclass
class DetectionDiff:
    matches: list[Match]
    extra: list[Detection]           # run detections no FLOAT detection claimed

    def counts(self) -> dict[str, int]:
        out = {"matched": 0, "shifted": 0, "lost": 0}
        for m in self.matches:
            out[m.status] += 1
        return {**out, "extra": len(self.extra)}


def match_detections(float_dets: Sequence[Detection], dets: Sequence[Detection],
                     match_iou: float = MATCH_IOU, same_iou: float = SAME_IOU) -> DetectionDiff:
    """Pair each FLOAT detection with the run's same-class box of highest IoU (see the module doc)."""
    used = [False] * len(dets)
    matches = []
    order = sorted(range(len(float_dets)), key=lambda i: -float_dets[i].score)
    found: dict[int, Match] = {}
    for i in order:
        d = float_dets[i]
        best, best_j = 0.0, -1
        for j, o in enumerate(dets):
            if not used[j] and o.class_id == d.class_id:
                v = box_iou(d, o)
                if v > best:
                    best, best_j = v, j
        if best >= same_iou:
            used[best_j] = True
            found[i] = Match(i, d, "matched" if best >= match_iou else "shifted", best, dets[best_j])
        else:   # every same-class box, claimed ones too: "lost (IoU 0.00)" read as "nothing there"
            near = max((box_iou(d, o) for o in dets if o.class_id == d.class_id), default=0.0)
            found[i] = Match(i, d, "lost", near, None)
    matches = [found[i] for i in range(len(float_dets))]
    return DetectionDiff(matches, [o for j, o in enumerate(dets) if not used[j]])


def loss(d: Detection, dets: Sequence[Detection]) -> float:
    """Score and IoU loss of d in `dets` (see the module doc): 0 = as FLOAT, 2 = nothing there."""
    best = max(((o.score * box_iou(d, o), o) for o in dets if o.class_id == d.class_id), default=(0.0, None),
               key=lambda t: t[0])[1]
    if best is None or box_iou(d, best) == 0:
        return 2.0
    return max(0.0, d.score - best.score) / d.score + (1.0 - box_iou(d, best))


def is_back(d: Detection, dets: Sequence[Detection]) -> bool:
    """Found again: a same-class box with IoU >= 0.5 among detections at the session's threshold."""
    return any(o.class_id == d.class_id and box_iou(d, o) >= SAME_IOU for o in dets)


def brings_back(m: Match, float_dets: Sequence[Detection], dets: Sequence[Detection]) -> bool:
    """Whether a run's detections `dets` bring back the FLOAT detection of `m` (a Match of `float_dets`).

    A lost detection is back when the same pairing that called it lost (`match_detections`) no longer
    does. `is_back` alone is not enough there: where two FLOAT boxes overlap and the run keeps one box
    between them (an NMS tie flipped by int8 error), that box is at IoU >= 0.5 with both, so the one the
    pairing left out passes `is_back` in the very run that loses it, and any layer would pass as its fix.
    A shifted detection (or one not among `float_dets`) is back by `is_back`."""
    if m.status == "lost":
        k = m.index if m.index < len(float_dets) and float_dets[m.index] == m.det else next(
            (i for i, f in enumerate(float_dets) if f == m.det), None)
        if k is not None:
            return match_detections(float_dets, dets).matches[k].status != "lost"
    return is_back(m.det, dets)


@dataclass
class Explanation:
    """Why one FLOAT detection is shifted or lost, and which FLOAT layers bring it back.

    `ranking`: every int8 layer with its recovery, best first (ties: earlier layer): the order the fix set
    grows in. `culprits`: the layers of the ranking that recover some of the loss (recovery > 0): a layer
    whose FLOAT run alone recovers nothing (a maxpool, exact in int8; or an error spread over many layers)
    is not to blame on its own, and is left out (`no_effect` lists them). Given only `culprits` (a full
    ranking, as before `ranking` existed), the ranking is taken from it."""
    match: Match
    culprits: list[tuple[int, float]] = field(default_factory=list)   # (layer, recovery > 0), best first
    fix: list[int] | None = None
    ranking: list[tuple[int, float]] = field(default_factory=list)    # (layer, recovery) of every int8 layer

    def __post_init__(self) -> None:
        self.ranking = list(self.ranking or self.culprits)
        self.culprits = [(i, r) for i, r in self.ranking if r > 0]

    @property
    def no_effect(self) -> list[int]:
        """The ranked layers whose FLOAT run alone recovers nothing (recovery <= 0), in layer order."""
        return sorted(i for i, r in self.ranking if r <= 0)

    def to_dict(self, top: int | None = None) -> dict:
        """The `explain --json` entry: `culprits` are those with recovery > 0, at most `top`."""
        d, m = self.match.det, self.match
        culprits = self.culprits if top is None else self.culprits[:top]
        return {**detection_dict(d), "status": m.status, "iou": float(m.iou),
                "int_score": None if m.int_score is None else float(m.int_score),
                "culprits": [{"layer": int(i), "recovery": float(r)} for i, r in culprits],
                "fix": None if self.fix is None else [int(i) for i in self.fix]}


class Explainer:
    """Substitution runs over one image: the run (mode, quantized model, base FLOAT layers) and the same
    run with extra layers in FLOAT. Runs are memoised per set of extra layers and restart from the first
    layer that differs (the prefix is the base run's, bit for bit).

    `run_values` (every layer's Value of this very run: the executor's outputs for this model, quantized
    model, mode and FLOAT layers on `pre.x`) and `float_outputs` (`model.forward(pre.x)`) are outputs the
    caller already holds, a Session after a run (`Session.kept_run_outputs`, `kept_float_outputs`): given,
    they are used as they are (the results are the same bits as computing them); None: computed here.

    Raises:
        ValueError: a mode other than int / hybrid, or kept outputs not one per layer."""

    def __init__(self, model, qmodel, mode: str, pre, *, thresh: float = 0.25, nms: float = 0.45,
                 float_layers: Sequence[int] = (), run_values: Sequence[Value] | None = None,
                 float_outputs: Sequence[np.ndarray] | None = None) -> None:
        if mode not in ("int", "hybrid"):
            raise ValueError(f"mode={mode!r}: explain compares an 'int' or 'hybrid' run with FLOAT")
        n = len(model.layers)
        for name, kept in (("run_values", run_values), ("float_outputs", float_outputs)):
            if kept is not None and len(kept) != n:
                raise ValueError(f"{name}: {len(kept)} outputs given, the model has {n} layers (one per layer)")
        self.model, self.qmodel, self.mode, self.pre = model, qmodel, mode, pre
        self.thresh, self.nms = thresh, nms
        self.base = frozenset(int(i) for i in float_layers)
        self.executor = Executor(model, qmodel, mode, self.base)
        self._x = Value(f=model.check_input(pre.x))
        self.values = list(run_values) if run_values is not None else self.executor.run(pre.x)[0]
        floats = float_outputs if float_outputs is not None else model.forward(pre.x)
        self.float_dets = detect_outputs(model, floats, pre, thresh, nms)
        self._runs: dict[frozenset, tuple[list[Detection], list[Detection]]] = {
            frozenset(): self._detections(self.values)}
        self.dets = self._runs[frozenset()][0]
        self.candidates = [i for i in range(len(model.layers)) if self.executor.precision(i) == INT8]

    def _detections(self, values) -> tuple[list[Detection], list[Detection]]:
        outs = [v.float() for v in values]
        return (detect_outputs(self.model, outs, self.pre, self.thresh, self.nms),
                detect_outputs(self.model, outs, self.pre, MEASURE_THRESH, self.nms))

    def run_with(self, extra) -> tuple[list[Detection], list[Detection]]:
        """(detections at the threshold, detections at MEASURE_THRESH) with `extra` layers also FLOAT."""
        key = frozenset(int(i) for i in extra) - self.base
        if key not in self._runs:
            ex = Executor(self.model, self.qmodel, self.mode, self.base | key)
            start = min(key)
            values = list(self.values[:start])
            for i in range(start, len(self.model.layers)):
                values.append(ex.run_layer(i, ex.inputs_of(i, self._x, values))[0])
            self._runs[key] = self._detections(values)
        return self._runs[key]

    def diff(self) -> DetectionDiff:
        return match_detections(self.float_dets, self.dets)

    def culprits(self, m: Match, step: Callable[[], object] | None = None) -> list[tuple[int, float]]:
        """Every candidate layer with its recovery for this detection, best first (ties: earlier layer):
        the `Explanation.ranking` (its `culprits` keep the layers with recovery > 0).
        `step()` is called after each layer (progress; it may raise to cancel)."""
        d = m.det
        d0 = loss(d, self._runs[frozenset()][1])
        out = []
        for i in self.candidates:
            out.append((i, (d0 - loss(d, self.run_with([i])[1])) / d0 if d0 > 0 else 0.0))
            if step is not None:
                step()
        return sorted(out, key=lambda t: (-t[1], t[0]))

    def fix(self, m: Match, culprits: Sequence[tuple[int, float]], max_size: int | None = None) -> list[int] | None:
        """A small set of layers whose FLOAT execution brings the detection back, or None."""
        chosen: list[int] = []
        for layer, _ in culprits[:max_size or len(culprits)]:
            chosen.append(layer)
            if brings_back(m, self.float_dets, self.run_with(chosen)[0]):
                break
        else:
            return None
        for layer in list(reversed(chosen[:-1])):        # drop layers the set does not need
            rest = [i for i in chosen if i != layer]
            if brings_back(m, self.float_dets, self.run_with(rest)[0]):
                chosen = rest
        return sorted(chosen) if self.verify(m.det, chosen, m) else None

    def verify(self, d: Detection, layers: Sequence[int], match: Match | None = None) -> bool:
        """A fresh full run with `layers` (plus the base) FLOAT, as `detect --float-layers` computes it:
        `d` found again (`is_back`), or with `match` given, brought back as `brings_back` says."""
        dets = self.fresh_detections(layers)
        return is_back(d, dets) if match is None else brings_back(match, self.float_dets, dets)

    def fresh_detections(self, layers: Sequence[int]) -> list[Detection]:
        """Detections at the threshold of a fresh full run with `layers` (plus the base) FLOAT, no reuse."""
        ex = Executor(self.model, self.qmodel, self.mode, self.base | set(layers))
        return detect_outputs(self.model, ex.forward(self.pre.x), self.pre, self.thresh, self.nms)

    def explain(self, m: Match, step: Callable[[], object] | None = None) -> Explanation:
        if m.status == "matched":
            return Explanation(m)
        c = self.culprits(m, step)
        return Explanation(m, fix=self.fix(m, c), ranking=c)

    def explain_all(self, on_progress: Callable[[int, int], object] | None = None
                    ) -> tuple[list[Explanation], list[Detection]]:
        """An Explanation per FLOAT detection (culprits for shifted and lost ones) and the extra detections.
        on_progress(done, total) counts substitution runs (it may raise to cancel)."""
        diff = self.diff()
        total = sum(m.status != "matched" for m in diff.matches) * len(self.candidates)
        done = [0]

        def step() -> None:
            done[0] += 1
            if on_progress is not None:
                on_progress(done[0], total)
        return [self.explain(m, step) for m in diff.matches], diff.extra


def percent(recovery: float) -> str:
    """A recovery as text: "12%"; "<1%" for a positive one that rounds to 0 ("0%" would read as nothing)."""
    return f"{100 * recovery:.0f}%" if recovery >= 0.005 else "<1%"


def detection_dict(d: Detection) -> dict:
    return {"class_id": int(d.class_id), "name": d.name, "score": float(d.score), "x1": float(d.x1),
            "y1": float(d.y1), "x2": float(d.x2), "y2": float(d.y2)}


def explain_report(image: str, explanations: Sequence[Explanation], extra: Sequence[Detection],
                   top: int = 5) -> dict:
    """The `python -m engine explain --json` document."""
    return {"image": image, "detections": [e.to_dict(top) for e in explanations],
            "extra": [detection_dict(d) for d in extra]}


def layer_recoveries(explanations: Sequence[Explanation]) -> dict[int, float]:
    """Per layer, the best recovery over the explained detections (for graph colours; every ranked layer)."""
    out: dict[int, float] = {}
    for e in explanations:
        for layer, r in e.ranking:
            out[layer] = max(out.get(layer, float("-inf")), r)
    return out
