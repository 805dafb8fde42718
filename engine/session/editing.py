"""Session customizing: weight and scale edits with a journal, rerun of the current layer, saving.

Float edits change the session's model (and re-derive that layer's int8 weights, so HYBRID/INT
see them); int8 edits change the quantized model's w_q / b_q; scale edits change an activation
scale and re-derive the int32 biases of the layers that read that tensor. Every edit records
complete before/after snapshots of what it touched, so undo and redo are exact.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.session.edits import (Edit, EditError, Journal, apply_region, check_float, check_int8, check_int32, check_number,
                          prune_mask)
from engine.errors import EditsWouldBeLost, EngineError
from engine.quant.fitness import ErrorStats, error_stats
from engine.quant.qmodel import LayerQuant, input_id
from engine.quant.weights import quantize_bias, quantize_weights


@dataclass
class RerunResult:
    index: int
    before: np.ndarray = field(repr=False)
    after: np.ndarray = field(repr=False)
    diff: ErrorStats = None
    changed: int = 0                         # number of output values that changed
    detections_before: list | None = None
    detections_after: list | None = None


class CustomizeMixin:
    """Mixed into Session: needs self.model, self.qmodel, self.executor, self.values, ..."""

    def _init_customize(self) -> None:
        self.journal = Journal()
        self.stale_from: int | None = None
        self.model_version = 0      # bumped by every float edit, undo or redo (calibration caches key on it)

    # ------------------------------------------------------------------ stale outputs
    def _first_affected(self, edit: Edit) -> int:
        """The first layer whose output an edit changes: the edited layer, or for a scale edit the
        tensor's producer (it requantizes into that scale; its readers come later)."""
        if edit.target == "scale":
            return 0 if edit.layer == "input" else int(edit.layer)
        return int(edit.layer)

    def _mark_stale(self, edit: Edit) -> None:
        j = self._first_affected(edit)
        if j <= self.position:
            self.stale_from = j if self.stale_from is None else min(self.stale_from, j)

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

    # ------------------------------------------------------------------ snapshots
    def _snapshot(self, layers_params=(), lqs=(), scales=()) -> dict[str, Any]:
        return {"params": {(i, n): self.model.params[i][n] for i, n in layers_params},
                "lqs": {i: self.qmodel.layers.get(i) for i in lqs} if self.qmodel is not None else {},
                "scales": {s: self.qmodel.scales[s] for s in scales} if self.qmodel is not None else {}}

    def _restore(self, snap: dict[str, Any]) -> None:
        for (i, n), arr in snap["params"].items():
            self.model.params[i] = {**self.model.params[i], n: arr}
            self.model._prepared.pop(i, None)
        for i, lq in snap["lqs"].items():
            if lq is None:
                self.qmodel.layers.pop(i, None)
            else:
                self.qmodel.layers[i] = lq
        for s, v in snap["scales"].items():
            self.qmodel.scales[s] = v
        if snap["params"]:
            self._float_ref = None
            self.model_version += 1

    def _commit(self, edit: Edit) -> Edit:
        self._restore(edit.new)
        self.journal.push(edit)
        self._mark_stale(edit)
        self._fire("edit", edit)
        return edit

    def undo(self) -> Edit:
        edit = self.journal.pop_undo()
        self._restore(edit.old)
        self._mark_stale(edit)
        self._fire("edit", edit)
        return edit

    def redo(self) -> Edit:
        edit = self.journal.pop_redo()
        self._restore(edit.new)
        self._mark_stale(edit)
        self._fire("edit", edit)
        return edit

    def edits(self) -> list[str]:
        return [e.summary() for e in self.journal.done]

    def quantized_edits(self) -> list[Edit]:
        """Applied int8 and scale edits: they belong to the current quantized model."""
        return [e for e in self.journal.done if e.target != "float"]

    def quantized_edit_counts(self) -> tuple[int, int]:
        """(applied, undone but redoable) int8 / scale edits: what a change of quantized model drops."""
        return len(self.quantized_edits()), sum(e.target != "float" for e in self.journal.undone)

    def _check_quantized_edits_may_go(self, drop: bool) -> int:
        """How many int8 / scale edits a change of quantized model drops; EditsWouldBeLost unless `drop`."""
        applied, undone = self.quantized_edit_counts()
        if applied + undone and not drop:
            what = " and ".join(part for part in (f"{applied} applied" if applied else "",
                                                   f"{undone} undone (redoable)" if undone else "") if part)
            raise EditsWouldBeLost(
                f"{applied + undone} int8/scale edit(s) ({what}) belong to the current quantized model and would "
                "be lost; save_quantized() keeps the applied ones, or switch with drop_edits=True", applied, undone)
        return applied + undone

    def _rebase_edits(self) -> None:
        """After the quantized model changed: keep float edits (their layers' int8 weights re-derived in
        the new model's scheme, undo/redo snapshots rewritten against it), drop int8 / scale edits."""
        done = [e for e in self.journal.done if e.target == "float"]
        redo = [e for e in self.journal.undone if e.target == "float"]
        params: dict[int, dict] = {}
        lqs: dict[int, LayerQuant | None] = {}
        for e in done + redo[::-1]:            # application order: done, then the redo stack top first
            i = int(e.layer)
            base = params.get(i, dict(self.original.params[i]))
            params[i] = {**base, e.param: e.new["params"][(i, e.param)]}
            if self.qmodel is None:
                e.old["lqs"], e.new["lqs"] = {}, {}
                continue
            old_lq = lqs.get(i, self.qmodel.layers.get(i))
            new_lq = self._requantized(i, params[i])
            e.old["lqs"] = {i: old_lq} if old_lq is not None or new_lq is not None else {}
            e.new["lqs"] = {i: new_lq} if new_lq is not None else {}
            lqs[i] = new_lq
        # (_requantized reads only the scheme, granularity and input scale of the new model's layer,
        # which no float edit changes.) The new quantized model takes the lqs of the *done* state:
        self.journal.done, self.journal.undone = done, redo
        if self.qmodel is not None:
            for e in done:
                self._restore({"params": {}, "lqs": e.new["lqs"], "scales": {}})

    # ------------------------------------------------------------------ targets
    def _default_target(self, index: int) -> str:
        has_int = self.qmodel is not None and index in self.qmodel.layers
        return "int8" if self.mode != "float" and has_int else "float"

    def _requantized(self, index: int, params: dict[str, np.ndarray]) -> LayerQuant | None:
        """The layer's int8 weights re-derived from edited float params (same scheme, granularity)."""
        if self.qmodel is None or index not in self.qmodel.layers:
            return None
        old = self.qmodel.layers[index]
        layer = self.model.layers[index]
        w, b = layer.fused(params)
        qw = quantize_weights(w, old.scheme, old.w_scale.size > 1)
        return LayerQuant(qw.w_q, qw.scale, quantize_bias(b, old.in_scale, qw.scale), old.in_scale, old.scheme)

    def _edit_array(self, index: int, param: str, target: str | None, make, description: str) -> Edit:
        """Apply make(old_array) -> new_array to one parameter, validated, as a journal entry."""
        index = self._check_index(index)
        layer = self.model.layers[index]
        target = target or self._default_target(index)
        where = f"layer {index} [{layer.kind}] {target} {param}"
        if target == "float":
            params = self.model.params[index]
            if param not in params:
                raise EditError(f"{where}: no such parameter; this layer has {', '.join(params) or 'none'}")
            new_arr = check_float(make(params[param].astype(np.float32)), where).reshape(params[param].shape)
            new_params = {**params, param: new_arr}
            lq = self._requantized(index, new_params)
            old = self._snapshot([(index, param)], [index] if lq is not None else [])
            new = {"params": {(index, param): new_arr}, "lqs": {index: lq} if lq is not None else {}, "scales": {}}
        elif target == "int8":
            lq = None if self.qmodel is None else self.qmodel.layers.get(index)
            if lq is None:
                raise EditError(f"{where}: this layer has no int8 weights (mode {self.mode})")
            if param in ("weights", "w_q"):
                param = "w_q"
                new_q = check_int8(make(lq.w_q.astype(np.int32)), where).reshape(lq.w_q.shape)
                new_lq = LayerQuant(new_q, lq.w_scale, lq.b_q, lq.in_scale, lq.scheme)
            elif param in ("biases", "b_q"):
                param = "b_q"
                # float64 work copy: an int64 one would turn NaN into garbage and 2.7 into 2 silently
                b = check_int32(make(lq.b_q.astype(np.float64)), where)
                new_lq = LayerQuant(lq.w_q, lq.w_scale, b.astype(np.int32).reshape(lq.b_q.shape), lq.in_scale,
                                    lq.scheme)
            else:
                raise EditError(f"{where}: int8 edits change 'weights' (w_q) or 'biases' (b_q)")
            old = self._snapshot((), [index])
            new = {"params": {}, "lqs": {index: new_lq}, "scales": {}}
        else:
            raise ValueError(f"target={target!r}: expected 'float' or 'int8'")
        return self._commit(Edit(index, target, param, old, new, description))

    # ------------------------------------------------------------------ edits
    def edit_weights(self, index: int, region, values, *, param: str = "weights", target: str | None = None) -> Edit:
        """Set weights[region] = values: one weight (tuple index), a slice, or a whole filter (int).

        target: "float" (FLOAT mode default) or "int8" (HYBRID/INT default). Raises EditError.
        """
        index = self._check_index(index)
        target = target or self._default_target(index)
        where = f"layer {index} [{self.model.layers[index].kind}] {target} {param}"
        # validate the given values themselves: inserting 1.5 into int8 weights must not truncate silently
        if target == "int8":
            values = check_int8(values, where) if param in ("weights", "w_q") else check_int32(values, where)
        elif target == "float":
            values = check_float(values, where)
        return self._edit_array(index, param, target, lambda w: apply_region(w, region, values, where),
                                f"set {param}[{region}]")

    def scale_filter(self, index: int, filt: int, factor: float, *, target: str | None = None) -> Edit:
        factor = check_number(factor, f"layer {index}: scale factor")

        def make(w):
            self._check_filter(index, w, filt)
            out = w.astype(np.float64).copy()
            out[filt] = out[filt] * factor
            return np.rint(out) if (target or self._default_target(index)) == "int8" else out
        return self._edit_array(index, "weights", target, make, f"scale filter {filt} by {factor}")

    def zero_filter(self, index: int, filt: int, *, target: str | None = None) -> Edit:
        def make(w):
            self._check_filter(index, w, filt)
            out = w.copy()
            out[filt] = 0
            return out
        return self._edit_array(index, "weights", target, make, f"zero filter {filt}")

    def prune(self, index: int, fraction: float, *, target: str | None = None) -> Edit:
        """Zero the `fraction` of the layer's weights with the smallest magnitude."""
        def make(w):
            out = w.copy()
            out[prune_mask(w, fraction)] = 0
            return out
        return self._edit_array(index, "weights", target, make, f"prune {100 * fraction:.1f}% by magnitude")

    def _check_filter(self, index: int, w: np.ndarray, filt: int) -> None:
        if not 0 <= int(filt) < w.shape[0]:
            raise EditError(f"layer {index}: filter {filt} does not exist (0..{w.shape[0] - 1})")

    def set_scale(self, node_id: str | int, scale: float) -> Edit:
        """Change an activation scale (real = q * scale) and re-derive the biases of its int8 readers."""
        nid = str(node_id)
        if self.qmodel is None or nid not in self.qmodel.scales:
            raise EditError(f"tensor {nid!r} has no activation scale (quantized model needed)")
        scale = check_number(scale, f"tensor {nid}: scale", positive=True)
        readers = [l.index for l in self.model.layers if l.index in self.qmodel.layers and input_id(l) == nid]
        old = self._snapshot((), readers, [nid])
        lqs = {}
        for i in readers:
            lq = self.qmodel.layers[i]
            _, b = self.model.layers[i].fused(self.model.params[i])
            lqs[i] = LayerQuant(lq.w_q, lq.w_scale, quantize_bias(b, float(scale), lq.w_scale), float(scale), lq.scheme)
        new = {"params": {}, "lqs": lqs, "scales": {nid: float(scale)}}
        return self._commit(Edit(nid, "scale", "scale", old, new, f"scale {old['scales'][nid]:.6g} -> {scale:.6g}"))

    def set_threshold(self, node_id: str | int, threshold: float) -> Edit:
        return self.set_scale(node_id, check_number(threshold, f"tensor {node_id}: threshold", positive=True) / 127.0)

    # ------------------------------------------------------------------ rerun / save
    def rerun(self, continue_to_end: bool = False) -> RerunResult:
        """Re-execute the current layer with the edits on the same inputs; diff against before.

        With continue_to_end, the remaining layers run too and detections before/after are given.
        """
        i = self.position
        if i < 0:
            raise EngineError("nothing has run yet: step() to a layer before rerun()")
        before = self.values[i].float()
        dets_before = None
        if continue_to_end:  # the old outputs carried through the rest of the network
            dets_before = self._detections_as_kept()
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

    def _detections_as_kept(self) -> list:
        """Detections of the kept outputs as they are (stale or not), run to the end if needed."""
        from engine.darknet.detect import detect_outputs
        from engine.quant.executor import FloatView
        values = list(self.values)
        for j in range(len(values), self.num_layers):
            values.append(self.executor.run_layer(j, self._inputs(j, values))[0])
        return detect_outputs(self.model, FloatView(values), self.pre, self.thresh, self.nms)

    def save_model(self, path: str | Path, overwrite: bool = False) -> Path:
        """Save the customized float model as a new engine model file (never over the original)."""
        p = self._check_target(path, overwrite)
        return self.model.save(p)

    def save_weights(self, path: str | Path, overwrite: bool = False) -> Path:
        """Save the customized float model as a Darknet `.weights` file (for the same cfg; loads in
        Darknet and OpenCV), never over the original unless asked."""
        p = self._check_target(path, overwrite)
        self.model.save_weights(p)
        return p

    def save_quantized(self, path: str | Path, overwrite: bool = False) -> Path:
        if self.qmodel is None:
            raise EngineError("this session has no quantized model to save")
        p = self._check_target(path, overwrite)
        return self.qmodel.save(p)

    def _check_target(self, path: str | Path, overwrite: bool) -> Path:
        p = Path(path)
        sources = {Path(f).resolve() for f in (self.original.source, self.original.cfg.file) if f}
        if p.resolve() in sources and not overwrite:
            raise EngineError(f"{p} is the original model: save the customized model under a new name "
                              "(or pass overwrite=True)")
        if p.exists() and not overwrite:
            raise EngineError(f"{p} exists; pass overwrite=True to replace it")
        return p
