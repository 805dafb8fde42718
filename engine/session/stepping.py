"""LayerStepper: an Executor stepped through its network on one input, every layer's output kept.

Every executed layer's output is kept (float, and int8 + scale where the layer ran in int8), so
any earlier layer can be inspected. Kept outputs an edit made stale (`stale_from`) are re-executed
by refresh() before anything reads on. The class is self-contained (it defines every attribute
it uses); the Session builds on it with the model, the edits and the detections.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from engine.darknet.image import Preprocessed
from engine.errors import ArgumentError, EngineError
from engine.quant.executor import INT8, Executor, LayerRecord, Value
from engine.session import arguments
from engine.session.results import StepResult
from engine.session.stats import TensorSummary, histogram, summarize


class LayerStepper:
    """Step, inspect and refresh the kept outputs of `executor` on the input `pre`."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.pre: Preprocessed | None = None
        self.values: list[Value] = []
        self.records: list[LayerRecord] = []
        self.timings: list[float] = []
        self.stale_from: int | None = None        # first kept output an edit made stale (refresh() re-runs it)
        self._callbacks: dict[str, list[Callable]] = {"step": [], "edit": [], "reset": [], "refresh": []}

    # ------------------------------------------------------------------ callbacks
    def on_step(self, cb: Callable[[StepResult], Any]) -> Callable:
        self._callbacks["step"].append(cb)
        return cb

    def on_edit(self, cb: Callable) -> Callable:
        self._callbacks["edit"].append(cb)
        return cb

    def on_reset(self, cb: Callable[["LayerStepper"], Any]) -> Callable:
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
    def position(self) -> int:
        """Index of the last executed layer (-1 before the first step)."""
        return len(self.values) - 1

    @property
    def done(self) -> bool:
        return len(self.values) == len(self.executor.model.layers)

    @property
    def num_layers(self) -> int:
        return len(self.executor.model.layers)

    @property
    def x(self) -> np.ndarray:
        return self.pre.x

    # ------------------------------------------------------------------ execution
    def _check_index(self, index: int) -> int:
        """An integer layer index in range: run_to("3"), run_to(2.5), run_to(True) are refused."""
        return arguments.layer_index(index, self.num_layers)

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
        layer = self.executor.model.layers[i]
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
            result = StepResult(index, str(index), self.executor.model.layers[index].kind, rec.precision, self.values[index],
                                rec, self.timings[index])
        return result

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

    def kept_run_outputs(self) -> list[Value] | None:
        """Every layer's output of this run (a new list of the kept Values) when all layers have run and no
        edit has made one stale since, else None. They are what `executor.run(pre.x)` computes, bit for bit,
        so a caller may use them in place of that run (Explain does). A mode, quantized model, model or
        image change restarts the run (reset() empties them); an edit marks them stale until refresh()."""
        if not self.done or self.stale_from is not None:
            return None
        return list(self.values)

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
        if any(0 <= i and i > self.position for i in self.executor.model.layers[index].inputs):
            raise EngineError(f"the inputs of layer {index} have not all run yet; run_to({index - 1}) first")
        return [v.float() for v in self._inputs(index)]

    def precision(self, index: int) -> str:
        return self.executor.precision(self._check_index(index))

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
            w = self.executor.model.params[index].get("weights")
            if w is None:
                raise EngineError(f"layer {index} [{self.executor.model.layers[index].kind}] has no weights")
            x = w
        else:
            raise ArgumentError(f"which={which!r}: expected output, input or weights")
        return histogram(x, bins=arguments.count(bins, "bins"), log2=log2)
