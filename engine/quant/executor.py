"""Run a model in FLOAT, HYBRID or INT mode, one layer at a time, with per-layer overrides.

The precision of each layer is session policy decided here, not by the layer: FLOAT runs every
layer in float; HYBRID runs conv/connected in int8 (float input quantized with its calibrated
scale, int32 accumulation, dequantized output); INT runs every layer that has an int8 path on
int8 tensors and dequantizes only where a float layer (a detection head, or a layer the user
keeps FLOAT) reads an int8 tensor. A conv read only by detection heads hands them its int32
accumulators dequantized (the int8 chain ends there). Conversions happen at these boundaries only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from engine.errors import Cancelled, EngineError
from engine.quant.int_layers import HEAD_LAYERS
from engine.quant.layermemo import lq_token, sharing_acc
from engine.quant.modes import MODES, Mode
from engine.quant.profiles import get_profile
from engine.quant.progress import CancelHook, stop_hook
from engine.quant.qmodel import QuantizedModel
from engine.quant.qtensor import QTensor

FLOAT, INT8 = "float", "int8"


@dataclass
class Value:
    """A layer output: float (f) and/or int8 (q). `float()` dequantizes lazily."""
    f: np.ndarray | None = None
    q: QTensor | None = None

    def float(self) -> np.ndarray:
        if self.f is not None:
            return self.f
        assert self.q is not None
        # dequantized on demand, not kept: a session holds every layer's output, and a float copy
        # of each int8 tensor would quadruple that memory
        f = self.q.dequantize()
        f.flags.writeable = False
        return f


class FloatView(Sequence):
    """values[i].float() on access. Detection decoding reads only the head outputs; a float copy of
    every int8 output at once would cost 4x the kept outputs (a yolov3 INT session at 608: +600 MB)."""

    def __init__(self, values: Sequence[Value]) -> None:
        self._values = values

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, index: int) -> np.ndarray:   # type: ignore[override]
        return self._values[index].float()


@dataclass
class LayerRecord:
    index: int
    precision: str
    stats: dict = field(default_factory=dict)


def equalized_for(model, qmodel: QuantizedModel):
    """The float model a quantized model's layers belong to: `model` itself, or its cross-layer-equalized
    twin (engine/quant/refine/equalize.py) when the quantized model was made from one (kept on the qmodel)."""
    spec = qmodel.meta.get("equalization")
    if not spec:
        return model
    cached = qmodel.__dict__.get("_equalized")
    if cached is not None and cached[0] is model and cached[1] is spec:
        return cached[2]
    from engine.quant.refine.equalize import equalized
    twin = equalized(model, spec)
    qmodel.__dict__["_equalized"] = (model, spec, twin)
    return twin


def float_forward(model, qmodel: QuantizedModel | None):
    """x -> the FLOAT outputs the layers of `qmodel` are compared with: `model.forward`, or for a
    cross-layer-equalized quantized model the equalized twin's, as `model`'s rescaled per channel
    (equal to the original at every chain end and head; engine/quant/refine/equalize.py)."""
    spec = qmodel.meta.get("equalization") if qmodel is not None else None
    if not spec:
        return model.forward
    from engine.quant.refine.equalize import derived_forward
    return derived_forward(model, spec)


def reference_outputs(model, qmodel: QuantizedModel | None, outs: Sequence[np.ndarray]) -> Sequence[np.ndarray]:
    """`outs` (a FLOAT forward of `model`) as the references of `qmodel`'s layers: themselves, or for a
    cross-layer-equalized quantized model the equalized twin's outputs (`float_forward`)."""
    spec = qmodel.meta.get("equalization") if qmodel is not None else None
    if not spec:
        return outs
    from engine.quant.refine.equalize import channel_factors, rescaled_outputs
    return rescaled_outputs(outs, channel_factors(model, spec))


def head_feeders(model) -> set[int]:
    """Layers every reader of which always runs float (a detection head, softmax, cost): their output
    leaves the int8 chain."""
    readers: dict[int, list] = {i: [] for i in range(len(model.layers))}
    for layer in model.layers:
        for src in layer.inputs:
            if src >= 0:
                readers[src].append(layer)
    return {i for i, rs in readers.items() if rs and all(r.float_only for r in rs)}


class Executor:
    """Precision policy + boundary conversions for one (model, quantized model, mode)."""

    def __init__(self, model, qmodel: QuantizedModel | None = None, mode: str = "float",
                 float_layers: Iterable[int] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: expected one of {', '.join(MODES)}")
        if mode != Mode.FLOAT and qmodel is None:
            raise EngineError(f"mode '{mode}' needs a quantized model (quantize one or load a .npz)")
        if qmodel is not None:
            qmodel.check_matches(model)
            model = equalized_for(model, qmodel)
        self.model, self.qmodel, self.mode = model, qmodel, mode
        default = qmodel.float_layers if qmodel is not None else ()
        self.float_layers = set(int(i) for i in (default if float_layers is None else float_layers))
        bad = [i for i in self.float_layers if not 0 <= i < len(model.layers)]
        if bad:
            raise ValueError(f"float_layers {bad}: no such layers (0..{len(model.layers) - 1})")
        self.head_feeders = head_feeders(model)
        # the device profile's integer rules (engine/quant/profiles): qwidgets unless the model says otherwise
        self.profile = get_profile(qmodel.profile if qmodel is not None else None)

    def has_int_path(self, index: int, mode: str | None = None) -> bool:
        layer = self.model.layers[index]
        mode = mode or self.mode
        if self.profile.runs_float(layer):
            return False
        if mode == Mode.HYBRID:
            return self.profile.has_hybrid_path(layer.kind)
        return self.profile.has_int_path(layer.kind)

    def precision(self, index: int) -> str:
        if self.mode == Mode.FLOAT or index in self.float_layers or not self.has_int_path(index):
            return FLOAT
        return INT8

    def int32_out(self, index: int) -> bool:
        """When this layer runs its INT path, does it hand its int32 accumulators, dequantized, to a
        detection head (instead of an int8 tensor)? A property of the graph, whatever the mode: CROSS
        from FLOAT runs the same INT path."""
        return (self.profile.int32_heads and index in self.head_feeders
                and self.model.layers[index].kind in HEAD_LAYERS)

    def scale_of(self, producer: int) -> float:
        return self.qmodel.scales["input" if producer < 0 else str(producer)]

    def zero_point_of(self, producer: int) -> int:
        return int(self.qmodel.zero_points.get("input" if producer < 0 else str(producer), 0))

    def to_q(self, v: Value, producer: int, rec: dict, memo=None) -> QTensor:
        if v.q is not None:
            return v.q
        f, scale, zp = v.float(), self.scale_of(producer), self.zero_point_of(producer)
        key = ("quantize", self.profile.name, id(f), scale, zp)
        hit = memo.get(key) if memo is not None else None
        if hit is None:
            hit = self.profile.quantize(f, scale, zp)
            if memo is not None:
                memo.put(key, hit, f)
        q, sat = hit
        rec["input_saturated"] = rec.get("input_saturated", 0) + sat
        return q

    def run_layer(self, index: int, inputs: list[Value], precision: str | None = None,
                  memo=None) -> tuple[Value, LayerRecord]:
        """Run layer `index` on its input values in `precision` (default: the policy's).

        memo: an engine.quant.layermemo.LayerMemo shared with executors of other quantized models on
        the same input: a layer whose inputs and parameters equal one already run there is taken
        from it (the same Value, a copy of its record)."""
        precision = precision or self.precision(index)
        if memo is None or not self.profile.memo_safe:
            return self._run_layer(index, inputs, precision)
        layer = self.model.layers[index]
        lq = self.qmodel.layers.get(index) if self.qmodel is not None and precision != FLOAT else None
        path = FLOAT if precision == FLOAT else (Mode.HYBRID.value if self.mode == Mode.HYBRID
                                                 and self.profile.has_hybrid_path(layer.kind) else INT8)
        if path == INT8:
            rec0: dict = {}
            qs = [self.to_q(v, src, rec0, memo) for v, src in zip(inputs, layer.inputs)]
            arrays = [q.q for q in qs]
            ins = tuple((id(q.q), q.scale, q.zero_point) for q in qs)
            inputs = [Value(q=q) for q in qs]
        else:
            rec0 = {}
            arrays = [v.f if v.f is not None else v.q.q for v in inputs]
            ins = tuple((id(a), None if v.f is not None else (v.q.scale, v.q.zero_point))
                        for a, v in zip(arrays, inputs))
        out_scale = self.qmodel.scales.get(str(index)) if path == INT8 else None
        # the model too: FLOAT layers read its params, and a CLE twin shares the layer objects
        key = (path, self.profile.name, id(self.model), index, ins, lq_token(lq), out_scale, self.int32_out(index))
        hit = memo.get(key)
        if hit is None:
            if path == INT8 and index in memo.share_acc:     # the conv's accumulators are kept / taken there
                with sharing_acc(memo):
                    v, rec = self._run_layer(index, inputs, precision)
            else:
                v, rec = self._run_layer(index, inputs, precision)
            memo.put(key, (v, dict(rec.stats)), self.model, *arrays)
        else:
            v, rec = hit[0], LayerRecord(index, precision, dict(hit[1]))
        if rec0.get("input_saturated"):
            rec.stats["input_saturated"] = rec.stats.get("input_saturated", 0) + rec0["input_saturated"]
        return v, rec

    def _run_layer(self, index: int, inputs: list[Value], precision: str) -> tuple[Value, LayerRecord]:
        layer = self.model.layers[index]
        rec = LayerRecord(index, precision)
        if precision == FLOAT:
            return Value(f=self.model.run_layer(index, [v.float() for v in inputs])), rec
        if self.qmodel is None:
            raise EngineError(f"layer {index} [{layer.kind}]: int8 needs a quantized model")
        lq = self.qmodel.layers.get(index)
        if self.mode == Mode.HYBRID and self.profile.has_hybrid_path(layer.kind):
            y = self.profile.hybrid(layer, inputs[0].float(), lq, self.qmodel, rec.stats)
            y.flags.writeable = False
            return Value(f=y), rec
        if not self.has_int_path(index, Mode.INT8):
            raise EngineError(f"layer {index} [{layer.kind}] has no int8 path in profile "
                              f"'{self.profile.name}' (it runs in float)")
        xs = [self.to_q(v, src, rec.stats) for v, src in zip(inputs, layer.inputs)]
        if self.int32_out(index):
            y = self.profile.run_head(layer, xs, lq, self.qmodel, rec.stats)
            y.flags.writeable = False
            return Value(f=y), rec
        y_q = self.profile.run(layer, xs, lq, self.qmodel, rec.stats)
        y_q.q.flags.writeable = False
        return Value(q=y_q), rec

    def checked_input(self, x: np.ndarray, memo=None) -> np.ndarray:
        """model.check_input(x); with a memo, the same view for the same x (so layer results on it are shared)."""
        if memo is None:
            return self.model.check_input(x)
        key = ("input", id(x), id(self.model))
        hit = memo.get(key)
        if hit is None:
            hit = self.model.check_input(x)
            memo.put(key, hit, x, self.model)
        return hit

    def inputs_of(self, index: int, x: Value, values: list[Value]) -> list[Value]:
        return [x if i < 0 else values[i] for i in self.model.layers[index].inputs]

    def run(self, x: np.ndarray, stop: int | None = None, memo=None, *,
            cancel: CancelHook = None) -> tuple[list[Value], list[LayerRecord]]:
        """All layers 0..stop; returns their values and records (`memo`: see run_layer). `cancel`
        (engine.quant.progress) is asked between layers: a Cancel waits for one layer, not a whole run.

        Raises:
            ArgumentError: `cancel` is neither None, an event nor callable (before any layer).
            Cancelled: `cancel` answered True before the last layer started (nothing is changed)."""
        asked = stop_hook(cancel)
        xv = Value(f=self.checked_input(x, memo))
        values: list[Value] = []
        records: list[LayerRecord] = []
        last = len(self.model.layers) - 1 if stop is None else stop
        for i in range(last + 1):
            if i and asked():
                raise Cancelled(f"cancelled between layers ({i} of {last + 1} run)")
            v, r = self.run_layer(i, self.inputs_of(i, xv, values), memo=memo)
            values.append(v)
            records.append(r)
        return values, records

    def forward(self, x: np.ndarray, *, cancel: CancelHook = None) -> list[np.ndarray]:
        """Float views of every layer output (what detection decoding and fitness read).

        x: (3, H, W), or a batch (N, 3, H, W): then every output is (N, C, H, W), image k equal to
        a forward of image k alone bit for bit (whole images on the kernel threads, one per thread with
        its kernels single-threaded, as Model.forward runs a FLOAT batch). `cancel`: as `run`'s, asked
        between the layers of each image (Raises: as `run`)."""
        xb = np.asarray(x)
        if xb.ndim != 4:
            return [v.float() for v in self.run(x, cancel=cancel)[0]]
        self.model.check_input(xb, batch=True)
        from engine.kernels.threads import parallel_map
        per = parallel_map(xb.shape[0], lambda k: self.forward(xb[k], cancel=cancel))
        return [np.stack(outs) for outs in zip(*per)]
