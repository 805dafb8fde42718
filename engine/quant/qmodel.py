"""The quantized model ("int weight file"): int8 weights, int32 biases, scales and thresholds.

`quantize_model(model, stats, method)` derives it from calibration statistics; `save`/`load`
write one `.npz` that loads without pickle and round-trips exactly (the calibration histograms
are kept too, so thresholds of other methods can be recomputed later).
"""
from __future__ import annotations

import hashlib
import json
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from engine.calib import make
from engine.calib.collect import CalibrationStats, quantizable_ids
from engine.calib.views import activation_scales
from engine.errors import EngineError, WeightsError
from engine.kernels.scratch import derived
from engine.quant.layerquant import LayerQuant
from engine.quant.weights import QuantWeights, fused_params, quantize_bias, quantize_weights

QMODEL_FORMAT = "qwidgets-quantized-model/1"


@dataclass
class QuantizedModel:
    method: str
    settings: dict[str, Any]
    per_channel: bool
    scales: dict[str, float]                      # node id ("input", "0", ...) -> activation scale
    thresholds: dict[str, float]
    layers: dict[int, LayerQuant]
    model_name: str
    cfg_text: str
    fingerprint: str                              # sha256 of the float params it was made from
    stats: CalibrationStats | None = None
    float_layers: tuple[int, ...] = ()            # default mixed-precision override
    meta: dict[str, Any] = field(default_factory=dict)
    profile: str = "qwidgets"                     # device profile (engine/quant/profiles): the integer rules
    zero_points: dict[str, int] = field(default_factory=dict)      # asymmetric profiles: tensor id -> zp
    pre_scales: dict[str, float] = field(default_factory=dict)     # layer id -> pre-activation grid
    pre_zero_points: dict[str, int] = field(default_factory=dict)
    source: str | None = field(default=None, compare=False, repr=False)   # the file it was loaded from

    def copy(self) -> "QuantizedModel":
        """Independent containers (layers, scales) sharing the arrays; edits replace, never mutate."""
        import copy as _copy
        twin = _copy.copy(self)
        twin.layers, twin.scales, twin.thresholds = dict(self.layers), dict(self.scales), dict(self.thresholds)
        twin.zero_points, twin.pre_scales = dict(self.zero_points), dict(self.pre_scales)
        twin.pre_zero_points = dict(self.pre_zero_points)
        twin.meta = dict(self.meta)
        return twin

    def check_matches(self, model) -> None:
        """The quantized model belongs to `model`'s cfg. The input size may differ: int8 weights do not
        depend on it, and activation scales calibrated at 416 serve a 320 deployment (calibrate at the
        deployment size for the closest fit)."""
        from engine.darknet.cfg import with_input_size
        if model.cfg.text != self.cfg_text and \
                with_input_size(model.cfg.text, 1, 1) != with_input_size(self.cfg_text, 1, 1):
            raise EngineError(f"quantized model '{self.model_name}' was made for a different cfg than "
                              f"'{model.graph.name}' (layers or shapes differ)")

    def int8_bytes(self, layers: Iterable[int] | None = None) -> int:
        """Bytes of the int8 form (int8 weights, int32 biases, float32 scales) of `layers` (default: all)."""
        chosen = self.layers.keys() if layers is None else [i for i in layers if i in self.layers]
        return sum(self.layers[i].w_q.size + 4 * self.layers[i].b_q.size + 4 * self.layers[i].w_scale.size
                   for i in chosen)

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in sorted(self.settings.items()))
        granularity = "per-channel" if self.per_channel else "per-tensor"
        text = f"{self.method}({args}) {granularity}" if args else f"{self.method} {granularity}"
        return text if self.profile == "qwidgets" else f"{text} [{self.profile}]"

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path, *, exclusive: bool = False) -> Path:
        from engine.model import atomic_savez
        return atomic_savez(path, self.to_arrays(), exclusive=exclusive)

    def to_arrays(self) -> dict[str, np.ndarray]:
        from engine.npzfile import text_array
        meta = {"method": self.method, "settings": self.settings, "per_channel": self.per_channel,
                "scales": self.scales, "thresholds": self.thresholds, "model_name": self.model_name,
                "fingerprint": self.fingerprint, "float_layers": list(self.float_layers), "meta": self.meta,
                "in_scales": {str(i): lq.in_scale for i, lq in self.layers.items()},
                "schemes": {str(i): lq.scheme for i, lq in self.layers.items()},
                "profile": self.profile, "zero_points": self.zero_points, "pre_scales": self.pre_scales,
                "pre_zero_points": self.pre_zero_points}
        arrays = {"format": text_array(QMODEL_FORMAT), "meta": text_array(json.dumps(meta)), "cfg": text_array(self.cfg_text)}
        for i, lq in self.layers.items():
            arrays[f"layer{i}/w_q"] = lq.w_q
            arrays[f"layer{i}/w_scale"] = lq.w_scale
            arrays[f"layer{i}/b_q"] = lq.b_q
        if self.stats is not None:
            arrays.update(self.stats.to_arrays())
        return arrays

    @classmethod
    def load(cls, path: str | Path) -> "QuantizedModel":
        """Read a quantized model file; every member's size and shape is checked before it is read
        (engine.npzfile). Raises WeightsError naming the file."""
        from engine.filekind import sniff, words
        from engine.npzfile import NpzReader
        kind = sniff(path)                              # None: unreadable, NpzReader says why, naming the file
        if kind is not None and kind[0] != "zip":       # a .weights, cfg or photo opened as one: not "BadZipFile"
            raise WeightsError(f"{path}: cannot read quantized model: this is {words(*kind)} (a quantized model "
                               ".npz is made by `python -m engine quantize -o FILE` or QuantizedModel.save)")
        with NpzReader(path, str(path), what="quantized model", kind="quantized") as z:
            qm = cls.from_arrays(z, str(path))     # int8 weights: read when a mode that runs them uses them
        qm.source = str(path)                      # the file it came from (never written over by a record)
        return qm

    @classmethod
    def from_arrays(cls, z, label: str = "<arrays>") -> "QuantizedModel":
        """From a mapping of arrays or an engine.npzfile reader. Raises WeightsError naming `label`."""
        from engine.quant.qfile import check_layers, open_arrays, read_calibration, read_meta, read_text
        z = open_arrays(z, label)
        if read_text(z, "format", label) != QMODEL_FORMAT:
            raise WeightsError(f"{label}: not a quantized model file (expected format {QMODEL_FORMAT})")
        meta = read_meta(z, label)
        if "cfg" not in z:
            raise WeightsError(f"{label}: quantized model file lacks its cfg text")
        cfg_text = read_text(z, "cfg", label)
        if cfg_text is None:
            raise WeightsError(f"{label}: the embedded cfg is not UTF-8 text")
        check_layers(z, meta, cfg_text, label)
        layers = {int(i): LayerQuant(z.deferred(f"layer{i}/w_q"), z[f"layer{i}/w_scale"], z[f"layer{i}/b_q"],
                                     float(s), meta["schemes"][i]) for i, s in meta["in_scales"].items()}
        arrays = read_calibration(z, label)
        try:
            stats = CalibrationStats.from_arrays(arrays) if arrays else None
        except (KeyError, ValueError, TypeError, IndexError) as err:
            raise WeightsError(f"{label}: calibration histograms are damaged ({err})") from None
        return cls(meta["method"], meta["settings"], meta["per_channel"], meta["scales"], meta["thresholds"], layers,
                   meta["model_name"], cfg_text, meta["fingerprint"], stats, tuple(meta["float_layers"]),
                   meta.get("meta", {}), meta.get("profile", "qwidgets"), meta.get("zero_points", {}),
                   meta.get("pre_scales", {}), meta.get("pre_zero_points", {}))


def fingerprint(model) -> str:
    arrays = tuple(p[k] for p in model.params for k in sorted(p))
    return derived("model-fingerprint", arrays, lambda: _fingerprint(model)) if arrays else _fingerprint(model)


def _fingerprint(model) -> str:
    h = hashlib.sha256()
    for p in model.params:
        for k in sorted(p):
            h.update(k.encode())
            h.update(np.ascontiguousarray(p[k], np.float32).reshape(-1).view(np.uint8))     # its buffer: no copy
    return h.hexdigest()


_shared_weights: dict[tuple, tuple] = {}


def shared_int8_weights(model, layer, scheme: str, per_channel: bool, qmax: int) -> tuple[np.ndarray, QuantWeights]:
    """(BN-folded float biases, int8 weights) of a conv / connected layer, shared while a quantized
    model still holds them: quantizing again from the same parameter arrays (edits replace arrays)
    with the same weight choice returns the same int8 array. So the methods of a comparison share
    their weights, and with them the int8 kernels' kept forms (engine/quant/intcache.py); only a weak
    reference is kept here, so the int8 weights die with the last quantized model using them."""
    params = model.params[layer.index]
    arrays = tuple(params[k] for k in sorted(params))
    key = (layer.kind, scheme, per_channel, qmax) + tuple(id(a) for a in arrays)
    hit = _shared_weights.get(key)
    if hit is not None:
        refs, w_ref, scale, b = hit
        w_q = w_ref()
        if w_q is not None and all(r() is a for r, a in zip(refs, arrays)):
            return b, QuantWeights(w_q, scale, scheme)
    w, b = fused_params(model, layer.index)
    qw = quantize_weights(w, scheme, per_channel, **({"qmax": qmax} if qmax != 127 else {}))
    for arr in (b, qw.w_q, qw.scale):           # shared by every quantized model made from them
        if isinstance(arr, np.ndarray):
            arr.flags.writeable = False
    if len(_shared_weights) > 4096:              # entries of dead arrays: drop them now and then
        for k in [k for k, v in _shared_weights.items() if v[1]() is None]:
            del _shared_weights[k]
    _shared_weights[key] = (tuple(weakref.ref(a) for a in arrays), weakref.ref(qw.w_q), qw.scale, b)
    return b, qw


def input_id(layer) -> str:
    src = layer.inputs[0]
    return "input" if src < 0 else str(src)


def quantize_model(model, stats: CalibrationStats, method: str = "minmax", per_channel: bool = False,
                   float_layers: Iterable[int] = (), rules: Iterable[str] | None = None, profile: str = "qwidgets",
                   **settings: Any) -> QuantizedModel:
    """Activation scales from `stats` with `method`, int8 weights / int32 biases for every conv and
    connected layer, for the device `profile` (engine/quant/profiles: symmetric int8 or uint8 with zero
    points, weight scheme). `rules`: the calibration rules of engine/calib/views.py (default: the
    method's; () calibrates every tensor on its own |x| histogram); with asymmetric activations the rules'
    threshold clips each tensor's own signed range. `auto` goes through engine.quant.autoquant. Raises EngineError if the statistics do
    not cover the model's tensors or the profile is unknown."""
    from engine.quant.profiles import get_profile
    from engine.quant.profiles.base import Profile
    prof = get_profile(profile)
    try:
        calibrator = make(method, **settings)
    except EngineError:
        raise                               # already names the method and what was expected
    except (TypeError, ValueError) as err:
        raise EngineError(f"method {method!r}: {err}") from None
    missing = [nid for nid in quantizable_ids(model) if nid not in stats.hists]
    if missing:
        raise EngineError(f"calibration statistics lack tensors {', '.join(missing[:5])}: were they collected "
                          f"for this model ({model.graph.name})?")
    meta: dict[str, Any] = {} if rules is None else {"rules": list(rules)}
    for layer in model.layers:      # INT runs an upsample on its input's grid times the factor
        if layer.kind == "upsample" and not layer.scale > 0 and prof.has_int_path("upsample"):
            raise EngineError(f"{layer.where()} scale={layer.scale:g}: int8 runs an upsample on its input's scale "
                              f"times this factor, so it must be > 0 to be quantized (FLOAT runs it as it is)")
    if getattr(calibrator, "needs_images", False):
        raise EngineError(f"method {method!r} runs the model to choose: use engine.quant.autoquant.quantize(model, "
                          f"stats, {method!r}, images=...)")
    if type(prof).activation_params is Profile.activation_params:      # symmetric: the calibration rules
        try:
            scales, thresholds, _ = activation_scales(model, stats, calibrator, rules)
        except ValueError as err:
            raise EngineError(f"quantize_model: {err}") from None
        zero_points: dict[str, int] = {}
    else:       # asymmetric: the rules' threshold clips each tensor's own signed range (rules=(): as before)
        base = CalibrationStats({k: h for k, h in stats.hists.items() if k in set(quantizable_ids(model))},
                                stats.images)          # not the positive-side histograms ("<id>+")
        try:
            _, thresholds, _ = activation_scales(model, stats, calibrator, rules, symmetric=False)
        except ValueError as err:
            raise EngineError(f"quantize_model: {err}") from None
        scales, zero_points = prof.activation_params(base, calibrator, thresholds)
    prof.tie_grids(model, scales, zero_points)
    pre_scales, pre_zero_points = prof.extra_params(model, stats, calibrator, thresholds)
    scheme, per_channel = prof.weight_choice(calibrator, per_channel)
    from engine.kernels.threads import own_threads, parallel_items
    weighted = [layer for layer in model.layers if layer.int8_weights]
    done: dict[int, LayerQuant] = {}

    def one(_part: int, k: int) -> None:        # one layer per work item: the same arrays on any thread
        layer = weighted[k]
        b, qw = shared_int8_weights(model, layer, scheme, per_channel, prof.weight_qmax)
        in_scale = scales[input_id(layer)]
        qw = prof.fit_bias(qw, b, in_scale, lambda: fused_params(model, layer.index)[0])
        done[layer.index] = LayerQuant(qw.w_q, qw.scale, quantize_bias(b, in_scale, qw.scale), in_scale, qw.scheme)

    with own_threads():
        parallel_items(len(weighted), one)
    layers = {layer.index: done[layer.index] for layer in weighted}
    return QuantizedModel(method, calibrator.settings, per_channel, scales,
                          thresholds, layers, model.graph.name, model.cfg.text, fingerprint(model), stats,
                          tuple(sorted(int(i) for i in float_layers)), profile=prof.name, zero_points=zero_points,
                          pre_scales=pre_scales, pre_zero_points=pre_zero_points, meta=meta)


def at_input_scale(model, index: int, lq: LayerQuant, in_scale: float, profile: str) -> LayerQuant:
    """Layer `index`'s LayerQuant for an input at `in_scale` (an activation scale changed after quantizing):
    int32 biases re-derived from the float ones under the profile's bias rule, as `quantize_model` derives
    them (`fit_bias`: for ONNX Runtime's profiles a weight scale whose bias would leave int32 grows until it
    fits, and those filters are requantized from the float weights). Other int8 weights are kept as they are."""
    from engine.quant.profiles import get_profile
    w, b = fused_params(model, index)
    qw = get_profile(profile).fit_bias(QuantWeights(lq.w_q, lq.w_scale, lq.scheme), b, in_scale, lambda: w)
    return LayerQuant(qw.w_q, qw.scale, quantize_bias(b, in_scale, qw.scale), in_scale, lq.scheme)


def rescaled(model, qmodel: QuantizedModel, scales: dict[str, float]) -> QuantizedModel:
    """A copy of `qmodel` with some activation scales replaced; the layers whose input scale changed get
    their int32 biases (and, where the profile's bias rule says so, weight scales) re-derived
    (`at_input_scale`); other int8 weights are unchanged."""
    twin = qmodel.copy()
    twin.scales.update(scales)
    for i, lq in qmodel.layers.items():
        s_in = twin.scales[input_id(model.layers[i])]
        if s_in != lq.in_scale:
            twin.layers[i] = at_input_scale(model, i, lq, s_in, qmodel.profile)
    return twin
