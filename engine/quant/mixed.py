"""Accuracy-aware mixed precision: the fewest layers kept FLOAT for a target agreement with FLOAT.

As NNCF's / Quark's / Intel Neural Compressor's accuracy-aware loops do: measure each int8 layer's
sensitivity on validation images (the agreement gained when only that layer is kept FLOAT), then
keep layers FLOAT greedily, most sensitive first, re-measuring the whole network after each one,
until the agreement (COCO mAP@[.5:.95] of the quantized detections against FLOAT's, and at most
`max_lost` lost FLOAT detections) reaches the target. Every step is a point of the trade-off curve.
A conv is kept FLOAT together with the maxpool / route / upsample layers after it, up to the next
weight layer (else its output would still be rounded to int8 by the layer reading it).

    result = engine.quant.mixed.search(model, qmodel, images, target=0.95)
    result.float_layers, result.curve, result.apply(qmodel)
    search(..., on_progress=lambda done, total, what: ..., cancel=threading.Event())   # engine.quant.progress
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from engine.calib.views import readers
from engine.errors import EngineError
from engine.quant.executor import Executor
from engine.quant.fitness import Agreement
from engine.quant.progress import CancelHook, Progress, Steps, counted, unit_name
from engine.quant.qmodel import QuantizedModel
from engine.quant.scoring import Scorer



@dataclass
class CurvePoint:
    layers_float: int                  # how many weight layers are kept FLOAT (with the layers up to the next one)
    added: int | None                  # the weight layer added at this step (None for the all-int8 start)
    map50_95: float
    map50: float
    lost: int
    extra: int
    added_layers: list[int] = field(default_factory=list)   # every layer this step keeps FLOAT: `added` and the
    #                                                           maxpool / route / upsample after it ([] at the start)
    float_count: int | None = None     # layers FLOAT in this step's run, all kinds (those qmodel kept FLOAT too)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MixedResult:
    float_layers: tuple[int, ...]      # the smallest set found that meets the target (or all tried)
    curve: list[CurvePoint]
    sensitivity: dict[int, float]      # layer -> mAP@[.5:.95] gained when only it is kept FLOAT
    target: float
    met: bool
    mode: str
    images: int = 0
    base: Agreement | None = field(default=None, repr=False)
    max_lost: int = 0                  # the target's other half: at most this many FLOAT detections lost

    def apply(self, qmodel: QuantizedModel) -> QuantizedModel:
        """A copy of `qmodel` whose default float_layers are this result's."""
        twin = qmodel.copy()
        twin.float_layers = tuple(sorted(self.float_layers))
        twin.meta["mixed_precision"] = self.to_dict()
        return twin

    def to_dict(self) -> dict:
        return {"float_layers": list(self.float_layers), "target": self.target, "max_lost": self.max_lost,
                "met": self.met, "mode": self.mode,
                "images": self.images, "curve": [p.to_dict() for p in self.curve],
                "sensitivity": {str(k): v for k, v in self.sensitivity.items()}}

    def table(self, model=None) -> str:
        """The curve as text, one row per step: weight layers kept FLOAT (the steps), all layers kept FLOAT
        (a conv comes with the maxpool / route / upsample after it, so this count is the length of
        `float_layers` at the last step), the agreement, and the layers the step added (named by kind
        when `model` is given: "conv 4, maxpool 5")."""
        def name(i: int) -> str:
            return str(i) if model is None else unit_name(model.layers[i])
        lines = [f"{'weight layers FLOAT':>19}  {'all layers FLOAT':>16}  {'mAP@[.5:.95]':>12}  {'mAP50':>6}  "
                 f"{'lost':>4}  {'extra':>5}  layers added"]
        for p in self.curve:
            added = ", ".join(map(name, p.added_layers or ([] if p.added is None else [p.added]))) or "-"
            count = "?" if p.float_count is None else p.float_count
            lines.append(f"{p.layers_float:>19}  {count:>16}  {p.map50_95:>12.3f}  {p.map50:>6.3f}  {p.lost:>4}  "
                         f"{p.extra:>5}  {added}")
        verdict = "met" if self.met else "NOT met (every candidate tried)"
        lines.append(f"target mAP@[.5:.95] >= {self.target} ({self.mode}, {counted(self.images, 'image')}): {verdict}; "
                     f"float_layers = {list(self.float_layers)} ({counted(len(self.float_layers), 'layer')})")
        return "\n".join(lines)


def _point(n: int, added: int | None, a: Agreement, added_layers=(), floats=()) -> CurvePoint:
    return CurvePoint(n, added, a.map50_95, a.map50, a.missed, a.extra, sorted(added_layers), len(floats))


def _unit(model, index: int) -> set[int]:
    """A weight layer and the layers after it up to the next weight layer (maxpool, route, upsample):
    kept FLOAT alone, the conv's output would still be rounded to int8 by the int8 layer reading it."""
    rd = readers(model)
    out, todo = {index}, [index]
    while todo:
        for r in rd.get(str(todo.pop()), []):
            layer = model.layers[r]
            if r not in out and not layer.int8_weights and not layer.float_only:
                out.add(r)
                todo.append(r)
    return out


def _greedy_runs(order: list[int], unit: dict[int, set[int]], fixed: set[int], max_layers: int | None) -> int:
    """How many greedy runs `search` can make at most: one per layer of `order`, until `max_layers` layers are
    kept FLOAT (a conv's unit brings its maxpool / route / upsample, so the limit may come before max_layers runs)."""
    if max_layers is None:
        return len(order)
    kept: set[int] = set()
    for runs, i in enumerate(order):
        if len(kept) >= max_layers:
            return runs
        kept |= unit[i] - fixed
    return len(order)


def search(model, qmodel: QuantizedModel, images: Sequence | Scorer, target: float = 0.95, mode: str = "int",
           max_lost: int = 0, max_layers: int | None = None,
           on_step: Callable[[CurvePoint], object] | None = None, backend: str = "numpy", *,
           on_progress: Progress | None = None, cancel: CancelHook = None) -> MixedResult:
    """Greedy accuracy-aware search (see the module doc). `images`: validation images (anything
    engine.quant.scoring.Scorer takes) or a ready Scorer. Layers already in qmodel.float_layers stay
    FLOAT. `backend` (for a Scorer made here): "auto" runs FLOAT and the all-int8 runs on ONNX Runtime
    (INT, profile onnxruntime) and the mixed sets on NumPy; "onnxruntime" refuses the mixed sets (the
    integer ONNX graph cannot hold FLOAT layers between int8 ones).

    Progress (`engine.quant.progress`): one step per run over the images: FLOAT (when the Scorer is made
    here), the all-int8 start, one per candidate layer ("sensitivity, layer 3 of 13: conv 4"), one per
    layer kept FLOAT ("keeping FLOAT 2 of at most 5: conv 9", 5 the runs the layer limit allows);
    `on_progress(done, total, what)` before each. `total` counts the runs that will run: until the all-int8
    start is scored, those that follow if it misses the target (the sensitivities and the first greedy run;
    dropped at once when it meets it), then each further greedy run as it becomes certain (the one before
    missed the target): the greedy part stops at the target, which no count can tell in advance, so the bar
    counts no run that may not happen rather than jump to done. `cancel` (an event or a callable) is asked
    before each step and, inside a step, between images (between batches on ONNX Runtime): a Cancel waits
    for one image, not a run.
    Nothing is changed on `model` or `qmodel` (the result is applied by `MixedResult.apply`).

    Raises:
        EngineError: a target outside (0, 1] or a mode without int8 layers.
        ArgumentError: `cancel` is neither None, an event nor callable (before any run).
        Cancelled: `cancel` answered True or `on_progress` raised it."""
    if not 0 < target <= 1:
        raise EngineError(f"target={target}: expected a mAP@[.5:.95] in (0, 1]")
    if mode not in ("int", "hybrid"):
        raise EngineError(f"mode={mode!r}: mixed precision searches 'int' or 'hybrid'")
    fixed = set(qmodel.float_layers)
    ex = Executor(model, qmodel, mode)
    candidates = [l.index for l in model.layers
                  if l.int8_weights and l.index not in fixed and ex.has_int_path(l.index)]
    unit = {i: _unit(model, i) for i in candidates}
    n, made = len(candidates), not isinstance(images, Scorer)
    first = 1 if n and (max_layers is None or max_layers > 0) else 0    # the first greedy run, if the start misses
    steps = Steps(made + 1 + n + first, on_progress, cancel)
    if made:
        steps.start(f"FLOAT run on {counted(len(images), 'image')}")
    scorer = Scorer(model, images, backend=backend, cancel=cancel) if made else images

    def ok(a: Agreement) -> bool:
        return a.map50_95 >= target and a.missed <= max_lost

    steps.start(f"all-int8 run on {counted(len(scorer.inputs), 'image')}")
    base = scorer.score(qmodel, mode, sorted(fixed), cancel=cancel)
    curve = [_point(0, None, base, (), fixed)]
    if on_step is not None:
        on_step(curve[-1])
    sens: dict[int, float] = {}
    if not ok(base):
        for k, i in enumerate(candidates, 1):
            steps.start(f"sensitivity, layer {k} of {n}: {unit_name(model.layers[i])}")
            sens[i] = scorer.score(qmodel, mode, sorted(fixed | unit[i]), cancel=cancel).map50_95 - base.map50_95
    order = sorted(sens, key=lambda i: (-sens[i], i))
    most = _greedy_runs(order, unit, fixed, max_layers)
    kept: list[int] = []
    current = base
    for i in order:
        if ok(current) or (max_layers is not None and len(kept) >= max_layers):
            break
        steps.revise(steps.done + 1)                 # the previous run missed the target: this one is certain
        steps.start(f"keeping FLOAT {len(curve)} of at most {most}: {unit_name(model.layers[i])}")
        added = unit[i] - fixed - set(kept)          # a route may already be FLOAT with another conv
        kept.extend(sorted(added))
        current = scorer.score(qmodel, mode, sorted(fixed | set(kept)), cancel=cancel)
        curve.append(_point(len(curve), i, current, added, fixed | set(kept)))
        if on_step is not None:
            on_step(curve[-1])
    steps.finish()
    return MixedResult(tuple(sorted(fixed | set(kept))), curve, sens, target, ok(current), mode,
                       len(scorer.inputs), base, max_lost)
