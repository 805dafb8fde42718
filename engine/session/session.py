"""The Session: one model + quantized model + image + execution state, stepped layer by layer.

It is the single API the widgets call. Stepping and the kept outputs are its LayerStepper base
(engine/session/stepping.py, self-contained). CROSS runs the current layer in the other precision
on the same inputs; `continue_from` runs the rest of the network from either result
(engine/session/precision.py). Edits are made by the session's Editor (engine/session/editing.py,
composition); this facade decides which kept outputs they make stale. Sensitivity sweeps live in
engine/quant/sensitivity.py, the run-record file format in engine/session/records.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from engine.darknet.detect import Detection, detect_outputs
from engine.darknet.image import ImageLike, Preprocessed
from engine.errors import ArgumentError, EditsWouldBeLost, EngineError
from engine.quant.executor import Executor, FloatView, Value, reference_outputs
from engine.quant.fitness import ErrorStats, error_stats
from engine.quant.modes import Mode
from engine.quant.progress import CancelHook, Progress
from engine.quant.qmodel import QuantizedModel
from engine.quant.refine.pipeline import MARGIN_K
from engine.session import arguments
from engine.session.editing import Editor
from engine.session.calibration import CalibrationCache
from engine.session.inputs import session_input
from engine.session.layer_data import calibrator_thresholds, layer_info, layer_weights
from engine.session.precision import cross_layer, layer_fitness, other_precision, run_rest
from engine.session.edits import Edit, Journal
from engine.session.results import ContinueResult, CrossResult, RerunResult
from engine.session.stepping import LayerStepper


class Session(LayerStepper):
    """Step, inspect, cross-run and customize a model on one image.

        s = Session(model, quantized=qm, mode="int", image="dog.jpg")
        s.run_to(12); s.output(12); s.cross(); s.step(); s.run(); s.detections()
    """

    def __init__(self, model, quantized: QuantizedModel | str | Path | None = None, mode: str | Mode = "float",
                 image: ImageLike | Preprocessed | None = None, *, resize: str = "letterbox",
                 float_layers=None, thresh: float = 0.25, nms: float = 0.45) -> None:
        model = arguments.model(model)
        quantized = arguments.quantized(quantized)
        thresh, nms = arguments.unit_interval(thresh, "thresh"), arguments.unit_interval(nms, "nms")
        # the session edits private copies: edits never reach the caller's model
        self.editor = Editor(model.shallow_copy(), quantized.copy() if quantized is not None else None, model)
        self.mode = arguments.mode(mode)
        super().__init__(self._executor(self.mode, float_layers))
        self.resize, self.thresh, self.nms = resize, thresh, nms
        self._float_ref: list[np.ndarray] | None = None
        self._calibration = CalibrationCache()
        self.reset(image)

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
    def float_layers(self) -> set[int]:
        return set(self.executor.float_layers)

    def set_mode(self, mode: str | Mode, float_layers=None) -> None:
        """Change FLOAT/HYBRID/INT (and the mixed-precision override); restarts execution."""
        mode = arguments.mode(mode)
        self.executor = self._executor(mode, self.executor.float_layers if float_layers is None else float_layers)
        self.mode = mode
        self.reset()

    def _executor(self, mode: str, float_layers) -> Executor:
        try:
            return Executor(self.model, self.qmodel, mode, float_layers)
        except EngineError:
            raise
        except (ValueError, TypeError) as err:   # float_layers naming no layer, a wrong type
            raise ArgumentError(f"float_layers={float_layers!r}: {err}") from None

    def set_quantized(self, quantized: QuantizedModel | str | Path | None, *, drop_edits: bool = False) -> int:
        """Switch to another quantized model (or None); restarts execution.

        Float edits carry over: their layers' int8 weights are re-derived in the new model's scheme
        and undo / redo keep working. int8 and scale edits belong to the current quantized model:
        EditsWouldBeLost unless `drop_edits` (save_quantized() first to keep them). Returns the
        number of dropped edits.
        """
        quantized = arguments.quantized(quantized)
        if quantized is not None:
            quantized.check_matches(self.model)
        if any(e.target == "float" for e in self.journal.done + self.journal.undone):
            self.editor.check_float_edits_reach(quantized, "set_quantized: this session's float edits cannot carry "
                                                "over", "undo them first (save_model() keeps them), or use a "
                                                "quantized model made without cle")
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
        from engine.model import Model
        applied, undone = len(self.journal.done), len(self.journal.undone)
        if applied + undone and not drop_edits:
            raise EditsWouldBeLost(f"{applied + undone} edit(s) of model '{self.model.graph.name}' would be lost; "
                                   "save_model()/save_quantized() keep them, or switch with drop_edits=True",
                                   applied, undone)
        if callable(model) and not isinstance(model, Model):
            model = model()          # e.g. a cfg + its weights: nothing is read for a refused switch
        model = arguments.model(model)
        quantized = arguments.quantized(quantized)
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

    def reset(self, image: ImageLike | Preprocessed | None = None, name: str | None = None) -> None:
        """Back to before layer 0; with `image`, switch to that image (path, array, PIL, tensor; `name`: the
        file name of encoded bytes or an array, e.g. an upload, used in its errors and as `image_name`)."""
        if image is not None or self.pre is None:
            self.pre, self.image, self.image_name = session_input(self.model, image, self.resize, name)
            self._float_ref = None
        self.values, self.records, self.timings = [], [], []
        self.stale_from = None
        self._fire("reset", self)

    # ------------------------------------------------------------------ execution
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
        return self._detections_of(self.values)

    def float_detections(self) -> list[Detection]:
        return detect_outputs(self.model, self.float_reference(), self.pre, self.thresh, self.nms)

    def float_reference(self) -> list[np.ndarray]:
        """FLOAT outputs of the (edited) model on the same input, the references of the quantized model's
        layers: for a cross-layer-equalized one the equalized twin's (`reference_outputs`: rescaled per
        channel inside the equalized chains, the same arrays at every chain end and head)."""
        self.kept_float_outputs(compute=True)
        kept = self.__dict__.get("_reference")
        if kept is None or kept[0] is not self._float_ref or kept[1] is not self.qmodel:
            kept = self._reference = (self._float_ref, self.qmodel, reference_outputs(self.model, self.qmodel,
                                                                                     self._float_ref))
        return kept[2]

    def kept_float_outputs(self, compute: bool = False) -> list[np.ndarray] | None:
        """`model.forward(pre.x)` of the (edited) model on this input when the session holds it (from
        float_reference(), float_detections(), explain(); a float edit, undo, redo, another image or model drops
        it), else None, or with `compute` computed and kept first: what a caller may use in place of that forward."""
        if self._float_ref is None and compute:
            self._float_ref = self.model.forward(self.pre.x)
        return None if self._float_ref is None else list(self._float_ref)

    # ------------------------------------------------------------------ inspection
    def layer_info(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        info = layer_info(self.model, self.qmodel, self.executor, index)
        if index <= self.position:
            info["seconds"] = self.timings[index]
            info["record"] = dict(self.records[index].stats)
        return info

    def weights(self, index: int, kind: str = "float") -> dict[str, np.ndarray]:
        """Copies of a layer's parameters: kind "float" (raw cfg params), "fused" (batch norm folded in:
        what the int8 ones approximate), "int8" (w_q, b_q, w_scale) or "dequantized" (weights = w_q * w_scale)."""
        return layer_weights(self.model, self.qmodel, self._check_index(index), kind)

    def fitness(self, index: int, local: bool = True) -> dict[str, ErrorStats | None]:
        """This layer against the FLOAT run: propagated (the session's output) and local (this layer
        alone in int8 on the FLOAT run's inputs; skipped with local=False, which is much cheaper).
        Both None in FLOAT mode."""
        index = self._executed(index)
        if self.mode == Mode.FLOAT:
            return {"propagated": None, "local": None}
        return layer_fitness(self.executor, index, self.values[index], self.records[index], self.float_reference(),
                             self._inputs, local)

    def thresholds(self, index: int | str, *, raw: bool = False) -> dict[str, float]:
        """The calibration threshold every registered method would pick for tensor `index` (a layer
        index, its node id "12", or "input") when quantizing with it: under the calibration rules (the first
        layer unclipped, one-sided and shared-scale histograms; `layer_data.calibrator_thresholds`); `raw`:
        each method on the tensor's own |x| histogram. {} when the quantized model keeps no statistics."""
        if index != "input":
            index = self._check_index(int(index) if isinstance(index, str) and index.isdigit() else index)
        return calibrator_thresholds(self.qmodel, index, self.model, raw=raw)

    # ------------------------------------------------------------------ calibration, comparison
    def calibration_stats(self, images, *, key: str | None = None,
                          on_image: Callable[[int, int], Any] | None = None, keep=None):
        """|x| histograms of the current (edited) FLOAT model over `images` (folder, file or list).

        Cached per (`key`, model version) when a key names the image set: a float edit, undo or
        redo bumps the version, so statistics never describe weights the model no longer has.
        `on_image(done, total)` follows the pass.
        """
        return self._calibration.stats(self.model, images, self.resize, key, self.model_version, on_image, keep)

    def compare_methods(self, images, methods, *, per_channel: bool = True, key: str | None = None,
                        on_progress: Callable[[str, int, int], Any] | None = None, backend: str = "numpy",
                        profile: str = "qwidgets", refine: Sequence[str] = (), margin_k: float = MARGIN_K,
                        progress: bool = True, on_run: Progress | None = None, cancel: CancelHook = None):
        """Calibrate once on `images`, quantize with each method, rank them by agreement with FLOAT on the
        same images (engine.scale.compare). Progress bars (tqdm) for each phase: calibrating, quantizing (and
        refining) every method, comparing; progress=False: none. on_progress(phase, done, total): "calibrate"
        per image, "quantize" per method quantized then refined, "compare" per method. backend: "numpy" |
        "onnxruntime" | "auto" (FLOAT and INT on ONNX Runtime; INT needs profile="onnxruntime"). `refine`:
        refinements applied to every method after calibration (gptq, eq, bias, head, margin;
        engine.quant.refine.pipeline), fitted on the same images. `on_run(done, total, what)`: the runs unit by
        unit, the total known up front ("kl: INT, image 3 of 15"; engine.scale.compare.compare). `cancel` (event
        or callable) is asked after each calibration image and before each later unit: then Cancelled."""
        from engine.session.calibration import compare_methods
        return compare_methods(self, images, list(methods), key=key, on_progress=on_progress, progress=progress,
                               per_channel=per_channel, backend=backend, profile=profile, refine=refine,
                               margin_k=margin_k, on_run=on_run, cancel=cancel)

    # ------------------------------------------------------------------ detection diff, explain
    def detection_diff(self):
        """FLOAT vs this run's detections on this image: each FLOAT detection matched (IoU >= 0.9),
        shifted or lost, and the run's extra ones (`engine.quant.explain.DetectionDiff`)."""
        from engine.quant.explain import match_detections
        return match_detections(self.float_detections(), self.detections())

    def explain(self, detection=None, *, on_progress: Callable[[int, int], Any] | None = None):
        """Why this INT / HYBRID run shifts or loses FLOAT detections (`engine.quant.explain`).

        detection: an index into `float_detections()` or one of its Detections -> its `Explanation`
        (culprit layers ranked by the share of its score/IoU loss that running that one layer FLOAT
        recovers, only those that recover some (`ranking`: every int8 layer), and a fix set of FLOAT
        layers that brings it back, verified by a full run); None ->
        (an Explanation per FLOAT detection, the run's extra detections). The session's FLOAT layers
        stay FLOAT in every run. on_progress(done, total) follows the substitution runs. The run's outputs
        and the FLOAT forward are the session's own when current (engine/session/explaining.py)."""
        from engine.session.explaining import explain
        return explain(self, detection, on_progress)

    # ------------------------------------------------------------------ sweeps, records
    def sensitivity(self, progress: bool = True, cancel=None):
        """Rank layers by how much quantizing them alone hurts (engine/sensitivity.py)."""
        from engine.quant.sensitivity import sensitivity
        return sensitivity(self, progress=progress, cancel=cancel)

    def save_record(self, path: str | Path) -> Path:
        from engine.session.records import save_record
        self.editor.check_record_target(path)
        self.refresh()   # the record's statistics must be those of the model it stores
        return save_record(self, path)

    @classmethod
    def open_record(cls, path: str | Path) -> "Session":
        """A Session restored from a run record, at the saved position. Raises WeightsError for bad files."""
        from engine.errors import RecordError
        from engine.session.records import read_record
        rec = read_record(path)   # every value checked; RecordError naming the file otherwise
        meta = rec.meta
        try:
            session = cls(rec.model, rec.qmodel, meta["mode"], rec.pre, resize=meta["resize"],
                          float_layers=meta["float_layers"], thresh=meta["thresh"], nms=meta["nms"])
            if rec.image_png is not None:
                from engine.darknet.image import open_image
                session.image = open_image(rec.image_png, name=f"{path}:image_png")
        except (EngineError, ValueError) as err:   # e.g. an int mode without a quantized model
            raise RecordError(f"{path}: the record does not describe a valid session: {err}") from None
        session.history = meta["edits"]
        session.image_name = meta.get("image_name")
        session.saved = meta
        if meta["position"] >= 0:
            try:
                session.run_to(meta["position"])
            except EngineError as err:
                raise RecordError(f"{path}: the record does not replay: {err}") from err
        return session

    # ------------------------------------------------------------------ CROSS
    def other_precision(self, index: int) -> str:
        return other_precision(self.executor, index)

    def cross(self, index: int | None = None) -> CrossResult:
        """Run layer `index` (default: the current one) in the other precision on the same inputs."""
        index = self.position if index is None else self._executed(index)
        if index < 0:
            raise EngineError("nothing has run yet: step() first, then CROSS the current layer")
        return cross_layer(self.executor, index, self._inputs(index), self.values[index], self.records[index])

    def continue_from(self, source: str = "other", index: int | None = None) -> ContinueResult:
        """Run the rest of the network from layer `index`'s output ("this") or its CROSS result
        ("other"), without changing the session's own state; returns the detections."""
        index = self.position if index is None else self._executed(index)
        if source not in ("this", "other"):
            raise ArgumentError(f"source={source!r}: expected 'this' or 'other'")
        if index < 0:
            raise EngineError("nothing has run yet: step() first, then continue from the current layer")
        self.refresh()
        first = self.cross(index).value_other if source == "other" else self.values[index]
        values = run_rest(self.executor, self.values[:index] + [first], self._inputs)
        return ContinueResult(source, index, self._detections_of(values), values)

    def _detections_of(self, values: list[Value]) -> list[Detection]:
        return detect_outputs(self.model, FloatView(values), self.pre, self.thresh, self.nms)

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

    def edit_target(self, index: int) -> str:
        """What an edit of layer `index` changes by default: "int8" (w_q / b_q) in HYBRID/INT where some run
        reads them, else "float"."""
        return self.editor.default_target(self._check_index(index), self.mode)

    def scale_filter(self, index: int, filt: int, factor: float, *, target: str | None = None) -> Edit:
        return self._edited(self.editor.scale_filter(self._check_index(index), filt, factor, target, self.mode))

    def zero_filter(self, index: int, filt: int, *, target: str | None = None) -> Edit:
        return self._edited(self.editor.zero_filter(self._check_index(index), filt, target, self.mode))

    def prune(self, index: int, fraction: float, *, target: str | None = None) -> Edit:
        """Zero the `fraction` of the layer's weights with the smallest magnitude."""
        return self._edited(self.editor.prune(self._check_index(index), fraction, target, self.mode))

    def set_scale(self, node_id: str | int, scale: float) -> Edit:
        """Change an activation scale (real = q * scale) and re-derive the biases of its int8 readers; their
        int8 edits are kept (an int8 bias keeps its real value), or EditError names what the scale would lose."""
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
            dets_before = self._detections_of(run_rest(self.executor, self.values, self._inputs))
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
        return self.model.save(self.editor.check_target(path, overwrite), exclusive=not overwrite)

    def save_weights(self, path: str | Path, overwrite: bool = False) -> Path:
        """Save the customized float model as a Darknet `.weights` file (for the same cfg; loads in
        Darknet and OpenCV), never over the original unless asked."""
        p = self.editor.check_target(path, overwrite)
        self.model.save_weights(p, exclusive=not overwrite)
        return p

    def save_quantized(self, path: str | Path, overwrite: bool = False) -> Path:
        if self.qmodel is None:
            raise EngineError("this session has no quantized model to save")
        return self.qmodel.save(self.editor.check_target(path, overwrite), exclusive=not overwrite)
