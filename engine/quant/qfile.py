"""Validation of a quantized model file's arrays before anything uses them.

A quantized model file comes from disk, a workspace upload or a run record: it may be truncated,
hand-edited or made for another cfg. Every field is checked against its type and against the cfg
text the file carries (layer kinds and weight shapes), so a bad file is refused with one
WeightsError naming the file and the field, instead of a KeyError / AttributeError deep inside a
forward pass, or NaN scales that quietly turn every output into garbage.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from engine.errors import EngineError, WeightsError

# A real-valued step of int8 outside this range is never a calibration result (the calibrators
# floor thresholds at 1e-12, i.e. scales >= 7.9e-15): 1e-45 is a float32 denormal, 1e-300 turns
# every activation into a saturated 127 and the product of two scales into 0, 1e30 turns every
# tensor into zeros. Edits (`set_scale`) and files are held to the same range.
SCALE_MIN, SCALE_MAX = 1e-18, 1e18
_TEXT_LIMIT = 64 << 20          # meta / cfg text members
_CALIB_LIMIT = 64 << 20         # one calibration histogram array

META_TYPES: dict[str, type | tuple[type, ...]] = {
    "method": str, "settings": dict, "per_channel": bool, "scales": dict, "thresholds": dict,
    "model_name": str, "fingerprint": str, "float_layers": list, "in_scales": dict, "schemes": dict}


def plausible_scale(value: Any) -> bool:
    """A number in [SCALE_MIN, SCALE_MAX] (finite, positive, neither denormal nor astronomical)."""
    return (isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
            and math.isfinite(value) and SCALE_MIN <= value <= SCALE_MAX)


def _positive(value: Any, zero_ok: bool = False) -> bool:
    if zero_ok:  # thresholds: an all-zero tensor calibrates to threshold 0
        return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and (value == 0 or SCALE_MIN <= value <= 127 * SCALE_MAX))
    return plausible_scale(value)


def open_arrays(z, label: str):
    """`z` (an engine.npzfile reader, or a mapping of arrays) as a reader for the checks below."""
    from engine.npzfile import as_reader
    return as_reader(z, label, what="quantized model")


def read_text(z, key: str, label: str) -> str | None:
    """Text member `key`, or None if it is missing or not a UTF-8 vector."""
    if key not in z:
        return None
    try:
        return z.text(key, _TEXT_LIMIT)
    except WeightsError:
        return None


def read_meta(z, label: str) -> dict:
    """The meta JSON object with every required key of the right type. Raises WeightsError."""
    z = open_arrays(z, label)
    text = read_text(z, "meta", label)
    try:
        meta = json.loads(text) if text is not None else None
    except (ValueError, RecursionError) as err:   # RecursionError: '[[[[...' nested 100,000 deep
        raise WeightsError(f"{label}: quantized model meta is missing or not JSON ({err})") from None
    if text is None:
        raise WeightsError(f"{label}: quantized model meta is missing or not JSON (no UTF-8 'meta' member)")
    if not isinstance(meta, dict):
        raise WeightsError(f"{label}: quantized model meta must be a JSON object, got {type(meta).__name__}")
    # from here on, 'meta' is a dict; every key is checked before use
    for key, kind in META_TYPES.items():
        if key not in meta:
            raise WeightsError(f"{label}: quantized model meta lacks '{key}'")
        if not isinstance(meta[key], kind):
            raise WeightsError(f"{label}: quantized model meta '{key}' must be {getattr(kind, '__name__', kind)}, "
                               f"got {type(meta[key]).__name__}")
    for key in ("scales", "thresholds", "in_scales"):
        zero_ok = key == "thresholds"          # an all-zero tensor calibrates to threshold 0
        bad = [k for k, v in meta[key].items() if not _positive(v, zero_ok)]
        if bad:
            raise WeightsError(f"{label}: {key} of {', '.join(bad[:5])} must be finite and "
                               f"{'>= 0' if zero_ok else '> 0'} (a plausible scale is in "
                               f"[{SCALE_MIN:g}, {SCALE_MAX:g}]), got {meta[key][bad[0]]!r}")
    if not isinstance(meta.get("meta", {}), dict):
        raise WeightsError(f"{label}: quantized model meta 'meta' must be a JSON object")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in meta["float_layers"]):
        raise WeightsError(f"{label}: float_layers must be layer indices, got {meta['float_layers']!r}")
    _check_profile(meta, label)
    return meta


def _check_profile(meta: dict, label: str) -> None:
    """The optional device-profile fields (absent in files written before profiles: 'qwidgets')."""
    from engine.quant.profiles import PROFILES
    profile = meta.get("profile", "qwidgets")
    if not isinstance(profile, str) or profile not in PROFILES:
        raise WeightsError(f"{label}: quantized model meta 'profile' is {profile!r}; known profiles: "
                           f"{', '.join(PROFILES.names())}")
    lo, hi = (0, 255) if PROFILES.get(profile).asymmetric else (0, 0)
    for key in ("zero_points", "pre_zero_points"):
        zps = meta.get(key, {})
        if not isinstance(zps, dict):
            raise WeightsError(f"{label}: quantized model meta '{key}' must be dict, got {type(zps).__name__}")
        bad = [k for k, v in zps.items() if not (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi)]
        if bad:
            raise WeightsError(f"{label}: {key} of {', '.join(bad[:5])} must be integers in [{lo}, {hi}] for "
                               f"profile '{profile}', got {zps[bad[0]]!r}")
    pre = meta.get("pre_scales", {})
    if not isinstance(pre, dict) or not all(_positive(v) for v in pre.values()):
        raise WeightsError(f"{label}: quantized model meta 'pre_scales' must map layers to finite scales > 0")


def check_layers(z, meta: dict, cfg_text: str, label: str) -> None:
    """int8 weights / int32 biases / scales of every quantized layer against the file's own cfg.

    Shapes and dtypes are compared from the .npy headers before any array is read."""
    z = open_arrays(z, label)
    from engine.darknet.cfg import parse_cfg
    from engine.darknet.build import build_layers
    try:
        layers = build_layers(parse_cfg(cfg_text, f"{label} (embedded cfg)"))
    except EngineError as err:
        raise WeightsError(f"{label}: the embedded cfg does not build: {err}") from None
    bad_float = [i for i in meta["float_layers"] if not 0 <= i < len(layers)]
    if bad_float:
        raise WeightsError(f"{label}: float_layers {bad_float[:5]} are not layers of the cfg (0..{len(layers) - 1})")
    expected_ids = {"input"} | {str(layer.index) for layer in layers}
    for key in ("scales", "zero_points", "pre_scales", "pre_zero_points"):
        unknown = sorted(set(meta.get(key, {})) - expected_ids, key=str)
        if unknown:
            raise WeightsError(f"{label}: {key} name tensors the cfg does not have: {', '.join(unknown[:5])}")
    from engine.quant.profiles import PROFILES
    if PROFILES.get(meta.get("profile", "qwidgets")).pre_activation_grid:
        need = [str(layer.index) for layer in layers if layer.kind == "convolutional" and layer.activation == "leaky"
                and str(layer.index) in meta["scales"]]
        lacking = [i for i in need if i not in meta.get("pre_scales", {}) or i not in meta.get("pre_zero_points", {})]
        if lacking:
            raise WeightsError(f"{label}: profile '{meta['profile']}' needs the pre-activation grid (pre_scales, "
                               f"pre_zero_points) of leaky conv layers {', '.join(lacking[:5])}")
    _check_complete(meta, layers, label)
    for key, scheme in meta["schemes"].items():
        if key not in meta["in_scales"] or not isinstance(scheme, str):
            raise WeightsError(f"{label}: schemes/in_scales disagree at layer {key!r}")
    for key in meta["in_scales"]:
        if not key.isdigit() or int(key) >= len(layers):
            raise WeightsError(f"{label}: quantized layer {key!r} is not a layer of the cfg (0..{len(layers) - 1})")
        layer = layers[int(key)]
        where = f"{label}: layer {key} [{layer.kind}]"
        if not layer.int8_weights:
            raise WeightsError(f"{where} has no weights to quantize")
        for name in ("w_q", "w_scale", "b_q"):
            if f"layer{key}/{name}" not in z:
                raise WeightsError(f"{where}: array {name} is missing")
        shape = tuple(dict(layer.param_shapes())["weights"])
        n = shape[0]
        k_w, k_s, k_b = (f"layer{key}/{name}" for name in ("w_q", "w_scale", "b_q"))
        if z.dtype(k_w) != np.int8 or z.shape(k_w) != shape:
            raise WeightsError(f"{where}: w_q must be int8 of shape {shape}, got {z.dtype(k_w)} {z.shape(k_w)}")
        if z.dtype(k_b) != np.int32 or z.shape(k_b) != (n,):
            raise WeightsError(f"{where}: b_q must be int32 of shape ({n},), got {z.dtype(k_b)} {z.shape(k_b)}")
        if z.dtype(k_s).kind != "f" or len(z.shape(k_s)) != 1 or z.shape(k_s)[0] not in (1, n):
            raise WeightsError(f"{where}: w_scale must be 1 or {n} floats, got {z.dtype(k_s)} {z.shape(k_s)}")
        w_q, w_scale = np.asarray(z[k_w]), np.asarray(z[k_s], np.float64)
        if w_q.size and int(w_q.min()) < -127:
            raise WeightsError(f"{where}: w_q holds -128; symmetric int8 weights are in [-127, 127]")
        if not (np.isfinite(w_scale).all() and (w_scale > 0).all()):
            raise WeightsError(f"{where}: w_scale must be finite and > 0")
        if not ((w_scale >= SCALE_MIN) & (w_scale <= SCALE_MAX)).all():
            raise WeightsError(f"{where}: w_scale must be finite and > 0 and plausible, in "
                               f"[{SCALE_MIN:g}, {SCALE_MAX:g}]; got {w_scale.min():g}..{w_scale.max():g}")


def _check_complete(meta: dict, layers, label: str) -> None:
    """Every tensor an INT run quantizes has its scale, and every layer with weights its int8 weights.

    `quantize_model` always writes both in full (float_layers included: a view may switch a layer back
    to int8); a file lacking one would run into a KeyError on the input's scale, an AttributeError on the
    missing layer, or worse, a silent scale of 1.0 (profiles take `scales.get(id, 1.0)`)."""
    need = ["input"] + [str(layer.index) for layer in layers if not layer.float_only]
    lacking = [nid for nid in need if nid not in meta["scales"]]
    if lacking:
        raise WeightsError(f"{label}: scales lack tensor{'s' * (len(lacking) > 1)} {', '.join(lacking[:5])}"
                           f"{' ...' if len(lacking) > 5 else ''}; a quantized model holds the activation scale of "
                           f"the input and of every layer but the heads ({len(need)} tensors for its cfg)")
    unquantized = [layer for layer in layers if layer.int8_weights and str(layer.index) not in meta["in_scales"]]
    if unquantized:
        names = ", ".join(f"{layer.index} [{layer.kind}]" for layer in unquantized[:5])
        raise WeightsError(f"{label}: in_scales lack layer{'s' * (len(unquantized) > 1)} {names}"
                           f"{' ...' if len(unquantized) > 5 else ''}; a quantized model holds the int8 weights "
                           "(in_scales, schemes, layer<i>/w_q, w_scale, b_q) of every layer with weights")


def read_calibration(z, label: str) -> dict[str, np.ndarray]:
    """The calibration histogram arrays ('calib/...'), each capped before reading."""
    z = open_arrays(z, label)
    return {k: z.read(k, _CALIB_LIMIT) for k in z.keys() if k.startswith("calib/")}
