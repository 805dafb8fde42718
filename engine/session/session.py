"""The Session: one model + quantized model + image + execution state, stepped layer by layer.

It is the single API the widgets call. Every executed layer's output is kept (float, and int8 +
scale where the layer ran in int8), so any earlier layer can be inspected. CROSS runs the
current layer in the other precision on the same inputs; `continue_from` runs the rest of the
network from either result. Edits are made by the session's Editor (engine/session/editing.py);
this facade decides which kept outputs they make stale. Sensitivity sweeps live in
engine/quant/sensitivity.py, the run-record file format in engine/session/records.py.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine.darknet.detect import Detection, detect_outputs
from engine.darknet.image import ImageLike, Preprocessed
from engine.errors import EditsWouldBeLost, EngineError
from engine.quant.executor import FLOAT, INT8, Executor, FloatView, LayerRecord, Value
from engine.quant.fitness import ErrorStats, error_stats
from engine.quant.modes import Mode
from engine.quant.qmodel import QuantizedModel
from engine.session.editing import Editor
from engine.session.layer_data import calibrator_thresholds, layer_info, layer_weights
from engine.session.edits import Edit, Journal
from engine.session.results import ContinueResult, CrossResult, RerunResult, StepResult
from engine.session.stats import TensorSummary, histogram, summarize


class Session:
    """Step, inspect, cross-run and customize a model on one image.

        s = Session(model, quantized=qm, mode="int", image="dog.jpg")
        s.run_to(12); s.output(12); s.cross(); s.step(); s.run(); s.detections()
    """

    def __init__(self, model, quantized: QuantizedModel | str | Path | None = None, mode: str | Mode = "float",
                 image: ImageLike | Preprocessed | None = None, *, resize: str = "letterbox",
                 float_layers=None, thresh: float = 0.25, nms: float = 0.45) -> None:
        from engine.model import Model, load
        if not isinstance(model, Model):
            model = load(model)
        if quantized is not None and not isinstance(quantized, QuantizedModel):
            quantized = QuantizedModel.load(quantized)
        # the session edits private copies: edits never reach the caller's model
        self.editor = Editor(model.shallow_copy(), quantized.copy() if quantized is not None else None, model)
        self.resize, self.thresh, self.nms = resize, thresh, nms
        self._callbacks: dict[str, list[Callable]] = {"step": [], "edit": [], "reset": [], "refresh": []}
        self.stale_from: int | None = None        # first kept output an edit made stale (refresh() re-runs it)
        self.mode = Mode(mode).value
        self.executor = Executor(self.model, self.qmodel, self.mode, float_layers)
        self.pre: Preprocessed | None = None
        self.values: list[Value] = []
        self.records: list[LayerRecord] = []
        self.timings: list[float] = []
        self._float_ref: list[np.ndarray] | None = None
        self._calib_cache: tuple = (None, None)     # ((image-set key, model version), CalibrationStats)
        self.reset(image)

    # ------------------------------------------------------------------ callbacks
    def on_step(self, cb: Callable[[StepResult], Any]) -> Callable:
        self._callbacks["step"].append(cb)
        return cb

    def on_edit(self, cb: Callable) -> Callable:
        self._callbacks["edit"].append(cb)
        return cb

    def on_reset(self, cb: Callable[["Session"], Any]) -> Callable:
        self._callbacks["reset"].append(cb)
        return cb

    def on_refresh(self, cb: Callable[[int], Any]) -> Callable:
        """cb(first) after kept outputs from layer `first` to the position were re-executed (an edit had
        made them stale: refresh(), rerun(), or anything that refreshes first)."""
        self._callbacks["refresh"].append(cb)
        return cb

    def remove_callback(self, cb: Callable) -> None:
        for cbs in self._callbacks.values():
            if cb in cbs:
                cbs.remove(cb)

    def _fire(self, event: str, payload: Any) -> None:
        for cb in list(self._callbacks[event]):
            cb(payload)

    # ------------------------------------------------------------------ state
    @property
    def model(self):
        """The session's (edited) float model: a copy of `original`."""
        return self.editor.model

    @property
    def qmodel(self) -> QuantizedModel | None:
        return self.editor.qmodel

    @property
    def original(self):
        """The model the session was opened with; edits never reach it."""
        return self.editor.original

    @property
    def journal(self) -> Journal:
        return self.editor.journal

    @property
    def model_version(self) -> int:
        """Bumped by every float edit, undo or redo, and by set_model (calibration caches key on it)."""
        return self.editor.version

    @property
    def position(self) -> int:
        """Index of the last executed layer (-1 before the first step)."""
        return len(self.values) - 1

    @property
    def done(self) -> bool:
        return len(self.values) == len(self.model.layers)

    @property
    def num_layers(self) -> int:
        return len(self.model.layers)

    @property
    def float_layers(self) -> set[int]:
        return set(self.executor.float_layers)

    def set_mode(self, mode: str | Mode, float_layers=None) -> None:
        """Change FLOAT/HYBRID/INT (and the mixed-precision override); restarts execution."""
        mode = Mode(mode).value
        self.executor = Executor(self.model, self.qmodel, mode,
                                 self.executor.float_layers if float_layers is None else float_layers)
        self.mode = mode
        self.reset()

    def set_quantized(self, quantized: QuantizedModel | str | Path | None, *, drop_edits: bool = False) -> int:
        """Switch to another quantized model (or None); restarts execution.

        Float edits carry over: their layers' int8 weights are re-derived in the new model's scheme
        and undo / redo keep working. int8 and scale edits belong to the current quantized model:
        EditsWouldBeLost unless `drop_edits` (save_quantized() first to keep them). Returns the
        number of dropped edits.
        """
        if quantized is not None and not isinstance(quantized, QuantizedModel):
            quantized = QuantizedModel.load(quantized)
        if quantized is not None:
            quantized.check_matches(self.model)
        dropped = self.editor.check_quantized_edits_may_go(drop_edits)
        self.editor.switch_quantized(quantized.copy() if quantized is not None else None)
        mode = self.mode if self.qmodel is not None else Mode.FLOAT.value
        self.executor = Executor(self.model, self.qmodel, mode, self.executor.float_layers)
        self.mode = mode
        self.reset()
        return dropped

    def set_model(self, model, quantized: QuantizedModel | str | Path | None = None, *,
                  drop_edits: bool = False) -> int:
        """Open another model (a Model, a path engine.load takes, or a zero-argument loader returning
        either, called only once the switch is allowed) in this session, with an optional quantized
        model made for it; restarts execution on the same image. Every edit belongs to the old model:
        EditsWouldBeLost unless `drop_edits`. Returns the number of dropped edits."""
        from engine.model import Model, load
        applied, undone = len(self.journal.done), len(self.journal.undone)
        if applied + undone and not drop_edits:
            raise EditsWouldBeLost(f"{applied + undone} edit(s) of model '{self.model.graph.name}' would be lost; "
                                   "save_model()/save_quantized() keep them, or switch with drop_edits=True",
                                   applied, undone)
        if callable(model) and not isinstance(model, Model):
            model = model()          # e.g. a cfg + its weights: nothing is read for a refused switch
        model = model if isinstance(model, Model) else load(model)
        if quantized is not None and not isinstance(quantized, QuantizedModel):
            quantized = QuantizedModel.load(quantized)
        mode = self.mode if quantized is not None else Mode.FLOAT.value
        twin, qtwin = model.shallow_copy(), quantized.copy() if quantized is not None else None
        executor = Executor(twin, qtwin, mode)          # validates the pair before anything changes
        if self.image is None and model.input_shape != self.model.input_shape:
            raise EngineError(f"the session's input is a {self.model.input_shape} tensor without its image; "
                              f"'{model.graph.name}' needs {model.input_shape}: reset(image=...) with a new image")
        self.editor = Editor(twin, qtwin, model, self.editor.version + 1)
        self.executor, self.mode = executor, mode
        if self.image is not None:      # the same image, preprocessed for the new model's input size
            self.pre = self.model.preprocess(self.image, self.resize)
        self._float_ref = None
        self.reset()
        return applied + undone

    def reset(self, image: ImageLike | Preprocessed | None = None) -> None:
        """Back to before layer 0; with `image`, switch to that image (path, array, PIL, tensor)."""
        if image is not None or self.pre is None:
            self.pre = self._prepare(image)
            self.image = self._source_image
            self.image_name = self._source_name
            self._float_ref = None
        self.values, self.records, self.timings = [], [], []
        self.stale_from = None
        self._fire("reset", self)

    def _prepare(self, image) -> Preprocessed:
        """The network input for `image`; also sets `_source_image`, the decoded original (a PIL image)
        or None when only a tensor is known, and `_source_name` (the file name, if any)."""
        from engine.darknet.image import open_image
        if image is None:
            from engine.imaging.samples import sample
            image = sample("dog")
        self._source_image = None
        name = image if isinstance(image, (str, Path)) else getattr(image, "filename", None)
        self._source_name = Path(name).name if name else None
        if isinstance(image, Preprocessed):
            return image
        if isinstance(image, np.ndarray) and image.shape == self.model.input_shape and image.dtype == np.float32:
            _, h, w = image.shape
            return Preprocessed(self.model.check_input(image), w, h, "stretch")
        if not isinstance(image, np.ndarray):
            image = open_image(image)
            self._source_image = image
        return self.model.preprocess(image, self.resize)

    @property
    def x(self) -> np.ndarray:
        return self.pre.x

    # ------------------------------------------------------------------ execution
    def _check_index(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < self.num_layers:
            raise EngineError(f"layer {index} does not exist; this model has layers 0..{self.num_layers - 1}")
        return index

    def _inputs(self, index: int, values: list[Value] | None = None) -> list[Value]:
        return self.executor.inputs_of(index, Value(f=self.pre.x), self.values if values is None else values)

    def step(self) -> StepResult:
        """Run the next layer. Raises EngineError at the end of the network."""
        if self.done:
            raise EngineError(f"all {self.num_layers} layers have run; reset() to start again")
        self.refresh()
        i = len(self.values)
        t0 = time.perf_counter()
        value, rec = self.executor.run_layer(i, self._inputs(i))
        dt = time.perf_counter() - t0
        self.values.append(value)
        self.records.append(rec)
        self.timings.append(dt)
        layer = self.model.layers[i]
        result = StepResult(i, str(i), layer.kind, rec.precision, value, rec, dt)
        self._fire("step", result)
        return result

    def run_to(self, index: int) -> StepResult:
        """Execute up to and including layer `index` (restarting if it already ran past it)."""
        index = self._check_index(index)
        if index < self.position:
            self.values, self.records, self.timings = self.values[:index], self.records[:index], self.timings[:index]
            if self.stale_from is not None and self.stale_from > self.position:
                self.stale_from = None
        result = None
        while self.position < index:
            result = self.step()
        if result is None:  # already exactly there
            self.refresh()
            rec = self.records[index]
            result = StepResult(index, str(index), self.model.layers[index].kind, rec.precision, self.values[index],
                                rec, self.timings[index])
        return result

    def run(self) -> list[Detection]:
        """Run to the end and return the detections."""
        self.refresh()
        while not self.done:
            self.step()
        return self.detections()

    def detections(self) -> list[Detection]:
        if not self.done:
            raise EngineError(f"detections need a full run: at layer {self.position} of {self.num_layers - 1}; "
                              "call run()")
        self.refresh()
        return detect_outputs(self.model, FloatView(self.values), self.pre, self.thresh, self.nms)

    def float_detections(self) -> list[Detection]:
        return detect_outputs(self.model, self.float_reference(), self.pre, self.thresh, self.nms)

    def float_reference(self) -> list[np.ndarray]:
        """FLOAT outputs of the (edited) model on the same input, for fitness metrics."""
        if self._float_ref is None:
            self._float_ref = self.model.forward(self.pre.x)
        return self._float_ref

    # ------------------------------------------------------------------ inspection
    def _executed(self, index: int) -> int:
        index = self._check_index(index)
        if index > self.position:
            raise EngineError(f"layer {index} has not run yet (position {self.position}); run_to({index}) first")
        return index

    def output(self, index: int) -> np.ndarray:
        """Float view of an executed layer's output (dequantized if it ran in int8). Read-only."""
        return self.values[self._executed(index)].float()

    def output_q(self, index: int):
        """The int8 QTensor of an executed layer, or None if it ran in float."""
        return self.values[self._executed(index)].q

    def inputs(self, index: int) -> list[np.ndarray]:
        """Float views of the inputs layer `index` reads (its producers' outputs, or the image tensor)."""
        index = self._check_index(index)
        if any(0 <= i and i > self.position for i in self.model.layers[index].inputs):
            raise EngineError(f"the inputs of layer {index} have not all run yet; run_to({index - 1}) first")
        return [v.float() for v in self._inputs(index)]

    def precision(self, index: int) -> str:
        return self.executor.precision(self._check_index(index))

    def layer_info(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        info = layer_info(self.model, self.qmodel, self.executor, index)
        if index <= self.position:
            info["seconds"] = self.timings[index]
            info["record"] = dict(self.records[index].stats)
        return info

    def weights(self, index: int, kind: str = "float") -> dict[str, np.ndarray]:
        """Copies of a layer's parameters: kind "float" (raw cfg params), "fused" (batch norm folded
        in: the weights and biases the int8 ones approximate) or "int8" (w_q, b_q, w_scale)."""
        return layer_weights(self.model, self.qmodel, self._check_index(index), kind)

    def summary(self, index: int) -> TensorSummary:
        index = self._executed(index)
        v, rec = self.values[index], self.records[index]
        sat = rec.stats.get("saturated") if rec.precision == INT8 else None
        return summarize(v.float(), v.q.q if v.q is not None else None, sat)

    def histogram(self, index: int, which: str = "output", bins: int = 64, log2: bool = False):
        """(counts, edges) of a layer's output, first input, or float weights."""
        index = self._check_index(index)
        if which == "output":
            x = self.output(index)
        elif which == "input":
            x = self.inputs(index)[0]
        elif which == "weights":
            w = self.model.params[index].get("weights")
            if w is None:
                raise EngineError(f"layer {index} [{self.model.layers[index].kind}] has no weights")
            x = w
        else:
            raise ValueError(f"which={which!r}: expected output, input or weights")
        return histogram(x, bins=bins, log2=log2)

    def fitness(self, index: int, local: bool = True) -> dict[str, ErrorStats | None]:
        """This layer against the FLOAT run: propagated (the session's output) and local (this layer
        alone in int8 on the FLOAT run's inputs; skipped with local=False, which is much cheaper).
        Both None in FLOAT mode."""
        index = self._executed(index)
        if self.mode == Mode.FLOAT:
            return {"propagated": None, "local": None}
        ref = self.float_reference()
        v, rec = self.values[index], self.records[index]
        sat = rec.stats.get("saturated", 0) + rec.stats.get("input_saturated", 0)
        prop = error_stats(ref[index], v.float(), v.q.q if v.q is not None else None, sat)
        local_stats = None
        if local and self.executor.precision(index) == INT8:
            floats = [Value(f=y) for y in ref]
            lv, lrec = self.executor.run_layer(index, self._inputs(index, floats))
            lsat = lrec.stats.get("saturated", 0) + lrec.stats.get("input_saturated", 0)
            local_stats = error_stats(ref[index], lv.float(), lv.q.q if lv.q is not None else None, lsat)
        return {"propagated": prop, "local": local_stats}

    def thresholds(self, index: int | str) -> dict[str, float]:
        """The calibration threshold every registered method would pick for this tensor."""
        return calibrator_thresholds(self.qmodel, index)

    # ------------------------------------------------------------------ calibration, comparison
    def calibration_stats(self, images, *, key: str | None = None,
                          on_image: Callable[[int, int], Any] | None = None):
        """|x| histograms of the current (edited) FLOAT model over `images` (folder, file or list).

        Cached per (`key`, model version) when a key names the image set: a float edit, undo or
        redo bumps the version, so statistics never describe weights the model no longer has.
        `on_image(done, total)` follows the pass.
        """
        from engine.calib.collect import collect
        cache_key = (key, self.model_version)
        if key is not None and self._calib_cache[0] == cache_key:
            return self._calib_cache[1]
        stats = collect(self.model, images, resize=self.resize, progress=False, on_image=on_image)
        if key is not None:
            self._calib_cache = (cache_key, stats)
        return stats

    def compare_methods(self, images, methods, *, per_channel: bool = True, key: str | None = None,
                        on_progress: Callable[[str, int, int], Any] | None = None):
        """Calibrate once on `images`, quantize with each method, rank them by agreement with FLOAT
        on the same images (engine.quant.compare). on_progress(phase, done, total), phase
        "calibrate" (per image) then "compare" (per method). Returns a CompareTable."""
        from engine.quant.compare import compare
        from engine.calib.collect import image_list
        items = image_list(images)
        on_image = (lambda done, total: on_progress("calibrate", done, total)) if on_progress else None
        on_method = (lambda _result, done, total: on_progress("compare", done, total)) if on_progress else None
        stats = self.calibration_stats(items, key=key, on_image=on_image)
        return compare(self.model, stats, items, list(methods), per_channel=per_channel, resize=self.resize,
                       progress=False, on_method=on_method)

    # ------------------------------------------------------------------ sweeps, records
    def sensitivity(self, progress: bool = True, cancel=None):
        """Rank layers by how much quantizing them alone hurts (engine/sensitivity.py)."""
        from engine.quant.sensitivity import sensitivity
        return sensitivity(self, progress=progress, cancel=cancel)

    def save_record(self, path: str | Path) -> Path:
        from engine.session.records import save_record
        self.refresh()   # the record's statistics must be those of the model it stores
        return save_record(self, path)

    @classmethod
    def open_record(cls, path: str | Path) -> "Session":
        """A Session restored from a run record, at the saved position. Raises WeightsError for bad files."""
        from engine.errors import WeightsError
        from engine.session.records import read_record
        rec = read_record(path)
        meta = rec.meta
        session = cls(rec.model, rec.qmodel, meta["mode"], rec.pre, resize=meta["resize"],
                      float_layers=meta["float_layers"], thresh=meta["thresh"], nms=meta["nms"])
        session.history = meta["edits"]
        session.image_name = meta.get("image_name")
        if rec.image_png is not None:
            from engine.darknet.image import open_image
            session.image = open_image(rec.image_png)
        session.saved = meta
        if meta["position"] >= 0:
            try:
                session.run_to(meta["position"])
            except EngineError as err:
                raise WeightsError(f"{path}: the record does not replay: {err}") from err
        return session

    # ------------------------------------------------------------------ CROSS
    def other_precision(self, index: int) -> str:
        return INT8 if self.executor.precision(index) == FLOAT else FLOAT

    def cross(self, index: int | None = None) -> CrossResult:
        """Run layer `index` (default: the current one) in the other precision on the same inputs."""
        index = self.position if index is None else self._executed(index)
        if index < 0:
            raise EngineError("nothing has run yet: step() first, then CROSS the current layer")
        other = self.other_precision(index)
        if other == INT8:
            if self.qmodel is None:
                raise EngineError("CROSS to int8 needs a quantized model (Session(quantized=...))")
            if not self.executor.has_int_path(index, Mode.HYBRID if self.mode == Mode.HYBRID else Mode.INT8):
                kind = self.model.layers[index].kind
                raise EngineError(f"layer {index} [{kind}] has no int8 path in {self.mode} mode (it always runs float)")
        v_other, rec_other = self.executor.run_layer(index, self._inputs(index), other)
        y, y_other = self.values[index].float(), v_other.float()
        return CrossResult(index, self.records[index].precision, other, y, y_other, v_other, rec_other,
                           error_stats(y, y_other, v_other.q.q if v_other.q is not None else None,
                                       rec_other.stats.get("saturated", 0)))

    def continue_from(self, source: str = "other", index: int | None = None) -> ContinueResult:
        """Run the rest of the network from layer `index`'s output ("this") or its CROSS result
        ("other"), without changing the session's own state; returns the detections."""
        index = self.position if index is None else self._executed(index)
        if source not in ("this", "other"):
            raise ValueError(f"source={source!r}: expected 'this' or 'other'")
        self.refresh()
        first = self.cross(index).value_other if source == "other" else self.values[index]
        values = list(self.values[:index]) + [first]
        for i in range(index + 1, self.num_layers):
            v, _ = self.executor.run_layer(i, self._inputs(i, values))
            values.append(v)
        dets = detect_outputs(self.model, FloatView(values), self.pre, self.thresh, self.nms)
        return ContinueResult(source, index, dets, values)

    # ------------------------------------------------------------------ edits (made by self.editor)
    def _edited(self, edit: Edit) -> Edit:
        """After an edit, undo or redo: kept outputs from the first affected layer on are stale (a
        scale edit affects the tensor's producer, which requantizes into it)."""
        if edit.target == "float":
            self._float_ref = None
        j = 0 if edit.layer == "input" else int(edit.layer)
        if j <= self.position:
            self.stale_from = j if self.stale_from is None else min(self.stale_from, j)
        self._fire("edit", edit)
        return edit

    def edit_weights(self, index: int, region, values, *, param: str = "weights", target: str | None = None) -> Edit:
        """Set weights[region] = values: one weight (tuple index), a slice, or a whole filter (int).

        target: "float" (FLOAT mode default) or "int8" (HYBRID/INT default). Raises EditError.
        """
        return self._edited(self.editor.edit_weights(self._check_index(index), region, values, param, target,
                                                     self.mode))

    def scale_filter(self, index: int, filt: int, factor: float, *, target: str | None = None) -> Edit:
        return self._edited(self.editor.scale_filter(self._check_index(index), filt, factor, target, self.mode))

    def zero_filter(self, index: int, filt: int, *, target: str | None = None) -> Edit:
        return self._edited(self.editor.zero_filter(self._check_index(index), filt, target, self.mode))

    def prune(self, index: int, fraction: float, *, target: str | None = None) -> Edit:
        """Zero the `fraction` of the layer's weights with the smallest magnitude."""
        return self._edited(self.editor.prune(self._check_index(index), fraction, target, self.mode))

    def set_scale(self, node_id: str | int, scale: float) -> Edit:
        """Change an activation scale (real = q * scale) and re-derive the biases of its int8 readers."""
        return self._edited(self.editor.set_scale(node_id, scale))

    def set_threshold(self, node_id: str | int, threshold: float) -> Edit:
        from engine.session.edits import check_number
        return self.set_scale(node_id, check_number(threshold, f"tensor {node_id}: threshold", positive=True) / 127.0)

    def undo(self) -> Edit:
        return self._edited(self.editor.undo())

    def redo(self) -> Edit:
        return self._edited(self.editor.redo())

    def edits(self) -> list[str]:
        return self.editor.summaries()

    def quantized_edits(self) -> list[Edit]:
        """Applied int8 and scale edits: they belong to the current quantized model."""
        return self.editor.quantized_edits()

    def quantized_edit_counts(self) -> tuple[int, int]:
        """(applied, undone but redoable) int8 / scale edits: what a change of quantized model drops."""
        return self.editor.quantized_edit_counts()

    def refresh(self) -> int | None:
        """Re-execute the executed layers an edit (or undo / redo) made stale, from the first one
        to the current position, so every kept output reflects the current parameters. Returns the
        first re-executed layer (None if nothing was stale). step(), run(), detections(),
        continue_from() and save_record() call it first, so results never mix old and new weights."""
        first = self.stale_from
        if first is None:
            return None
        for i in range(first, self.position + 1):
            self.values[i], self.records[i] = self.executor.run_layer(i, self._inputs(i))
        self.stale_from = None
        self._fire("refresh", first)
        return first

    def rerun(self, continue_to_end: bool = False) -> RerunResult:
        """Re-execute the current layer with the edits on the same inputs; diff against before.

        With continue_to_end, the remaining layers run too and detections before/after are given.
        """
        i = self.position
        if i < 0:
            raise EngineError("nothing has run yet: step() to a layer before rerun()")
        before = self.values[i].float()
        dets_before = None
        if continue_to_end:  # the old outputs carried through the rest of the network, stale or not
            values = list(self.values)
            for j in range(len(values), self.num_layers):
                values.append(self.executor.run_layer(j, self._inputs(j, values))[0])
            dets_before = detect_outputs(self.model, FloatView(values), self.pre, self.thresh, self.nms)
        # layer i runs again whatever it was; an edit of an earlier layer reaches it through the
        # layers in between, which refresh() re-executes with it
        self.stale_from = i if self.stale_from is None else min(i, self.stale_from)
        self.refresh()
        after = self.values[i].float()
        result = RerunResult(i, before, after, error_stats(before, after), int(np.count_nonzero(before != after)))
        if continue_to_end:
            del self.values[i + 1:], self.records[i + 1:], self.timings[i + 1:]
            result.detections_before = dets_before
            result.detections_after = self.run()
        return result

    def save_model(self, path: str | Path, overwrite: bool = False) -> Path:
        """Save the customized float model as a new engine model file (never over the original)."""
        return self.model.save(self.editor.check_target(path, overwrite))

    def save_weights(self, path: str | Path, overwrite: bool = False) -> Path:
        """Save the customized float model as a Darknet `.weights` file (for the same cfg; loads in
        Darknet and OpenCV), never over the original unless asked."""
        p = self.editor.check_target(path, overwrite)
        self.model.save_weights(p)
        return p

    def save_quantized(self, path: str | Path, overwrite: bool = False) -> Path:
        if self.qmodel is None:
            raise EngineError("this session has no quantized model to save")
        return self.qmodel.save(self.editor.check_target(path, overwrite))
