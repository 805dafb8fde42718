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
from engine.errors import EditError, EngineError, WeightsError
from engine.kernels.scratch import derived
from engine.quant.layerquant import LayerQuant
from engine.quant.weights import (QuantWeights, fused_params, nearest_codes, quantize_bias, quantize_weights,
                                  zero_sum_codes)

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


def shared_int8_weights(model, layer, scheme: str, per_channel: bool, qmax: int,
                        rounding: str = "nearest") -> tuple[np.ndarray, QuantWeights]:
    """(BN-folded float biases, int8 weights) of a conv / connected layer, shared while a quantized
    model still holds them: quantizing again from the same parameter arrays (edits replace arrays)
    with the same weight choice returns the same int8 array. So the methods of a comparison share
    their weights, and with them the int8 kernels' kept forms (engine/quant/intcache.py); only a weak
    reference is kept here, so the int8 weights die with the last quantized model using them."""
    params = model.params[layer.index]
    arrays = tuple(params[k] for k in sorted(params))
    key = (layer.kind, scheme, per_channel, qmax, rounding) + tuple(id(a) for a in arrays)
    hit = _shared_weights.get(key)
    if hit is not None:
        refs, w_ref, scale, b = hit
        w_q = w_ref()
        if w_q is not None and all(r() is a for r, a in zip(refs, arrays)):
            return b, QuantWeights(w_q, scale, scheme)
    w, b = fused_params(model, layer.index)
    qw = quantize_weights(w, scheme, per_channel, **({"qmax": qmax} if qmax != 127 else {}), rounding=rounding)
    for arr in (b, qw.w_q, qw.scale):           # shared by every quantized model made from them
        if isinstance(arr, np.ndarray):
            arr.flags.writeable = False
    if len(_shared_weights) > 4096:              # entries of dead arrays: drop them now and then
        for k in [k for k, v in _shared_weights.items() if v[1]() is None]:
            del _shared_weights[k]
    _shared_weights[key] = (tuple(weakref.ref(a) for a in arrays), weakref.ref(qw.w_q), qw.scale, b)
    return b, qw


def reads_image(layer) -> bool:
    """The layer reads the network's input image (a calibrator may round its weights its own way)."""
    return any(s < 0 for s in layer.inputs)


def rounding_for(calibrator, scheme: str, layer) -> str:
    """How `layer`'s int8 weights round under `calibrator` (engine/quant/weights.ROUNDINGS); yolo2_light's scheme
    truncates by that tool's own rule, whatever the method."""
    return "nearest" if scheme == "yolo2_light" else calibrator.weight_rounding(reads_image(layer))


def weight_rounding(model, qmodel: QuantizedModel, index: int) -> str:
    """The rounding `qmodel`'s method gave layer `index`'s weights, for weights re-derived later (an edit); a
    method or setting this version does not know, or int8 weights that are the nearest codes of `model`'s: nearest."""
    try:
        calibrator = make(qmodel.method, **qmodel.settings)
    except (EngineError, TypeError, ValueError):
        return "nearest"
    rounding = rounding_for(calibrator, qmodel.layers[index].scheme, model.layers[index])
    # settings keep non-defaults only, so a log2 file saved before round 13 (conv 0 rounded to nearest) reads as
    # zero_sum: its codes tell, or an edit of one filter would re-round every other filter of the layer
    return "nearest" if rounding == "zero_sum" and _shows_nearest(model, qmodel, index) else rounding


def _shows_nearest(model, qmodel: QuantizedModel, index: int) -> bool:
    """Layer `index`'s int8 weights are the nearest codes of `model`'s float weights at their own scales, and not
    also their zero-sum codes (where the two agree, the method's rule stands)."""
    from engine.quant.profiles import get_profile
    lq, qmax = qmodel.layers[index], get_profile(qmodel.profile).weight_qmax
    n = lq.w_q.shape[0]
    v = np.asarray(fused_params(model, index)[0], np.float64).reshape(n, -1) / _filters(lq.w_scale, n)[:, None]
    held = np.asarray(lq.w_q).reshape(n, -1)
    return bool((nearest_codes(v, qmax) == held).all() and (zero_sum_codes(v, qmax) != held).any())


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
        b, qw = shared_int8_weights(model, layer, scheme, per_channel, prof.weight_qmax,
                                    rounding_for(calibrator, scheme, layer))
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
    int32 biases re-derived under the profile's bias rule, as `quantize_model` derives them (`fit_bias`: for ONNX
    Runtime's profiles a weight scale whose bias would leave int32 grows until it fits, and those filters are
    requantized from the float weights). A bias the quantized model holds of its own (an int8 edit, or a
    refinement's shift) keeps its real value; other int8 weights are kept as they are.

    Raises EditError (nothing changed) where the new scale would lose such values: a filter to requantize whose
    int8 weights are not the float weights' codes, or a bias of its own that int32 cannot hold there."""
    from engine.quant.profiles import get_profile
    prof = get_profile(profile)
    w = fused_params(model, index)[0]
    b, own = held_biases(model, index, lq)
    qw = prof.fit_bias(QuantWeights(lq.w_q, lq.w_scale, lq.scheme), b, in_scale, lambda: w)
    where = f"{model.layers[index].where()}: at input scale {in_scale:g},"
    _check_requantized_filters(where, lq, qw, w, b, in_scale, prof)
    b_q = quantize_bias(b, in_scale, qw.scale)
    _check_own_biases_fit(where, b, own, qw.scale, in_scale, prof.name)
    return LayerQuant(qw.w_q, qw.scale, b_q, in_scale, lq.scheme)


def held_biases(model, index: int, lq: LayerQuant) -> tuple[np.ndarray, np.ndarray]:
    """(real biases float64 (n,), which are the quantized model's own (bool (n,))): the float model's bias where
    `b_q` is what `quantize_bias` makes of it, else `b_q`'s own value `b_q * in_scale * w_scale` (an int8 bias
    edit, or the shift of `--refine bias` / `head` / `margin`), which re-deriving from the float bias would drop."""
    b = fused_params(model, index)[1].astype(np.float64)
    own = np.asarray(lq.b_q) != quantize_bias(b, lq.in_scale, lq.w_scale)
    return np.where(own, np.asarray(lq.b_q, np.float64) * lq.acc_scale, b), own


def _filters(w_scale, n: int) -> np.ndarray:
    """A weight scale (n,) or (1,) as one float64 per filter (n,)."""
    return np.broadcast_to(np.asarray(w_scale, np.float64).reshape(-1), (n,))


def _check_requantized_filters(where: str, lq: LayerQuant, qw: QuantWeights, w: np.ndarray, b: np.ndarray,
                               in_scale: float, prof) -> None:
    """EditError if the profile's bias rule grew the weight scale of a filter whose int8 weights are not the codes
    of its float weights (an int8 edit, a GPTQ refinement): requantizing it from the float weights drops them, and
    they cannot keep their values on the coarser grid either."""
    n = lq.w_q.shape[0]
    old, new = _filters(lq.w_scale, n), _filters(qw.scale, n)
    grown = np.flatnonzero(new != old)
    if not grown.size:
        return
    rows = np.asarray(w).reshape(n, -1)[grown]
    held = np.asarray(lq.w_q).reshape(n, -1)[grown]
    qmax = prof.weight_qmax
    v = np.divide(rows, old[grown, None], dtype=np.float64)
    same = (held == nearest_codes(v, qmax)).all(axis=1)
    if lq.scheme == "yolo2_light":              # its own rule truncates (scale = 1 / a power of two: exact)
        same |= (held == np.clip(np.trunc(rows * (1.0 / old[grown, None])), -qmax, qmax)).all(axis=1)
    else:       # log2 rounds a layer reading the image to a zero error sum per filter: the method's codes, no edit
        same |= (held == zero_sum_codes(v, qmax)).all(axis=1)
    lost = grown[~same]
    if not lost.size:
        return
    # the rule grew these scales just to where in_scale * w_scale holds the bias: an input scale of
    # in_scale * new / old needs no growth, so it keeps their int8 weights
    keep = float((in_scale * new[lost] / old[lost]).max()) * (1 + 1e-5)
    they = "their" if lost.size > 1 else "its"
    grows = "the layer's weight scale (one per tensor)" if np.asarray(lq.w_scale).size == 1 else \
        f"the weight scale of {_filter_names(grown)}"
    raise EditError(
        f"{where} an int32 bias would leave int32, so the {prof.name} profile's bias rule grows {grows} and "
        "requantizes those weights from the float ones; the int8 weights of "
        f"{_filter_names(lost)} differ from {they} float weights' codes (an int8 edit or a refinement such as gptq) "
        f"and would be lost. Undo that int8 edit (or make it on the float weights), or keep the input scale at least "
        f"{keep:.6g}")


def _filter_names(filters: np.ndarray) -> str:
    names = ", ".join(str(int(c)) for c in filters[:8]) + (f" and {filters.size - 8} more" if filters.size > 8 else "")
    return f"filter{'s' if filters.size > 1 else ''} {names}"


def _check_own_biases_fit(where: str, b: np.ndarray, own: np.ndarray, w_scale, in_scale: float, profile: str) -> None:
    """EditError if a bias the quantized model holds of its own (`held_biases`) needs more than int32 at the new
    scale: saturating it would change the edited value silently."""
    acc = in_scale * _filters(w_scale, b.size)
    over = np.flatnonzero(own & (np.abs(np.rint(b / acc)) > 2 ** 31 - 1))
    if not over.size:
        return
    keep = float((np.abs(b[over]) / ((2 ** 31 - 1) * _filters(w_scale, b.size)[over])).max()) * (1 + 1e-5)
    raise EditError(
        f"{where} the int32 bias of {_filter_names(over)}, set by an int8 edit or a refinement (real value "
        f"{float(b[over[0]]):.6g}), no longer fits in int32 and the {profile} profile would saturate it. Undo "
        f"that edit, or keep the input scale at least {keep:.6g}")


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
