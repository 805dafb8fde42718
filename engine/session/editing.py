"""The Editor: validated, journaled, exactly undoable edits of one (model, quantized model) pair.

Float edits change the session's private model copy (and re-derive that layer's int8 weights, so
HYBRID/INT see them); int8 edits change the quantized model's w_q / b_q; scale edits change an
activation scale and re-derive the int32 biases of the layers that read that tensor, keeping the int8
edits those hold or refusing the scale (qmodel.at_input_scale). Every edit records complete
before/after snapshots of what it touched, so undo and redo are exact.

The Session owns one Editor and calls it; the Editor knows nothing of execution (which outputs
an edit makes stale is the Session's business) and holds only the references it is given.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine.errors import ArgumentError, EditsWouldBeLost, EngineError, FileError
from engine.quant.modes import Mode
from engine.quant.qmodel import LayerQuant, at_input_scale, input_id, weight_rounding
from engine.quant.weights import quantize_bias, quantize_weights
from engine.session.edits import (Edit, EditError, Journal, apply_region, check_float, check_int8, check_int32,
                                  check_number, prune_mask)


class Editor:
    """Edits of `model` (a private copy the session runs) and `qmodel` (or None).

    `original` is the caller's model: float edits are re-based on its parameters when the quantized
    model changes, and saving refuses to overwrite its files. `version` counts float edits, undos
    and redos (calibration caches key on it).
    """

    def __init__(self, model, qmodel, original, version: int = 0) -> None:
        self.model = model
        self.qmodel = qmodel
        self.original = original
        self.version = version
        self.journal = Journal()

    # ------------------------------------------------------------------ snapshots
    def _snapshot(self, layers_params=(), lqs=(), scales=()) -> dict[str, Any]:
        return {"params": {(i, n): self.model.params[i][n] for i, n in layers_params},
                "lqs": {i: self.qmodel.layers.get(i) for i in lqs} if self.qmodel is not None else {},
                "scales": {s: self.qmodel.scales[s] for s in scales} if self.qmodel is not None else {}}

    def _apply(self, snap: dict[str, Any]) -> None:
        for (i, n), arr in snap["params"].items():
            self.model.replace_param(i, n, arr)
        for i, lq in snap["lqs"].items():
            if lq is None:
                self.qmodel.layers.pop(i, None)
            else:
                self.qmodel.layers[i] = lq
        for s, v in snap["scales"].items():
            self.qmodel.scales[s] = v
        if snap["params"]:
            self.version += 1

    def _commit(self, edit: Edit) -> Edit:
        self._apply(edit.new)
        self.journal.push(edit)
        return edit

    def undo(self) -> Edit:
        edit = self.journal.pop_undo()
        self._apply(edit.old)
        return edit

    def redo(self) -> Edit:
        edit = self.journal.pop_redo()
        self._apply(edit.new)
        return edit

    # ------------------------------------------------------------------ the journal
    def summaries(self) -> list[str]:
        return [e.summary() for e in self.journal.done]

    def quantized_edits(self) -> list[Edit]:
        """Applied int8 and scale edits: they belong to the current quantized model."""
        return [e for e in self.journal.done if e.target != "float"]

    def quantized_edit_counts(self) -> tuple[int, int]:
        """(applied, undone but redoable) int8 / scale edits: what a change of quantized model drops."""
        return len(self.quantized_edits()), sum(e.target != "float" for e in self.journal.undone)

    def check_quantized_edits_may_go(self, drop: bool) -> int:
        """How many int8 / scale edits a change of quantized model drops; EditsWouldBeLost unless `drop`."""
        applied, undone = self.quantized_edit_counts()
        if applied + undone and not drop:
            what = " and ".join(part for part in (f"{applied} applied" if applied else "",
                                                   f"{undone} undone (redoable)" if undone else "") if part)
            raise EditsWouldBeLost(
                f"{applied + undone} int8/scale edit(s) ({what}) belong to the current quantized model and would "
                "be lost; save_quantized() keeps the applied ones, or switch with drop_edits=True", applied, undone)
        return applied + undone

    def switch_quantized(self, qmodel) -> None:
        """Edit `qmodel` from now on: float edits are kept (their layers' int8 weights re-derived in the
        new model's scheme, undo/redo snapshots rewritten against it), int8 / scale edits dropped."""
        self.qmodel = qmodel
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
                self._apply({"params": {}, "lqs": e.new["lqs"], "scales": {}})

    # ------------------------------------------------------------------ targets
    def default_target(self, index: int, mode: str) -> str:
        has_int = self.qmodel is not None and index in self.qmodel.layers and not self._runs_float(index)
        return "int8" if mode != Mode.FLOAT and has_int else "float"

    def _profile(self):
        """The device profile whose integer rules the int8 weights follow (the default one without a quantized model)."""
        from engine.quant.profiles import get_profile
        return get_profile(self.qmodel.profile if self.qmodel is not None else None)

    def _runs_float(self, index: int) -> bool:
        """The quantized model's profile runs this layer in float (yolo2_light: layer 0 and linear convs), so no
        run reads its int8 weights."""
        return self.qmodel is not None and self._profile().runs_float(self.model.layers[index])

    def _int8_weight_check(self) -> dict:
        """check_int8's range for weight edits: the profile's (7-bit weights stay 7-bit under `ort_reduce_range`)."""
        prof = self._profile()
        if prof.weight_qmax == 127:
            return {}
        bits = prof.weight_qmax.bit_length() + 1
        return {"qmax": prof.weight_qmax, "why": f"the {prof.name} profile's {bits}-bit weights"}

    def _requantized(self, index: int, params: dict[str, np.ndarray]) -> LayerQuant | None:
        """The layer's int8 weights re-derived from edited float params (same scheme, granularity, rounding, and the
        profile's weight range and bias rule: 7-bit weights stay 7-bit under `ort_reduce_range`)."""
        if self.qmodel is None or index not in self.qmodel.layers:
            return None
        old = self.qmodel.layers[index]
        prof = self._profile()
        w, b = self.model.layers[index].fused(params)
        qw = quantize_weights(w, old.scheme, old.w_scale.size > 1, qmax=prof.weight_qmax,
                              rounding=weight_rounding(self.model, self.qmodel, index))
        qw = prof.fit_bias(qw, b, old.in_scale, lambda: w)
        return LayerQuant(qw.w_q, qw.scale, quantize_bias(b, old.in_scale, qw.scale), old.in_scale, old.scheme)

    def _edit_array(self, index: int, param: str, target: str, make: Callable, description: str,
                    mode: str) -> Edit:
        """Apply make(old_array) -> new_array to one parameter, validated, as a journal entry."""
        layer = self.model.layers[index]
        where = f"layer {index} [{layer.kind}] {target} {param}"
        if target == "float":
            params = self.model.params[index]
            if param not in params:
                raise EditError(f"{where}: no such parameter; this layer has {', '.join(params) or 'none'}")
            new_arr = check_float(make(params[param].astype(np.float32)), where).reshape(params[param].shape)
            self.check_float_edits_reach(self.qmodel, where)
            lq = self._requantized(index, {**params, param: new_arr})
            if lq is not None:
                self._check_no_int8_edits(index, where)
            old = self._snapshot([(index, param)], [index] if lq is not None else [])
            new = {"params": {(index, param): new_arr}, "lqs": {index: lq} if lq is not None else {}, "scales": {}}
        elif target == "int8":
            lq = None if self.qmodel is None else self.qmodel.layers.get(index)
            if lq is None:
                raise EditError(f"{where}: this layer has no int8 weights (mode {mode})")
            if self._runs_float(index):
                raise EditError(f"{where}: the {self.qmodel.profile} profile runs this layer in float, so no run "
                                "reads its int8 weights and an int8 edit would change nothing; edit its float "
                                "weights (target='float')")
            if param in ("weights", "w_q"):
                param = "w_q"
                new_q = check_int8(make(lq.w_q.astype(np.int32)), where, **self._int8_weight_check()
                                   ).reshape(lq.w_q.shape)
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
            raise ArgumentError(f"target={target!r}: expected 'float' or 'int8'")
        return self._commit(Edit(index, target, param, old, new, description))

    # ------------------------------------------------------------------ edits (index already checked)
    def edit_weights(self, index: int, region, values, param: str, target: str | None, mode: str) -> Edit:
        target = target or self.default_target(index, mode)
        where = f"layer {index} [{self.model.layers[index].kind}] {target} {param}"
        # validate the given values themselves: inserting 1.5 into int8 weights must not truncate silently
        if target == "int8":
            values = check_int8(values, where, **self._int8_weight_check()) if param in ("weights", "w_q") \
                else check_int32(values, where)
        elif target == "float":
            values = check_float(values, where)
        return self._edit_array(index, param, target, lambda w: apply_region(w, region, values, where),
                                f"set {param}[{region}]", mode)

    def scale_filter(self, index: int, filt: int, factor: float, target: str | None, mode: str) -> Edit:
        factor = check_number(factor, f"layer {index}: scale factor")
        target = target or self.default_target(index, mode)

        def make(w):
            self._check_filter(index, w, filt)
            out = w.astype(np.float64).copy()
            out[filt] = out[filt] * factor
            return np.rint(out) if target == "int8" else out
        return self._edit_array(index, "weights", target, make, f"scale filter {filt} by {factor}", mode)

    def zero_filter(self, index: int, filt: int, target: str | None, mode: str) -> Edit:
        def make(w):
            self._check_filter(index, w, filt)
            out = w.copy()
            out[filt] = 0
            return out
        return self._edit_array(index, "weights", target or self.default_target(index, mode), make,
                                f"zero filter {filt}", mode)

    def prune(self, index: int, fraction: float, target: str | None, mode: str) -> Edit:
        fraction = check_number(fraction, f"layer {index}: prune fraction")

        def make(w):
            out = w.copy()
            out[prune_mask(w, fraction)] = 0
            return out
        return self._edit_array(index, "weights", target or self.default_target(index, mode), make,
                                f"prune {100 * fraction:.1f}% by magnitude", mode)

    @staticmethod
    def check_float_edits_reach(qmodel, where: str, advice: str = "edit the int8 weights (target='int8'), or use a "
                                                                 "quantized model made without cle") -> None:
        """EditError if `qmodel` is cross-layer equalized (`quantize --refine cle`): its layers (and every run with it,
        FLOAT too) belong to the equalized twin of the float model, which the executor derives once, so a float
        edit would not reach FLOAT runs and would requantize the layer from the unequalized weights."""
        if qmodel is not None and qmodel.meta.get("equalization"):
            raise EditError(f"{where}: the quantized model is cross-layer equalized (refine cle): its runs use the "
                            f"equalized twin of the float weights, which a float edit does not reach; {advice}")

    def _check_no_int8_edits(self, index: int, where: str) -> None:
        """A float edit re-derives the layer's whole int8 weights and int32 biases from the float parameters:
        refused while int8 edits of that layer are applied, which it would silently replace."""
        mine = [e for e in self.journal.done if e.target == "int8" and e.layer == index]
        if mine:
            raise EditError(
                f"{where}: a float edit re-derives this layer's int8 weights and biases from the float ones, which "
                f"would discard its {len(mine)} applied int8 edit{'s' if len(mine) > 1 else ''} "
                f"({'; '.join(e.description for e in mine[:3])}{'; ...' if len(mine) > 3 else ''}); undo "
                f"{'them' if len(mine) > 1 else 'it'} first, or make this edit on the int8 weights (target='int8')")

    @staticmethod
    def _check_filter(index: int, w: np.ndarray, filt: int) -> None:
        from engine.session.arguments import is_integer
        if not is_integer(filt):
            raise EditError(f"layer {index}: filter {filt!r} must be an integer index (0..{w.shape[0] - 1})")
        if not 0 <= int(filt) < w.shape[0]:
            raise EditError(f"layer {index}: filter {filt} does not exist (0..{w.shape[0] - 1})")

    def set_scale(self, node_id: str | int, scale: float) -> Edit:
        nid = str(node_id)
        if self.qmodel is None or nid not in self.qmodel.scales:
            raise EditError(f"tensor {nid!r} has no activation scale (quantized model needed)")
        scale = check_number(scale, f"tensor {nid}: scale", positive=True)
        from engine.quant.qfile import SCALE_MAX, SCALE_MIN
        if not SCALE_MIN <= scale <= SCALE_MAX:   # 1e-300 would underflow to 0: silently no detections
            raise EditError(f"tensor {nid}: scale {scale:g} is not plausible; expected [{SCALE_MIN:g}, {SCALE_MAX:g}]")
        # INT runs a maxpool / upsample / reorg / dropout on its input's codes and grid: a scale is one for the
        # whole group (its producer and these), or HYBRID and the file would keep the old one after them
        from engine.calib.views import scale_groups
        groups = scale_groups(self.model)
        group = sorted((m for m in self.qmodel.scales if groups.get(m, m) == groups.get(nid, nid)),
                       key=lambda m: -1 if m == "input" else int(m)) or [nid]
        readers = [l.index for l in self.model.layers if l.index in self.qmodel.layers and input_id(l) in group]
        old = self._snapshot((), readers, group)
        # the float parameters the layers were quantized from: a cross-layer-equalized model's are its twin's
        from engine.quant.executor import equalized_for
        base = equalized_for(self.model, self.qmodel)
        lqs = {i: at_input_scale(base, i, self.qmodel.layers[i], float(scale), self.qmodel.profile) for i in readers}
        new = {"params": {}, "lqs": lqs, "scales": {m: float(scale) for m in group}}
        shared = f" (shared by {', '.join(group)})" if len(group) > 1 else ""
        return self._commit(Edit(group[0], "scale", "scale", old, new,
                                 f"scale {old['scales'][nid]:.6g} -> {scale:.6g}{shared}"))

    # ------------------------------------------------------------------ saving
    def _original_files(self) -> set[Path]:
        """The files the original model was read from (weights or model file, cfg)."""
        return {Path(f).resolve() for f in (self.original.source, self.original.cfg.file) if f}

    def input_files(self) -> set[Path]:
        """The files this session's models were read from: the original model's and the quantized model's."""
        q = self.qmodel.source if self.qmodel is not None else None
        return self._original_files() | ({Path(q).resolve()} if q else set())

    def check_record_target(self, path: str | Path) -> None:
        """A run record replaces an older record (also the one the session was opened from: its model's
        source), never a model file the session was read from."""
        from engine.session.records import is_record
        if Path(path).resolve() in self.input_files() and not is_record(path):
            raise EngineError(f"{path} is a file this session's models were read from: save the record under "
                              "another name")

    def check_target(self, path: str | Path, overwrite: bool) -> Path:
        """`path` if saving there keeps the original model's files and nothing else is overwritten unasked."""
        p = Path(path)
        if p.is_dir():          # "exists; pass overwrite=True" would offer to replace a folder with a file
            raise FileError(f"{p} is a folder; expected the path of a new file in it (e.g. {p / 'model.npz'})")
        if p.resolve() in self._original_files() and not overwrite:
            raise EngineError(f"{p} is the original model: save the customized model under a new name "
                              "(or pass overwrite=True)")
        if p.exists() and not overwrite:
            raise EngineError(f"{p} exists; pass overwrite=True to replace it")
        return p
